r"""Do two runs' metrics.json agree, timings aside? The check behind "figures unchanged".

    python -m benchmarks.same_metrics runs/before/metrics.json runs/after/metrics.json

Run the same flagfile with --deterministic from two commits (e.g. a `git
worktree` of each), then compare: exit 0 when every value agrees exactly once
timings are removed, loss names written before they were spelled out
(`lf`, `mr`) are read under their current names and the host's keys of a
LUCIR run (`host`, `headline`, written since hosts can be chosen) are set
aside; exit 1 with the differing fields otherwise.
"""

from __future__ import annotations

import json

from absl import app


def comparable(path: str) -> dict:
    from aanets_tf.protocol.checkpointing import current_loss_names
    from aanets_tf.reports.reporting import without_timings

    with open(path) as f:
        metrics = json.load(f)
    for phase in metrics.get("phases", []):
        phase["final_losses"] = current_loss_names(phase.get("final_losses") or {})
    if (metrics.get("host", "lucir"), metrics.get("headline", "cnn")) == ("lucir", "cnn"):
        metrics.pop("host", None)
        metrics.pop("headline", None)
    return without_timings(metrics)


def differences(a: dict, b: dict, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise app.UsageError(f"Name two metrics.json files. Received: {argv[1:]}")
    from tools import console

    console.start_tensorflow()  # quietly, once: `comparable` reads through the library
    found = differences(comparable(argv[1]), comparable(argv[2]))
    for line in found[:50]:
        print(line)
    print("identical, timings aside" if not found else f"{len(found)} values differ")
    return 1 if found else 0


if __name__ == "__main__":
    app.run(main)
