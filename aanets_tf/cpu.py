"""The CPU this process runs on: its model and the instruction-set features that
change which oneDNN kernels TensorFlow runs (and so which precision is fastest)."""

from __future__ import annotations

import platform

# Features with which oneDNN runs bfloat16 convolutions natively.
NATIVE_BFLOAT16_FEATURES = ("avx512_bf16", "amx_bf16")
# Features a benchmark reports: the ones that change which oneDNN kernels run.
FEATURES_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                        "amx_bf16", "amx_tile", "amx_int8")


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """`{"model": ..., "flags": [...]}`: the CPU model and which of
    `FEATURES_OF_INTEREST` it has (none where `cpuinfo_path` cannot be read)."""
    model, found = platform.processor() or "unknown", set()
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    found = set(value.split())
    except OSError:
        pass
    return {"model": model, "flags": [f for f in FEATURES_OF_INTEREST if f in found]}
