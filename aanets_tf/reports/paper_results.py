"""The paper's average incremental accuracies (SPEC section 6), and the lookup by setting."""

from __future__ import annotations

import dataclasses

from aanets_tf.reports.run_records import Method, Setting

# Where the figures come from, printed under every table.
PAPER_SOURCE = ("Liu, Schiele and Sun, Adaptive Aggregation Networks for Class-Incremental "
                "Learning, CVPR 2021 (arXiv 2010.05063), average incremental accuracy as "
                "quoted in SPEC.md section 6; the 'LUCIR w/ AANets' row was not checked "
                "against the paper's PDF, the others against a later paper that copies the table")


@dataclasses.dataclass(frozen=True)
class PaperNumber:
    """One figure of the paper: average incremental accuracy (%) measured with `classifier`."""
    value: float
    classifier: str  # 'cnn' or 'nme'


# The paper's datasets: (total classes, base classes) of its protocol.
PAPER_DATASETS = {"CIFAR-100": (100, 50), "ImageNet-Subset": (100, 50), "ImageNet": (1000, 500)}
# The paper's memory (20 exemplars per class) and the authors' released CIFAR-100
# commands (2,000 in all); both stand for the published figures.
PAPER_MEMORIES = ("20 per class", "2000 in all")
_N = (5, 10, 25)


def _row(values: tuple[float, float, float], classifier: str = "cnn") -> dict[int, PaperNumber]:
    return {n: PaperNumber(v, classifier) for n, v in zip(_N, values)}


# (dataset, host, with AANets) -> {N: figure}. iCaRL's figures are of its own
# classifier, the nearest mean of exemplars; LUCIR's and PODNet's of the CNN.
PAPER_NUMBERS: dict[tuple[str, str, bool], dict[int, PaperNumber]] = {
    ("CIFAR-100", "icarl", False): _row((57.12, 52.66, 48.22), "nme"),
    ("CIFAR-100", "lucir", False): _row((63.17, 60.14, 57.54)),
    ("CIFAR-100", "lucir", True): _row((66.74, 65.29, 63.50)),
    ("CIFAR-100", "podnet", False): _row((64.83, 63.19, 60.72)),
    ("CIFAR-100", "podnet", True): _row((66.31, 64.31, 62.31)),
    ("ImageNet-Subset", "icarl", False): _row((65.44, 59.88, 52.97), "nme"),
    ("ImageNet-Subset", "lucir", False): _row((70.84, 68.32, 61.44)),
    ("ImageNet-Subset", "lucir", True): _row((72.55, 69.22, 67.60)),
    ("ImageNet-Subset", "podnet", False): _row((75.54, 74.33, 68.31)),
    ("ImageNet-Subset", "podnet", True): _row((76.96, 75.58, 71.78)),
    ("ImageNet", "icarl", False): _row((51.50, 46.89, 43.14), "nme"),
    ("ImageNet", "lucir", False): _row((64.45, 61.57, 56.56)),
    ("ImageNet", "lucir", True): _row((64.94, 62.39, 60.68)),
    ("ImageNet", "podnet", False): _row((66.95, 64.13, 59.17)),
    ("ImageNet", "podnet", True): _row((67.73, 64.85, 61.78)),
}


def paper_number(setting: Setting, method: Method) -> PaperNumber | None:
    """The paper's figure for this setting and method, or None where it has none.

    A figure matches the paper's dataset with its class count and base classes,
    N = 5, 10 or 25, either of the paper's memory rules, and the method as the
    paper ran it (learned aggregation, scaled stable block).
    """
    if PAPER_DATASETS.get(setting.dataset) != (setting.num_classes, setting.num_base_classes):
        return None
    if setting.memory not in PAPER_MEMORIES or not method.is_paper_method:
        return None
    return PAPER_NUMBERS.get((setting.dataset, method.host, method.aanets), {}).get(
        setting.num_phases)
