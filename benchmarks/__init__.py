"""The project's benchmarks: accuracy, speed, memory and serving, one module per question.

Each runs from the repository's root as `python -m benchmarks.NAME` (which makes
`aanets_tf` and `tools` importable); what they share is in `benchmarks.harness`,
the PyTorch reference in `benchmarks.pytorch`. Importing the package keeps
TensorFlow's C++ logging to warnings and errors, before any benchmark imports it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
