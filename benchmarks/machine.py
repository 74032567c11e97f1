"""The machine a benchmark ran on: CPU model and the instruction-set flags that matter.

Speeds differ several-fold between the CPUs this project runs on (AVX2-only
AMD EPYC, AVX-512 / AMX Intel Xeon), so every benchmark records them beside
its figures, and claims are ratios measured within one run.
"""

from __future__ import annotations

import os
import platform

# Flags that change which oneDNN kernels TensorFlow picks.
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                     "amx_tile", "amx_int8")


def cpu_info() -> dict:
    """`{"model": ..., "flags": [...]}` from /proc/cpuinfo (empty where it is missing)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FLAGS_OF_INTEREST if f in flags]}


def describe() -> dict:
    """CPU, core count, platform and framework versions, for a benchmark's report."""
    import keras
    import tensorflow as tf

    return {"cpu": cpu_info(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "devices": [d.name for d in tf.config.list_logical_devices()]}


def summary_line(described: dict) -> str:
    cpu = described["cpu"]
    return (f"{cpu['model']} ({described['cpus']} cores; flags: "
            f"{', '.join(cpu['flags']) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)}), "
            f"TensorFlow {described['tensorflow']}, Keras {described['keras']}")
