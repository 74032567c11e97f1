"""The throughput benchmark's summaries and tables: ratios within one run, and targets.

`summarize` turns the per-repeat samples of `benchmarks.throughput` into
medians and ratios of time per image within each repeat (load from other work
hits every step of a repeat alike); `compare_frameworks` does the same between
this project's steps and the PyTorch reference's.
"""

from __future__ import annotations

import statistics

from benchmarks.harness import markdown_table, paired_ratio

TARGETS = {  # ratio name -> (slower step, reference step, highest allowed ratio)
    "level1_aanet / phase0": ("level1_aanet", "phase0", 2.5),
    "level2_aanet / phase0": ("level2_aanet", "phase0", 1.5),
    "level1_aanet_pipeline / level1_aanet": ("level1_aanet_pipeline", "level1_aanet", 1.1),
}
INFORMATIVE = {
    "level1_single / phase0": ("level1_single", "phase0"),
    "eval_aanet / eval_plain": ("eval_aanet", "eval_plain"),
    "level1_aanet_teacher / level1_aanet": ("level1_aanet_teacher", "level1_aanet"),
}
# step -> lowest allowed ratio of images per second, ours / the authors' code (issue 27).
TORCH_TARGETS = {"phase0": 1.5, "level1_aanet": 1.5, "level2_aanet": 2.0, "eval_aanet": 2.0}
TORCH_VARIANT = "pytorch"


def summarize(samples: dict) -> dict:
    """Medians, ratios of time per image, and the targets' verdicts, per variant.

    A ratio is the median over repeats of the ratio within each repeat (the
    two steps timed moments apart, under the same machine load).
    """
    out = {}
    for variant, steps in samples.items():
        medians = {s: statistics.median(v) for s, v in steps.items()}

        def ratio(slow, reference):
            return paired_ratio(steps[reference], steps[slow])

        out[variant] = {
            "images_per_second": medians,
            "targets": {name: {"ratio": ratio(a, b), "limit": limit,
                               "pass": ratio(a, b) <= limit}
                        for name, (a, b, limit) in TARGETS.items()
                        if a in steps and b in steps},
            "ratios": {name: ratio(a, b) for name, (a, b) in INFORMATIVE.items()
                       if a in steps and b in steps},
        }
    first = next(iter(samples))
    for variant in list(out)[1:]:
        out[variant]["speedup_vs_" + first] = {
            s: paired_ratio(samples[variant][s], samples[first][s]) for s in samples[first]}
    return out


def compare_frameworks(samples: dict, reference: str = TORCH_VARIANT) -> dict:
    """Ours / PyTorch images per second, per variant of ours and step.

    Each ratio is the median over repeats of the ratio within a repeat (both
    frameworks timed moments apart); `target` is the lowest allowed ratio
    (`TORCH_TARGETS`), `short_by` how far a missed target is (target / ratio).
    `best_ratio` compares each framework's fastest repeat: on a shared machine,
    load from other work slows PyTorch's OpenMP threads far more than
    TensorFlow's thread pool, and the fastest repeats are the least disturbed.
    A target is judged on the lower of the two (`judged_ratio`).
    """
    theirs = samples[reference]
    out = {}
    for variant, steps in samples.items():
        if variant == reference:
            continue
        rows = {}
        for step in theirs:
            if step not in steps:
                continue
            ratio = paired_ratio(steps[step], theirs[step])
            row = {"ours_images_per_second": statistics.median(steps[step]),
                   "torch_images_per_second": statistics.median(theirs[step]),
                   "ratio": ratio,
                   # Each framework's fastest repeat: the least disturbed by other load.
                   "best_ratio": max(steps[step]) / max(theirs[step])}
            if step in TORCH_TARGETS:
                # Judged on the lower of the two ratios: a repeat where other load
                # stalled PyTorch's threads must not count as our speed.
                target, judged = TORCH_TARGETS[step], min(ratio, row["best_ratio"])
                row.update(target=target, judged_ratio=judged, reached=judged >= target,
                           short_by=max(target / judged, 1.0))
            rows[step] = row
        out[variant] = rows
    return out


def torch_table(comparison: dict, batch_size: int, machine_line: str, versions: dict) -> str:
    """The Markdown table of ours against the authors' code path in PyTorch."""
    lines = [f"Machine: {machine_line}; the authors' code path on PyTorch {versions['torch']} "
             f"({versions['threads']} threads).", ""]
    for variant, rows in comparison.items():
        cells = []
        for step, row in rows.items():
            verdict, target = "", "-"
            if "target" in row:
                target = f">= {row['target']}"
                verdict = ("reached" if row["reached"]
                           else f"missed (needs {row['short_by']:.2f}x more)")
            cells.append([step, f"{row['ours_images_per_second']:.1f}",
                          f"{row['torch_images_per_second']:.1f}", f"{row['ratio']:.2f}",
                          f"{row['best_ratio']:.2f}", target, verdict])
        lines += [markdown_table([f"step (batch {batch_size})", f"ours ({variant}) img/s",
                                  "authors' img/s", "ours / authors'", "best repeats' ratio",
                                  "target", ""], cells)]
    return "\n".join(lines)


def table(summary: dict, batch_size: int, memory: dict) -> str:
    """The Markdown table of the README's Performance section."""
    variants = list(summary)
    reference = {"level1_single": "phase0", "level1_aanet": "phase0",
                 "level2_aanet": "phase0", "eval_aanet": "eval_plain",
                 "level1_aanet_pipeline": "level1_aanet",
                 "level1_aanet_teacher": "level1_aanet"}
    first = summary[variants[0]]
    ratios = {**{n: t["ratio"] for n, t in first["targets"].items()}, **first["ratios"]}
    speeds = []
    for step in first["images_per_second"]:
        key = f"{step} / {reference.get(step)}"
        relative = f"{ratios[key]:.2f}x {reference[step]}" if key in ratios else "-"
        speeds.append([step, *(f"{summary[v]['images_per_second'][step]:.1f}" for v in variants),
                       relative])
    targets = [[name, f"<= {limit}", *(
        f"{summary[v]['targets'][name]['ratio']:.2f} "
        f"({'pass' if summary[v]['targets'][name]['pass'] else 'FAIL'})" for v in variants)]
        for name, (_, _, limit) in TARGETS.items() if name in first["targets"]]
    lines = [markdown_table([f"step (batch {batch_size})", *(f"{v} img/s" for v in variants),
                             "time per image vs. reference"], speeds),
             markdown_table(["target (time per image)", "limit", *variants], targets)]
    lines += [f"- {key}: {value}" for key, value in memory.items()]
    return "\n".join(lines) + "\n"
