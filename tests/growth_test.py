"""End to end: a run from image folders, grown by new classes, served; kills and bad grows."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.config import TrainConfig
from aanets_tf.protocol import growth, incremental, run_state
from aanets_tf.reports.reporting import without_timings
from aanets_tf.serving import serving_config
from support import REPO_ROOT, SHARED_DATA_DIR, kill_after_epoch
from aanets_tf.workdir import Workdir
from tools import make_folder_dataset

pytestmark = pytest.mark.slow

BASE_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]
NEW_CLASSES = ["frog", "horse"]
EMPTY_CLASS = "ship"
TINY = dict(dataset="folder", arch="resnet8", num_base_classes=4, classes_per_phase=2,
            epochs=2, batch_size=16, exemplars_per_class=4, eval_batch_size=64,
            aggregation_lr=0.5, deterministic=True)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    base, new = str(root / "base"), str(root / "new")
    make_folder_dataset.write_tree("cifar10", SHARED_DATA_DIR, base, BASE_CLASSES, 12, 5)
    make_folder_dataset.write_tree("cifar10", SHARED_DATA_DIR, new, NEW_CLASSES, 12, 5)
    # A class with fewer images than its exemplar budget, and a bad file.
    for name in sorted(os.listdir(os.path.join(base, "train", "dog")))[3:]:
        os.remove(os.path.join(base, "train", "dog", name))
    with open(os.path.join(base, "train", "cat", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    # A new class whose folder holds no image yet: the grow skips it.
    os.makedirs(os.path.join(new, "train", EMPTY_CLASS))
    return base, new


@pytest.fixture(scope="module")
def base_run(trees, tmp_path_factory):
    base, _ = trees
    workdir = str(tmp_path_factory.mktemp("run") / "run")
    lines = []
    results = incremental.run(TrainConfig(**TINY, data_dir=base, workdir=workdir), verbose=0,
                              log=lines.append)
    return workdir, results, lines


@pytest.fixture(scope="module")
def grown(base_run, trees, tmp_path_factory):
    workdir, _, _ = base_run
    copy = str(tmp_path_factory.mktemp("copy") / "run")
    shutil.copytree(workdir, copy)  # the state before growing, for the kill test
    lines = []
    results = growth.grow(workdir, trees[1], verbose=0, log=lines.append)
    return workdir, results, copy, lines


def test_base_run_from_folders(base_run):
    workdir, results, lines = base_run
    assert results["label_names"] == BASE_CLASSES
    assert len(results["phases"]) == 2
    assert results["skipped_images"]["count"] == 1
    assert results["skipped_images"]["records"][0]["name"].endswith("broken.png")
    assert any("'dog' has 3 training image(s), fewer than its 4 exemplars" in line
               for line in lines)


def test_grown_run_has_three_phases_and_serves_version_3(grown, trees):
    workdir, results, _, lines = grown
    assert [len(p["new_classes"]) for p in results["phases"]] == [4, 2, 2]
    assert any(f"Skipped 1 empty class folder(s) of {trees[1]}: ['{EMPTY_CLASS}']" in line
               for line in lines), lines
    phase2 = results["phases"][2]
    assert sorted(results["label_names"][c] for c in phase2["new_classes"]) == NEW_CLASSES
    assert set(phase2["evaluated_classes"]) == set(BASE_CLASSES + NEW_CLASSES)
    assert phase2["num_seen_classes"] == 8
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert len(json.load(f)["phases"]) == 3

    base = run_state.export_base_dir(TrainConfig(**TINY, data_dir=trees[0], workdir=workdir))
    assert sorted(os.listdir(base)) == ["1", "2", "3"]
    with open(os.path.join(os.path.dirname(base), "models.config")) as f:
        served = serving_config.parse_models_config(f.read()).model_config_list.config[0]
    assert dict(served.version_labels) == {"stable": 2, "canary": 3}
    assert list(served.model_version_policy.specific.versions) == [2, 3]

    # Version 3 answers with the new labels and predicts the new classes' images.
    model = tf.saved_model.load(os.path.join(base, "3"))
    test_dir = os.path.join(trees[1], "test")
    images = np.stack([tf.io.decode_png(tf.io.read_file(os.path.join(test_dir, c, n))).numpy()
                       for c in NEW_CLASSES for n in sorted(os.listdir(os.path.join(test_dir,
                                                                                    c)))])
    outputs = model.signatures["serving_default"](images=tf.constant(images))
    top1 = [label.decode() for label in outputs["top_k_labels"].numpy()[:, 0]]
    assert outputs["logits"].shape == (10, 8)
    assert sum(label in NEW_CLASSES for label in top1) >= 3, top1


def test_grow_killed_mid_phase_resumes_to_the_same_metrics(grown, trees):
    _, results, copy, _ = grown
    command = [sys.executable, os.path.join(REPO_ROOT, "tools", "train.py"),
               f"--workdir={copy}", f"--add_classes_from={trees[1]}",
               "--checkpoint_seconds=0"]  # a checkpoint every epoch, to be killed after
    kill_after_epoch(command, Workdir(copy).epoch_state(2), REPO_ROOT)
    assert not os.path.exists(os.path.join(copy, "checkpoints", "phase_2.keras"))
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming phase 2 after epoch 1" in resumed.stdout
    with open(os.path.join(copy, "metrics.json")) as f:
        assert without_timings(json.load(f)) == without_timings(
            json.loads(json.dumps(results)))


def test_bad_grows_are_refused_and_change_nothing(grown, trees, tmp_path):
    workdir, _, _, _ = grown
    def contents():
        names = ("metrics.json", "growth.json", "export/models.config")
        return {n: open(os.path.join(workdir, n)).read() for n in names}

    before = contents()
    checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    # The same grow again: already done, nothing trains; models.config is (re)written.
    lines = []
    assert len(growth.grow(workdir, trees[1], log=lines.append)["phases"]) == 3
    assert any("already learned ['frog', 'horse']" in line for line in lines)
    with pytest.raises(growth.GrowthError, match="no class folder the run has not learned"):
        growth.grow(workdir, os.path.dirname(trees[1]) + "/base", log=lambda _: None)
    from aanets_tf.data import folders
    with pytest.raises(folders.FolderError, match=r"already learned class\(es\) \['frog'\]"):
        growth.grow(workdir, trees[1], classes=["frog"], log=lambda _: None)
    extra = tmp_path / "extra"
    make_folder_dataset.write_tree("cifar10", SHARED_DATA_DIR, str(extra), ["ship"], 4, 2)
    with pytest.raises(run_state.WorkdirConflictError, match="epochs: 2 -> 5"):
        growth.grow(workdir, str(extra), overrides={"epochs": 5}, log=lambda _: None)
    assert [g["classes"] for g in growth.read_growth(workdir)] == [NEW_CLASSES]
    # A grow killed before its phase finished leaves its entry: another grow is refused.
    path = Workdir(workdir).growth
    with open(path) as f:
        saved = f.read()
    pending = {"phase": 3, "from": str(extra), "classes": ["ship"]}
    grows = growth.read_growth(workdir)
    with open(path, "w") as f:
        json.dump({"grows": grows + [pending]}, f)
    with pytest.raises(growth.GrowthError, match="is unfinished. Finish it first"):
        growth.grow(workdir, trees[1], classes=["horse"], log=lambda _: None)
    with open(path, "w") as f:
        f.write(saved)
    with pytest.raises(growth.GrowthError, match="holds no run"):
        growth.grow(str(tmp_path / "empty"), trees[1], log=lambda _: None)
    assert contents() == before
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints
