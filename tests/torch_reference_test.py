"""The PyTorch comparison of benchmarks.throughput: its error without torch, its ratios,
and (only where torch is installed) that the authors' code path
(benchmarks.pytorch.authors) is the network ours is, given the same weights
(benchmarks.pytorch.fidelity), trains what their loop trains, and that the PyTorch loop
of the whole protocol (benchmarks.pytorch.protocol) runs."""

import sys

import numpy as np
import pytest
from absl import app

from benchmarks import harness, pytorch, throughput, throughput_report
from support import SHARED_DATA_DIR


def test_missing_torch_names_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(app.UsageError, match=r"--torch_reference needs PyTorch.*"
                                              r"benchmarks/pytorch/requirements\.txt"):
        throughput.load_torch_reference()


def test_requirements_file_pins_the_cpu_build():
    with open(f"{harness.REPO_ROOT}/{pytorch.REQUIREMENTS}") as f:
        pins = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert pins == ["torch==2.13.0"]


def test_compare_frameworks_takes_the_median_of_per_repeat_ratios():
    samples = {
        "float32": {"phase0": [300.0, 100.0, 200.0], "level2_aanet": [400.0, 400.0, 400.0],
                    "input_pipeline": [9e4, 9e4, 9e4]},
        throughput_report.TORCH_VARIANT: {"phase0": [100.0, 100.0, 50.0],
                                   "level2_aanet": [100.0, 200.0, 200.0]},
    }
    rows = throughput_report.compare_frameworks(samples)["float32"]
    # Per-repeat ratios 3, 1, 4 -> 3 (the ratio of the medians would be 2); the
    # fastest repeats give 300 / 100 = 3 as well.
    assert rows["phase0"]["ratio"] == pytest.approx(3.0)
    assert rows["phase0"]["best_ratio"] == pytest.approx(3.0)
    assert rows["phase0"]["reached"] and rows["phase0"]["short_by"] == 1.0
    # Ratios 4, 2, 2 -> 2, fastest repeats 400 / 200: exactly the Level-2 target.
    assert rows["level2_aanet"]["ratio"] == pytest.approx(2.0)
    assert rows["level2_aanet"]["reached"]
    assert "input_pipeline" not in rows  # no PyTorch counterpart
    samples[throughput_report.TORCH_VARIANT]["level2_aanet"] = [400.0, 400.0, 400.0]
    row = throughput_report.compare_frameworks(samples)["float32"]["level2_aanet"]
    assert not row["reached"] and row["short_by"] == pytest.approx(2.0)
    # A PyTorch repeat stalled by other load (10 img/s) lifts the median ratio to
    # 4, not the fastest repeats' ratio (1): the target is judged on the lower.
    samples[throughput_report.TORCH_VARIANT]["level2_aanet"] = [400.0, 10.0, 10.0]
    row = throughput_report.compare_frameworks(samples)["float32"]["level2_aanet"]
    assert row["ratio"] == pytest.approx(40.0) and row["best_ratio"] == pytest.approx(1.0)
    assert not row["reached"] and row["short_by"] == pytest.approx(2.0)
    samples[throughput_report.TORCH_VARIANT]["level2_aanet"] = [400.0, 400.0, 400.0]
    markdown = throughput_report.torch_table(throughput_report.compare_frameworks(samples), 128,
                                      "a CPU", {"torch": "x", "threads": 2})
    assert "missed (needs 2.00x more)" in markdown


@pytest.fixture(scope="module")
def authors():
    pytest.importorskip("torch")
    from benchmarks.pytorch import authors

    return authors


def _steps(authors, blocks):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    return authors.AuthorsSteps(
        images, np.arange(8) % 4, images, np.arange(8) % 6, images, num_old=4, num_new=2,
        learning_rate=0.1, momentum=0.9, weight_decay=5e-4, aggregation_lr=0.1,
        less_forget_weight=7.0, margin=0.5, top_k=2, threads=1, blocks=blocks)


