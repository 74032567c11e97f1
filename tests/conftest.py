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
