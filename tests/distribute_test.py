"""Distributed runs give the single-device results.

The same tiny protocol run (ResNet-8, phase 0 plus one AANet phase with
Level 2, 2 epochs each, global batch 16 with a short last batch) on
- one device, in this process (the reference);
- `MirroredStrategy` over 2 logical CPU devices, in a subprocess (logical
  devices must be configured before TensorFlow initialises its devices);
- a `MultiWorkerMirroredStrategy` cluster of 2 worker processes on 127.0.0.1
  (`TF_CONFIG`).

Tolerance. A distributed step computes the single-device step exactly
(global-batch loss shares, summed gradients, synchronised BatchNorm); only
the floating-point summation order differs (all-reduce of gradients, and
BatchNorm variance as E[x^2] - E[x]^2 over replicas). Those float32 rounding
differences (~1e-7 relative per step) grow over the run but stay small:
losses within 1% relative, aggregation weights within 0.02, and CNN/NME
accuracies within 2 of the 60 test images (a near-tie argmax may flip).
The two workers of one cluster hold the same synchronised model, so their
results must agree with each other to 1e-6. Each distributed run's chief
exports every phase for TF Serving; a version must serve the logits of the
checkpoint it was exported with (1e-5, the serving tests' bound). The weight
decay is 100 times the paper's so that applying it once per replica instead
of once in total would show (so does BatchNorm left unsynchronised).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import socket
import subprocess
import sys

import pytest

from support import REPO_ROOT, TINY as CONFTEST_TINY
from aanets_tf.workdir import Workdir

pytestmark = pytest.mark.slow

# Exports on (the chief exports each phase), and a weight decay that moves the weights.
TINY = {**CONFTEST_TINY, "export": True, "weight_decay": 0.05}
NUM_TEST_IMAGES = 6 * 10  # phase 1 evaluates all 6 seen classes
ACCURACY_TOLERANCE = 100.0 * 2 / NUM_TEST_IMAGES
LOSS_RTOL = 1e-2
ALPHA_ATOL = 0.02
SUBPROCESS_TIMEOUT = 600


def _save_data(data, path: str) -> None:
    import numpy as np

    from aanets_tf.data import datasets

    np.savez(path, train_images=datasets.decoded_images(data.train),
             train_labels=data.train.labels,
             test_images=datasets.decoded_images(data.test), test_labels=data.test.labels,
             label_names=np.array(data.label_names))


def _saved_data(path: str):
    import numpy as np

    from aanets_tf.data import datasets

    saved = np.load(path)
    return datasets.from_arrays(saved["train_images"], saved["train_labels"],
                                saved["test_images"], saved["test_labels"], num_classes=10,
                                label_names=[str(n) for n in saved["label_names"]],
                                name="cifar10")


def _run(strategy_name: str, workdir: str, data_path: str | None = None, data=None) -> dict:
    """One tiny protocol run; returns the metrics and the replica count."""
    from aanets_tf import distribute
    from aanets_tf.config import TrainConfig
    from aanets_tf.protocol import incremental

    # The strategy comes first: a multi-worker cluster must be set up before
    # TensorFlow runs any op.
    strategy = distribute.build_strategy(strategy_name)
    data = data if data is not None else _saved_data(data_path)
    config = TrainConfig(**TINY, workdir=workdir, strategy=strategy_name)
    metrics = incremental.run(config, data=data, verbose=0, log=lambda _: None,
                              strategy=strategy)
    return {"replicas": strategy.num_replicas_in_sync, "metrics": metrics}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(mode: str, workdir: str, data_path: str, out: str, tf_config: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), f"--mode={mode}", f"--workdir={workdir}",
         f"--data={data_path}", f"--out={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env)


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _assert_matches(metrics: dict, reference: dict) -> None:
    assert len(metrics["phases"]) == len(reference["phases"]) == 2
    for got, want in zip(metrics["phases"], reference["phases"]):
        phase = want["phase"]
        for key in ("num_train_images", "num_exemplars", "num_seen_classes"):
            assert got[key] == want[key], (phase, key)
        for key in ("cnn_accuracy", "nme_accuracy"):
            assert abs(got[key] - want[key]) <= ACCURACY_TOLERANCE + 1e-9, (phase, key,
                                                                           got[key], want[key])
        assert set(got["final_losses"]) == set(want["final_losses"])
        for key, value in want["final_losses"].items():
            if key.startswith("alpha"):
                assert got["final_losses"][key] == pytest.approx(value, abs=ALPHA_ATOL), key
            else:
                assert got["final_losses"][key] == pytest.approx(value, rel=LOSS_RTOL,
                                                                 abs=1e-6), (phase, key)
        if want["aggregation_weights"]:
            assert got["aggregation_weights"] == pytest.approx(want["aggregation_weights"],
                                                               abs=ALPHA_ATOL)
    # Level 2 really ran: the aggregation weights moved from 0.5.
    assert max(abs(a - 0.5) for a in metrics["phases"][1]["aggregation_weights"]) > 1e-3


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory):
    """All runs at once: the distributed ones in subprocesses while this one trains.

    Tracing dominates these tiny runs and is single-threaded, so running them
    side by side roughly halves the wall time on two cores.
    """
    root = tmp_path_factory.mktemp("distribute")
    data = tiny_cifar
    data_path = str(root / "data.npz")
    _save_data(data, data_path)
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = {"mirrored": _start("mirrored", str(root / "mirrored"), data_path,
                                    str(root / "mirrored.json"))}
    for index in range(2):
        processes[f"worker{index}"] = _start(
            "multi_worker", str(root / "multi_worker"), data_path,
            str(root / f"worker{index}.json"),
            tf_config=json.dumps({"cluster": cluster,
                                  "task": {"type": "worker", "index": index}}))
    try:
        reference = _run("default", str(root / "single_device"), data=data)
        errors = {}
        for name, process in processes.items():
            _, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
            errors[name] = None if process.returncode == 0 else stderr[-3000:]
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    results = {name: _read(str(root / f"{name}.json")) if errors[name] is None else None
               for name in processes}
    return {"root": root, "reference": reference, "results": results, "errors": errors}


def test_single_device_reference(runs):
    assert runs["reference"]["replicas"] == 1


def test_mirrored_over_two_cpu_devices_matches_one_device(runs):
    assert runs["errors"]["mirrored"] is None, runs["errors"]["mirrored"]
    result = runs["results"]["mirrored"]
    assert result["replicas"] == 2
    _assert_matches(result["metrics"], runs["reference"]["metrics"])


def test_two_worker_cluster_matches_one_device(runs):
    for name in ("worker0", "worker1"):
        assert runs["errors"][name] is None, runs["errors"][name]
    chief, other = runs["results"]["worker0"], runs["results"]["worker1"]
    assert chief["replicas"] == other["replicas"] == 2
    _assert_matches(chief["metrics"], runs["reference"]["metrics"])
    # Both workers trained the same synchronised model.
    for got, want in zip(other["metrics"]["phases"], chief["metrics"]["phases"]):
        assert got["cnn_accuracy"] == want["cnn_accuracy"]
        assert got["nme_accuracy"] == want["nme_accuracy"]
        for key, value in want["final_losses"].items():
            assert got["final_losses"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    # The chief writes the workdir; the other worker its own copy beneath it.
    workdir = str(runs["root"] / "multi_worker")
    assert _read(os.path.join(workdir, "metrics.json")) == json.loads(
        json.dumps(chief["metrics"]))
    assert os.path.exists(os.path.join(workdir, "workers", "worker_1", "metrics.json"))


@pytest.mark.parametrize("run", ["mirrored", "multi_worker"])
def test_chief_exports_each_phase_with_the_checkpoints_logits(runs, run):
    """A network built and trained under a strategy exports like a single-device one."""
    import numpy as np
    import tensorflow as tf
    from serving_networks import images, keras_outputs

    from aanets_tf.config import TrainConfig
    from aanets_tf.protocol import checkpointing, run_state
    from aanets_tf.serving import serving

    result = runs["results"]["worker0" if run == "multi_worker" else run]
    assert result is not None, runs["errors"]
    workdir = str(runs["root"] / run)
    base = run_state.export_base_dir(TrainConfig(**TINY, workdir=workdir))
    assert sorted(os.listdir(base)) == ["1", "2"]
    # The other worker of the cluster exports nothing.
    assert not glob.glob(os.path.join(workdir, "workers", "*", "export"))
    class_order = result["metrics"]["class_order"]
    pixels = images(5, shape=(32, 32, 3))
    for phase in range(TINY["num_phases"]):
        num_classes = TINY["num_base_classes"] + phase * TINY["classes_per_phase"]
        version = os.path.join(base, str(phase + 1))
        assert serving.read_classes(version)["class_ids"] == class_order[:num_classes]
        network = checkpointing.load_network(Workdir(workdir).phase_network(phase))
        served = tf.saved_model.load(version).signatures["serving_default"](
            images=tf.constant(pixels))
        assert served["logits"].shape == (5, num_classes)
        np.testing.assert_allclose(served["logits"].numpy(),
                                   keras_outputs(network, pixels)["logits"], rtol=0, atol=1e-5)


def test_unknown_and_unavailable_strategies_are_refused():
    import tensorflow as tf

    from aanets_tf import distribute

    with pytest.raises(ValueError, match="strategy='horovod'"):
        distribute.build_strategy("horovod")
    try:
        strategy = distribute.build_strategy("tpu")
    except distribute.StrategyUnavailableError as e:
        assert "strategy=tpu needs a reachable TPU" in str(e)
    else:  # a machine with a TPU
        assert isinstance(strategy, tf.distribute.TPUStrategy)


def main() -> None:
    if len(sys.argv) == 1:  # run as a test target (Bazel): the tests of this file
        raise SystemExit(pytest.main([os.path.abspath(__file__), "-q"]))
    parser = argparse.ArgumentParser(description="One distributed run of the test protocol.")
    parser.add_argument("--mode", choices=["mirrored", "multi_worker"], required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", required=True, help="the .npz the test saved")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, REPO_ROOT)
    import tensorflow as tf

    if args.mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    result = _run(args.mode, args.workdir, data_path=args.data)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
