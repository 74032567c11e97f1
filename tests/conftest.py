"""Shared test setup: quiet TensorFlow, importable tools, absl flags usable under pytest."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from absl import flags  # noqa: E402

# pytest does not parse absl flags; tools read them only through FLAGS.
if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

SHARED_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")


def to_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def random_batch(n: int, input_shape: tuple, num_classes: int, seed: int = 0):
    """`n` random float32 images in [0, 255) and int32 labels cycling through the classes."""
    import numpy as np

    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, size=(n,) + tuple(input_shape)).astype("float32")
    return images, np.arange(n, dtype="int32") % num_classes


def kill_after_epoch(command: list[str], epoch_file: str, cwd: str) -> None:
    """Start `command`, SIGKILL it once it has written `epoch_file` (an epoch checkpoint)."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    deadline = time.time() + 300
    # The run's own signal: the epoch checkpoint it writes at the epoch boundary.
    while not os.path.exists(epoch_file) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-phase"
    process.send_signal(signal.SIGKILL)
    process.wait()


def bomb_png(side: int = 60_000) -> bytes:
    """A valid PNG header declaring `side` x `side` RGB pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))
