"""The machine a benchmark ran on: CPU model and the instruction-set flags that matter.

Speeds differ several-fold between the CPUs this project runs on (AVX2-only
AMD EPYC, AVX-512 / AMX Intel Xeon), so every benchmark records them beside
its figures, and claims are ratios measured within one run.
"""

from __future__ import annotations

import os
import platform

from aanets_tf.cpu import FEATURES_OF_INTEREST as FLAGS_OF_INTEREST
from aanets_tf.cpu import cpu_info


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
