"""Results people can read and plot: metrics.json, PNG plots, a summary table."""

from __future__ import annotations

import math
import os

import numpy as np

from aanets_tf import atomic_io


def clean(value):
    """JSON-safe copy: NaN/Inf become None, numpy scalars and arrays become Python."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_metrics(path: str, metrics: dict) -> None:
    atomic_io.write_json(path, clean(metrics))


def plot_accuracy(metrics: dict, path: str) -> None:
    """Accuracy per phase (CNN and NME) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = metrics["phases"]
    seen = [p["num_seen_classes"] for p in phases]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(seen, [p["cnn_accuracy"] for p in phases], "o-", label="CNN")
    ax.plot(seen, [p["nme_accuracy"] for p in phases], "s--", label="NME")
    ax.set_xlabel("number of classes seen")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{metrics['dataset']} ({metrics['branch_mode']})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_aggregation(metrics: dict, path: str) -> None:
    """Aggregation weight of each level over the epochs of every phase, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[int, list[tuple[float, float]]] = {}
    for p in metrics["phases"]:
        trajectory = p.get("aggregation_trajectory") or []
        if not trajectory and p.get("aggregation_weights"):
            trajectory = [p["aggregation_weights"]]
        n = len(trajectory)
        for i, alphas in enumerate(trajectory):
            x = p["phase"] - 1 + (i + 1) / max(n, 1)
            for level, a in enumerate(alphas, start=1):
                series.setdefault(level, []).append((x, a))
    for level, points in sorted(series.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, ".-", label=f"level {level}")
    ax.set_xlabel("phase")
    ax.set_ylabel("aggregation weight alpha (stable share)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".tmp-" + os.path.basename(path))
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(metrics: dict) -> str:
    """A one-screen plain-text summary of a run."""
    lines = [f"dataset={metrics['dataset']}  host={metrics.get('host', 'lucir')}  "
             f"branch_mode={metrics['branch_mode']}  "
             f"aggregation={metrics.get('aggregation', '-')}",
             f"{'phase':>5} {'classes':>7} {'CNN':>7} {'NME':>7} {'old':>7} {'new':>7} "
             f"{'seconds':>8}  aggregation weights"]
    for p in metrics["phases"]:
        alphas = p.get("aggregation_weights")
        alpha_text = " ".join(f"{a:.3f}" for a in alphas) if alphas else "-"
        lines.append(f"{p['phase']:>5} {p['num_seen_classes']:>7} {_fmt(p['cnn_accuracy']):>7} "
                     f"{_fmt(p['nme_accuracy']):>7} {_fmt(p['old_accuracy']):>7} "
                     f"{_fmt(p['new_accuracy']):>7} {p['train_seconds']:>8.1f}  {alpha_text}")
    avg = metrics.get("average_incremental_accuracy") or {}
    fgt = metrics.get("forgetting") or {}
    headline = metrics.get("headline", "cnn")
    lines.append(f"average incremental accuracy: CNN {_fmt(avg.get('cnn'))}  "
                 f"NME {_fmt(avg.get('nme'))}  (headline: {headline.upper()})")
    lines.append(f"forgetting: CNN {_fmt(fgt.get('cnn'))}  NME {_fmt(fgt.get('nme'))}")
    return "\n".join(lines)


# Keys whose values are wall-clock measurements, not results.
TIMING_KEYS = ("train_seconds", "eval_seconds", "timings")


def without_timings(obj):
    """A metrics dict without its wall-clock entries, recursively (to compare runs)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj
