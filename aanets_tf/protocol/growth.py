"""Growing a finished run with new classes from image folders, and serving the result.

    python tools/train.py --workdir=W --add_classes_from=DIR [--classes=a,b] [--promote]

A grow call adds one phase to a run of `dataset=folder`: every class folder
in `DIR` the run has not learned (or those named), trained at Level 1 and
Level 2 against the last phase's network with the exemplars the workdir
keeps (the old classes' images need not exist any more), evaluated on every
test image still found for old classes plus the new classes' ones, and
exported as the next SavedModel version. `models.config` beside the exports
then serves the new version as `canary` and the previous one as `stable`
(`promote`: the new one alone, as `stable`).

`growth.json` in the workdir lists every grow (phase, folder, classes). It is
written before the phase trains, so a grow killed at any moment is resumed by
the same command; another grow is refused until it is finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shlex
from typing import Callable

import numpy as np
import tensorflow as tf

from aanets_tf import atomic_io
from aanets_tf.config import TrainConfig, stored_defaults
from aanets_tf.data import datasets, folders
from aanets_tf.data.class_order import PhasePlan
from aanets_tf.data.sources import FileSource
from aanets_tf.protocol import incremental, run_state
from aanets_tf.serving import serving, serving_config
from aanets_tf.workdir import Workdir

MODELS_CONFIG = "models.config"


class GrowthError(ValueError):
    """A grow call that cannot be carried out as asked."""


def stored_config(workdir: str) -> TrainConfig:
    """The configuration a run's `config.json` holds (defaults for settings it predates)."""
    path = Workdir(workdir).config
    if not os.path.exists(path):
        raise GrowthError(f"workdir={workdir} holds no run (no config.json): train it first "
                          "with dataset=folder data_dir=<image folders>.")
    with open(path) as f:
        return TrainConfig.from_dict({**stored_defaults(), **json.load(f)})


def read_growth(workdir: str) -> list[dict]:
    path = Workdir(workdir).growth
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)["grows"]


def _metrics(workdir: str) -> dict | None:
    path = Workdir(workdir).metrics
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _test_files(root: str, names: list[str], config: TrainConfig) -> dict[str, list[str]]:
    """The test files of `names` still found under `root` (none when it is gone)."""
    if not tf.io.gfile.isdir(root):
        return {}
    try:
        _, _, test, _ = folders.read_folders(root, names=None, test_fraction=config.test_fraction,
                                             seed=config.seed, log=lambda _: None)
    except folders.FolderError:
        return {}
    return {name: files for name, files in test.items() if name in names}


