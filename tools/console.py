"""What the tools print before a run starts: TensorFlow started quietly, and the setting.

TensorFlow's native libraries write their start-up lines (oneDNN notices, the
CUDA driver probe and its `cuInit` error on machines without a GPU) to the
process's stderr before any log level applies: `TF_CPP_MIN_LOG_LEVEL` does not
reach them. `start_tensorflow` imports TensorFlow and probes its devices with
file descriptor 2 pointed at a temporary file, and shows that file only if the
start fails. Afterwards native log lines stay hidden (`TF_CPP_MIN_LOG_LEVEL=3`:
at level 2, tf.data's graph rewrites still print "errors" that are notices, such
as an attribute a newer kernel ignores; failures reach Python as exceptions)
and TensorFlow's Python logger reports errors only (it would warn about every
new phase network's traced `predict`). The tools pass
`verbose=True` when `--verbosity` is given, which leaves all of it on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def _stderr_into(file):
    """Point file descriptor 2 (what native code writes to) at `file`."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def verbosity_requested(argv: list[str]) -> bool:
    """Whether a command line asks for absl's verbosity (before its flags are parsed)."""
    return any(a == "-v" or a.startswith(("--verbosity", "-v=")) for a in argv[1:])


def start_tensorflow(verbose: bool = False) -> None:
    """Import TensorFlow and find its devices; quietly unless `verbose`."""
    if verbose:
        import tensorflow as tf

        tf.config.list_physical_devices()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryFile(mode="w+") as captured:
        try:
            with _stderr_into(captured):
                import tensorflow as tf

                tf.config.list_physical_devices()
        except BaseException:
            captured.seek(0)
            sys.stderr.write(captured.read())
            raise
    tf.get_logger().setLevel("ERROR")


def setting_summary(config) -> str:
    """The resolved setting in a few lines: what runs, on what, and where it goes."""
    phases = "all" if not config.num_phases else str(config.num_phases)
    memory = (f"{config.memory_budget} exemplars in all" if config.memory_budget
              else f"{config.exemplars_per_class} exemplars per class")
    # Framework-free: the summary is printed before TensorFlow starts.
    from aanets_tf.config import HOST_HEADLINES, HOST_NAMES

    name, headline = HOST_NAMES[config.host], HOST_HEADLINES[config.host]
    method = (f"{name} with AANets (stable + plastic blocks, "
              f"{config.aggregation} aggregation)" if config.branch_mode == "dual"
              else f"{name}, single branch")
    return "\n".join([
        f"data      {config.dataset}"
        + (f" from {config.data_dir}" if config.data_dir else ""),
        f"protocol  {config.num_base_classes} base classes + {config.classes_per_phase} per "
        f"phase, {phases} phases, {memory}, class order seed {config.order_seed}",
        f"model     {config.arch}, {method}; headline accuracy {headline.upper()}",
        f"training  {config.epochs} epochs per phase, batch {config.batch_size}, "
        f"learning rate {config.learning_rate:g}, {config.mixed_precision}",
        f"workdir   {os.path.abspath(config.workdir)}",
    ])
