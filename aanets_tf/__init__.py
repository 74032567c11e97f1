"""AANets (Adaptive Aggregation Networks) for class-incremental learning, in Keras 3."""

from aanets_tf import cpu as _cpu

# Before TensorFlow allocates its first tensor: TensorFlow's BFC allocator on the CPU
# (see `cpu.BFC_ALLOCATOR_VARIABLE`), unless the environment chose otherwise.
_cpu.prefer_bfc_allocator()
# Before TensorFlow is imported: its oneDNN kernels on every x86 CPU (see
# `cpu.ONEDNN_VARIABLE`), unless the environment chose otherwise.
_cpu.prefer_onednn()