@pytest.mark.parametrize("arch,blocks", [("resnet8", 1), ("resnet32", 5)])
def test_authors_networks_are_ours_with_a_stem_per_branch_and_an_unused_head(
        authors, arch, blocks):
    from aanets_tf.models.backbones import aanet_from_resnet, build_resnet
    from aanets_tf.models.network import build_network, parameter_counts

    resnet = build_resnet(arch)

    def count(network):
        counts = parameter_counts(network)
        return counts["total"] - counts["statistics"]

    ours = {"plain_phase0": count(build_network(resnet, 0, 4)),
            "aanet_phase1": count(build_network(aanet_from_resnet(resnet, stem="per_branch"),
                                                4, 2))}
    unused_head = 64 * 4 + 1  # the plastic branch's phase-0 cosine head and its sigma
    assert _steps(authors, blocks).parameter_counts() == {
        "plain_phase0": ours["plain_phase0"],
        "aanet_phase1": ours["aanet_phase1"] + unused_head}


def test_authors_steps_train_what_their_loop_trains(authors):
    import torch

    steps = _steps(authors, blocks=1)
    aanet = steps.aanet

    def snapshot():
        return {n: p.detach().clone() for n, p in aanet.named_parameters()}

    before = snapshot()
    steps.run("level1_aanet", 2)
    after = snapshot()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert not any("alphas" in n for n in changed)
    frozen = {n for n, p in aanet.b1.named_parameters() if not p.requires_grad}
    assert frozen and not {f"b1.{n}" for n in frozen} & changed  # the stable kernels
    assert not any(n.startswith("b1.fc.fc1") for n in changed)  # old rows: learning rate 0
    assert not any(n.startswith("b2.fc") for n in changed)  # the plastic head is unused
    assert any(n.endswith(".scale") for n in changed)
    assert any(n.startswith("b1.fc.fc2") for n in changed)
    assert any(n.startswith("b2.layer3") for n in changed)
    # Their Level 1 records the teacher's graph, and Level 2 back-propagates into every
    # parameter (only the aggregation weights move).
    aanet.zero_grad(set_to_none=True)
    steps.run("level2_aanet", 2)
    changed = {n for n, p in snapshot().items() if not torch.equal(after[n], p)}
    assert changed == {"alphas.0", "alphas.1", "alphas.2"}
    assert aanet.b2.layer3[0].conv1.weight.grad is not None
    # The single-branch baseline runs both branches, its weights fixed at 1.
    steps.run("level1_single", 1)
    assert [float(a.detach()) for a in steps.single.alphas] == [1.0, 1.0, 1.0]


def test_an_unknown_step_is_refused_naming_it(authors):
    with pytest.raises(ValueError, match=r"step='level3'"):
        _steps(authors, blocks=1).run("level3", 1)


@pytest.mark.slow  # reads real CIFAR-10
def test_authors_networks_given_our_weights_compute_our_losses(authors, monkeypatch):
    from aanets_tf.config import TrainConfig
    from benchmarks.pytorch import fidelity

    config = TrainConfig(dataset="cifar10", data_dir=SHARED_DATA_DIR, arch="resnet8",
                         num_base_classes=4, classes_per_phase=2, train_images_per_class=20,
                         test_images_per_class=10, batch_size=32, exemplars_per_class=3)
    data, plan = throughput.protocol_data(config)
    result = throughput.check_fidelity(config, data, plan)
    assert result["passed"]
    assert set(result["authors"]) == {"phase0_loss", "level1_loss", "level1_ce",
                                      "level1_less_forget", "level1_margin_ranking",
                                      "level2_loss"}
    assert result["ours"]["level1_margin_ranking"] > 0  # every term is compared, not 0 = 0
    counts = result["parameter_counts"]
    assert counts["authors"]["aanet_phase1"] == (counts["ours"]["aanet_phase1"]
                                                 + counts["authors_plastic_unused_head"])
    # PyTorch's own stride-2 padding (one pixel on every side) is a different network:
    # the check sees it.
    monkeypatch.setattr(fidelity, "_pad_as_tensorflow", lambda module: None)
    with pytest.raises(AssertionError, match=r"do not compute what ours do: level2_loss"):
        throughput.check_fidelity(config, data, plan)


