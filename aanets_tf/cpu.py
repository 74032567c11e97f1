"""The CPU this process runs on: its model and the instruction-set features that
change which oneDNN kernels TensorFlow runs (and so which precision is fastest)."""

from __future__ import annotations

import os
import platform
from typing import MutableMapping

# TensorFlow's switch for its BFC allocator on the CPU. By default TensorFlow allocates
# CPU tensors with malloc, so a step's large activations go back to the kernel when freed
# and the next step faults them in again, zeroed: on a 2-core EPYC 42% of a training step's
# CPU time was system time, about 3,400 page faults per image. The BFC allocator keeps
# freed blocks for the next step (system time 5%; steps 1.4-1.7x faster:
# docs/performance.md, "Levers measured").
BFC_ALLOCATOR_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"
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


def prefer_bfc_allocator(environ: MutableMapping[str, str] | None = None) -> str:
    """Ask TensorFlow for its BFC allocator on the CPU unless the environment already
    says (`TF_CPU_ALLOCATOR_USE_BFC=false` keeps malloc). Takes effect if TensorFlow has
    not yet allocated a tensor; returns the value in force."""
    environ = os.environ if environ is None else environ
    return environ.setdefault(BFC_ALLOCATOR_VARIABLE, "true")
