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
