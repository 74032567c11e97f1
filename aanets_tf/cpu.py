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
# TensorFlow's switch for its oneDNN kernels, read once when TensorFlow is imported. By
# default TensorFlow turns them on only on x86 CPUs with AVX-512 VNNI, bfloat16 or AMX;
# elsewhere (an AVX2-only CPU) it runs Eigen's convolutions, whose filter gradient took half
# of a phase-0 step: on a 2-core AVX2 EPYC oneDNN's kernels made phase 0 1.89x and Level 1
# 1.79x faster (docs/performance.md, "Levers measured"). With them TensorFlow allocates
# CPU tensors through oneDNN's allocator (BFC for large blocks) whatever
# `BFC_ALLOCATOR_VARIABLE` says.
ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
# Machines (`platform.machine()`) whose TensorFlow builds carry x86 oneDNN kernels.
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
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


def prefer_onednn(environ: MutableMapping[str, str] | None = None,
                  machine: str | None = None) -> str | None:
    """Ask TensorFlow for its oneDNN kernels on every x86 CPU unless the environment
    already says (`TF_ENABLE_ONEDNN_OPTS=0` keeps Eigen's). Takes effect if TensorFlow is
    not yet imported; returns the value in force (None off x86, where it is left alone)."""
    environ = os.environ if environ is None else environ
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in X86_MACHINES:
        return environ.get(ONEDNN_VARIABLE)
    return environ.setdefault(ONEDNN_VARIABLE, "1")


def tensorflow_kernels() -> dict:
    """Which CPU kernels and allocator the TensorFlow of this process runs: `onednn`
    (True, False, or None where TensorFlow does not say) and the two variables as set
    (None where unset). Imports TensorFlow."""
    import tensorflow  # noqa: F401 - its oneDNN decision is made at import

    try:
        # Private: no public API says whether oneDNN's kernels are on (tests/layout_test.py).
        from tensorflow.python.util import _pywrap_util_port

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        onednn = None
    return {"onednn": onednn, ONEDNN_VARIABLE: os.environ.get(ONEDNN_VARIABLE),
            BFC_ALLOCATOR_VARIABLE: os.environ.get(BFC_ALLOCATOR_VARIABLE)}