@pytest.mark.slow  # reads real CIFAR-10
def test_protocol_loop_runs_every_phase(authors):
    import math

    from aanets_tf.config import TrainConfig
    from benchmarks.pytorch import protocol as torch_protocol

    # The CPU protocol's phases (4 base classes, then 3 phases of 2) on ResNet-8, tiny.
    config = TrainConfig(dataset="cifar10", data_dir=SHARED_DATA_DIR, arch="resnet8",
                         num_base_classes=4, classes_per_phase=2, train_images_per_class=10,
                         test_images_per_class=10, epochs=2, batch_size=16,
                         exemplars_per_class=3)
    data = torch_protocol.load_data(config)
    assert len(data.train_labels) == 100 and len(data.test_labels) == 100
    report = torch_protocol.run(config, data, threads=1, test_every_epoch=True,
                                test_batch_size=32, feature_batch_size=32, log=lambda _: None)
    phases = report["phases"]
    assert [p["phase"] for p in phases] == [0, 1, 2, 3]
    assert [p["num_seen_classes"] for p in phases] == [4, 6, 8, 10]
    # Level 1: the new classes' images and 3 exemplars of each old class; Level 2: 3
    # images of each new class and the same exemplars.
    assert [p["num_train_images"] for p in phases] == [40, 32, 38, 44]
    assert [p["num_level2_images"] for p in phases] == [0, 18, 24, 30]
    for p in phases:
        for kind in ("cnn_accuracy", "nme_accuracy"):
            assert math.isfinite(p[kind]) and 0.0 <= p[kind] <= 100.0
        assert set(p["timings"]) == {"setup", "level1", "level2", "epoch_tests", "herding",
                                     "evaluation"}
        assert all(s >= 0.0 for s in p["timings"].values()) and p["timings"]["level1"] > 0
        assert [t["epoch"] for t in p["epoch_tests"]] == [1, 2]
        assert all(0.0 <= t["accuracy"] <= 100.0 for t in p["epoch_tests"])
        assert p["wall_seconds"] >= p["phase_seconds"] > 0
    assert phases[0]["aggregation_weights"] is None
    # Their Level 2 (no clipping) moves the three weights a little from 0.5.
    weights = [p["aggregation_weights"] for p in phases[1:]]
    assert all(len(w) == 3 and all(0.0 < a < 1.0 for a in w) for w in weights)
    assert weights[-1] != [0.5, 0.5, 0.5]
    assert report["average_incremental_accuracy"]["cnn"] == pytest.approx(
        np.mean([p["cnn_accuracy"] for p in phases]))
    with pytest.raises(ValueError, match=r"--stable_block must be 'scaled'.*plastic"):
        torch_protocol.check_supported(config.replace(stable_block="plastic"))
    torch_protocol.check_supported(config.replace(stem="per_branch"))  # theirs: per branch
    # Their single-branch baseline: both branches run, the weights stay at 1.
    single = torch_protocol.run(config.replace(branch_mode="single", epochs=1), data,
                                threads=1, test_batch_size=32, feature_batch_size=32,
                                log=lambda _: None)
    assert [p["aggregation_weights"] for p in single["phases"][1:]] == [[1.0, 1.0, 1.0]] * 3
    assert all(p["timings"]["level2"] > 0 for p in single["phases"][1:])


def test_step_worker_serves_steps_with_their_cpu_time(authors, tmp_path):
    import io
    import json

    from benchmarks.pytorch import step_worker

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    path = tmp_path / "batches.npz"
    np.savez(path, phase0_images=images, phase0_labels=np.array([0, 1, 2, 3]),
             phase1_images=images, phase1_labels=np.array([0, 3, 4, 5]), eval_images=images)
    settings = dict(num_old=4, num_new=2, learning_rate=0.1, momentum=0.9, weight_decay=5e-4,
                    aggregation_lr=0.003, less_forget_weight=5.0, margin=0.5, top_k=2,
                    threads=1, blocks=1)
    replies = io.StringIO()
    step_worker.serve(str(path), settings, io.StringIO("phase0 2\nlevel2_aanet 1\n"), replies)
    ready, phase0, level2 = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert ready["ready"] and ready["parameter_counts"]["plain_phase0"] > 0
    assert ready["versions"]["threads"] == 1
    assert phase0["images"] == 8 and level2["images"] == 4
    assert phase0["seconds"] > 0 and phase0["user"] + phase0["system"] > 0
    assert {"minor_faults"} <= set(level2)
    with pytest.raises(ValueError, match="Unknown step"):
        step_worker.serve(str(path), settings, io.StringIO("phase9 1\n"), io.StringIO())