def _merged_test(new: datasets.Split, old: list[tuple[list[str], np.ndarray]]
                 ) -> datasets.Split:
    """One `FileSource` split: the old classes' good test files, then the new ones'."""
    paths, labels = [], []
    for files, file_labels in old + [(list(new.source.paths[new.positions]), new.labels)]:
        paths += files
        labels += list(file_labels)
    return datasets.Split(FileSource(paths, np.asarray(labels, np.int64)),
                          np.arange(len(paths), dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class _FolderScan:
    """The class folders of a tree of new classes, read once per grow."""
    found: list[str]  # every class folder
    unlearned: list[str]  # those the run has not learned that hold images
    empty: list[str]  # those the run has not learned that hold no image


def _scan(add_from: str, known: list[str]) -> _FolderScan:
    found = folders.class_folders(folders.train_root(add_from))
    new = [c for c in found if c.name not in known]
    return _FolderScan([c.name for c in found], [c.name for c in new if c.images],
                       [c.name for c in new if not c.images])


def flag_list(names: list[str]) -> str:
    """`names` as one `--classes` value: a name holding a comma goes in double quotes."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(names)
    return out.getvalue()


def _pending_or_new(workdir: str, grows: list[dict], done: int, add_from: str,
                    classes: list[str] | None, scan: _FolderScan | None) -> tuple[dict, bool]:
    """The grow to run: the unfinished one (same request) or a new entry (`classes`, else
    every folder of `scan` the run has not learned that holds images)."""
    if grows and grows[-1]["phase"] >= done:
        last = grows[-1]
        same = last["from"] == add_from and (classes is None or classes == last["classes"])
        if not same:
            raise GrowthError(
                f"Phase {last['phase']} of {workdir} (adding {last['classes']} from "
                f"{last['from']}) is unfinished. Finish it first: python tools/train.py "
                f"workdir={workdir} add_classes_from={last['from']} "
                f"classes={shlex.quote(flag_list(last['classes']))}")
        return last, True
    if classes is None:
        classes = scan.unlearned
        if not classes:
            raise GrowthError(f"{add_from!r} has no class folder the run has not learned "
                              f"(found {scan.found}"
                              + (f"; {scan.empty} hold no image" if scan.empty else "") + ").")
    return {"phase": done, "from": add_from, "classes": list(classes)}, False


def grow(workdir: str, add_from: str, *, classes: list[str] | None = None,
         promote: bool = False, overrides: dict | None = None,
         log: Callable[[str], None] = print, verbose: int | str = "auto") -> dict:
    """Add one phase of new classes from `add_from` to the run in `workdir`.

    Args:
        workdir: a run of `dataset=folder`.
        add_from: a folder tree of new classes (`DIR/train/<class>` with an
            optional `DIR/test/<class>`, or class folders directly in `DIR`).
        classes: the classes to add (default: every class folder the run has
            not learned).
        promote: serve the new version alone, as `stable`.
        overrides: settings given on the command line (relocatable ones, such
            as `export_dir`; any other difference is refused as for a resume).

    Returns:
        The run's metrics after the grown phase.

    Raises:
        GrowthError: not a folder run, nothing to add, another grow unfinished.
        folders.FolderError: a class already learned, an empty class folder, ...
    """
    config = stored_config(workdir)
    config = config.replace(workdir=workdir, **{k: v for k, v in (overrides or {}).items()
                                                if k != "workdir"})
    if config.dataset != incremental.FOLDER_DATASET:
        raise GrowthError(f"`add_classes_from` grows runs of dataset=folder; {workdir} holds "
                          f"a run of dataset={config.dataset}.")
    run_state.check_workdir(config, overwrite=False)  # before anything is written
    add_from = os.path.abspath(add_from)
    metrics = _metrics(workdir)
    grows = read_growth(workdir)
    if not grows:
        if metrics is None:
            raise GrowthError(f"{workdir} has no finished phase yet: train it first (rerun "
                              "python tools/train.py with its settings).")
        base = incremental.protocol_plan(config, len(metrics["label_names"]))
        if config.num_phases and config.num_phases < base.num_phases:
            raise GrowthError(f"The run stops after num_phases={config.num_phases} of "
                              f"{base.num_phases} phases: grown classes come after all of "
                              "its own.")
        if len(metrics["phases"]) < base.num_phases:
            log(f"Finishing the run's own phases first ({len(metrics['phases'])} of "
                f"{base.num_phases} done).")
            metrics = incremental.run(config, log=log, verbose=verbose)
    known = list(metrics["label_names"])
    # Without `classes`: the tree's folders the run has not learned (read once).
    scan = _scan(add_from, known) if classes is None else None
    unlearned = scan.unlearned if scan else [c for c in classes if c not in known]
    if (grows and grows[-1]["phase"] < len(metrics["phases"]) and grows[-1]["from"] == add_from
            and classes in (None, grows[-1]["classes"]) and not unlearned):
        # This grow finished; a kill may have come before models.config was written.
        log(f"{workdir} already learned {grows[-1]['classes']} from {add_from}.")
        if config.export:
            log(f"Wrote {write_models_config(config, promote)}")
        return metrics
    entry, resuming = _pending_or_new(workdir, grows, len(metrics["phases"]), add_from,
                                      classes, scan)
    data = folders.load_folder_dataset(
        add_from, label_names=known, names=entry["classes"], test_fraction=config.test_fraction,
        seed=config.seed, train_images_per_class=config.train_images_per_class,
        test_images_per_class=config.test_images_per_class,
        max_image_pixels=config.max_image_pixels, strict_images=config.strict_images, log=log)
    if not resuming:
        if scan and scan.empty:
            log(f"Skipped {len(scan.empty)} empty class folder(s) of {add_from}: {scan.empty} "
                "(no image to learn; add images and grow again to learn them).")
        grows = grows + [entry]
        atomic_io.write_json(Workdir(workdir).growth, {"grows": grows})
        log(f"Growing {workdir} by {entry['classes']} from {add_from} (phase {entry['phase']}).")

    # Old classes: every test image still found where they came from.
    label_of = {name: i for i, name in enumerate(data.label_names)}
    earlier = grows[:-1]
    roots = [(config.data_dir, known[:len(known) - sum(len(g["classes"]) for g in earlier)])]
    roots += [(g["from"], g["classes"]) for g in earlier]
    old_tests = []
    for root, names in roots:
        files = _test_files(root, names, config)
        if files:
            split, _ = folders.file_split(
                files, label_of, config.test_images_per_class, max_pixels=config.max_image_pixels,
                strict=False, num_classes=len(data.label_names))
            old_tests.append((list(split.source.paths[split.positions]),
                              split.source.labels[split.positions]))
    data = dataclasses.replace(data, test=_merged_test(data.test, old_tests))

    order = list(metrics["class_order"][:len(known)])
    order += [label_of[name] for g in grows for name in g["classes"]
              if label_of[name] not in order]
    plan = PhasePlan(tuple(order), config.num_base_classes, config.classes_per_phase,
                     tuple(len(g["classes"]) for g in grows))
    results = incremental.run(config, data=data, plan=plan, log=log, verbose=verbose)
    if config.export:
        log(f"Wrote {write_models_config(config, promote)}")
    return results


def write_models_config(config: TrainConfig, promote: bool) -> str:
    """`models.config` beside the exports: newest version `canary`, the one before `stable`.

    With `promote`, the newest version is served alone as `stable`. Rolling
    back is pointing `stable` at an older version (`export/models_config.py
    --policy=specific --versions=... --labels=stable=N`).
    """
    base = run_state.export_base_dir(config)
    versions = serving.export_versions(base)
    if not versions:
        raise GrowthError(f"No exported version under {base}.")
    newest = versions[-1]
    if promote or len(versions) == 1:
        served, labels = [newest], {"stable": newest}
    else:
        served, labels = [versions[-2], newest], {"stable": versions[-2], "canary": newest}
    text = serving_config.models_config_text([serving_config.model_config(
        config.model_name, os.path.abspath(base), policy="specific", versions=served,
        version_labels=labels)])
    path = os.path.join(os.path.dirname(base), MODELS_CONFIG)
    atomic_io.write_text(path, text)
    return path
