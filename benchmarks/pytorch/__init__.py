"""The PyTorch reference of the benchmarks: the authors' code path in PyTorch (README.md).

torch is an optional benchmark requirement (`REQUIREMENTS`), never needed by the
library or the tests: `reference` imports it; this package and `protocol` import
it only where they run it. (The folder is not named `torch`: a script of
`benchmarks/` run by its path would then import it in place of PyTorch.)
"""

from __future__ import annotations

import os

from absl import app, flags

REQUIREMENTS = os.path.join("benchmarks", "pytorch", "requirements.txt")
# The flags this module defines belong to the benchmark that asks for them (its --helpshort).
flags.disclaim_key_flags()


def define_torch_threads() -> None:
    """`--torch_threads`: PyTorch's intra-op threads."""
    flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads of the PyTorch runs "
                                             "(0: the machine's cores).", lower_bound=0)


def require_torch(needed_by: str) -> None:
    """Fail with the install command when PyTorch is missing.

    Raises:
        app.UsageError: naming `needed_by` (what needs PyTorch) and `REQUIREMENTS`.
    """
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise app.UsageError(
            f"{needed_by} needs PyTorch, which is not installed ({error}). Install the "
            f"benchmark's pinned CPU build: pip install -r {REQUIREMENTS}") from error
