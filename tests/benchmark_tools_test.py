"""The benchmarks' harness (flags, machine, launcher, timing, reports), that every benchmark
module imports as `benchmarks.NAME`, and their pure parts: profile summaries, lever ratios,
phase costs, the hosts grid's comparison."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from benchmarks import (fixed_costs, harness, levers, phase_cost, profile_steps, protocol_time,
                        run_speed)

BENCHMARKS = pathlib.Path(harness.REPO_ROOT) / "benchmarks"


def test_self_times_subtract_nested_events_on_a_thread():
    events = [  # (start, duration, name)
        (0, 100, "Run"),            # the caller, around everything
        (10, 50, "a:Conv2D"),
        (20, 10, "b:Relu"),         # nested in the convolution
        (70, 20, "c:Conv2D"),
        (100, 5, "d:AddV2"),        # starts when Run ends: a sibling, not a child
    ]
    times = profile_steps.self_times(events)
    assert times == {"Run": 30, "a:Conv2D": 40, "b:Relu": 10, "c:Conv2D": 20, "d:AddV2": 5}


def test_op_type_keeps_tensorflow_ops_only():
    assert profile_steps.op_type("model/conv1/Conv2D:_MklNativeConv2D") == "_MklNativeConv2D"
    for runtime_event in ("KernelAndDeviceFunc::Run", "ExecutorState::Process",
                          "EagerLocalExecute: __inference_step_1", "FunctionRun"):
        assert profile_steps.op_type(runtime_event) is None


def test_lever_ratios_are_medians_of_per_repeat_ratios():
    samples = {"fused_bn": {"phase0": [100.0, 200.0, 400.0]},
               "keras_bn": {"phase0": [50.0, 200.0, 100.0]}}
    ratios = levers.relative(samples, "fused_bn")
    assert ratios == {"keras_bn": {"phase0": pytest.approx(0.5)}}  # ratios 0.5, 1, 0.25
    assert "| keras_bn / fused_bn | 0.50 |" in levers.table(samples, ratios, "fused_bn")


def test_lever_usage_is_per_image_and_a_lever_environment_reaches_its_worker(monkeypatch):
    usage = levers.per_image({"images": 256, "user": 3.0, "system": 1.0, "minor_faults": 512})
    assert usage == {"cpu_ms_per_image": pytest.approx(1000 * 4.0 / 256),
                     "system_share": pytest.approx(0.25), "minor_faults_per_image": 2.0}
    assert "| bfc_allocator | phase0 | 15.6 | 25% | 2 |" in levers.usage_table(
        {"bfc_allocator": {"phase0": usage}})

    started = {}

    class Popen:
        def __init__(self, command, **kwargs):
            started.update(kwargs)

    monkeypatch.setattr(levers.subprocess, "Popen", Popen)
    levers.Worker("bfc_allocator", [])
    assert started["env"]["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    levers.Worker("default", [])
    assert started["env"].get("TF_CPU_ALLOCATOR_USE_BFC") == os.environ.get(
        "TF_CPU_ALLOCATOR_USE_BFC")  # the parent's environment, nothing added


def _metrics(timings=None):
    phase = {"phase": 1, "num_seen_classes": 6, "num_exemplars": 80,
             "num_train_images": 1080, "train_seconds": 100.0, "eval_seconds": 12.5}
    if timings:
        phase["timings"] = timings
    return {"phases": [phase]}


def test_phase_costs_use_the_finest_timings_recorded():
    coarse = phase_cost.phase_costs(_metrics())[0]
    assert coarse["seconds"] == {"train": 100.0, "herding_and_evaluation": 12.5}
    assert coarse["total_seconds"] == 112.5 and coarse["exemplars"] == 80
    fine = phase_cost.phase_costs(_metrics({"level1": 80.0, "level2": 20.0, "herding": 4.0,
                                            "evaluation": 8.5}))[0]
    assert fine["seconds"] == {"level1": 80.0, "level2": 20.0, "herding": 4.0,
                               "evaluation": 8.5, "export": 0.0}


def test_phase_cost_writes_table_and_plot(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.json").write_text(json.dumps(_metrics()))
    out = tmp_path / "out"
    markdown = phase_cost.report([str(workdir)], str(out))
    assert "| 1 | 6 | 80 | 1080 | 100.0 | 12.5 | 112.5 |" in markdown
    assert (out / "phase_cost.md").read_text() == markdown
    assert (out / "phase_cost.png").stat().st_size > 0
    with pytest.raises(Exception, match="metrics.json"):
        phase_cost.report([str(tmp_path / "missing")], str(out))


def test_protocol_time_compares_each_of_our_runs_with_each_pytorch_run():
    def run(name, wall, phases, returncode=0):
        return {"name": name, "description": name, "returncode": returncode,
                "wall_seconds": wall, "phases_seconds": phases}

    runs = {"ours": run("ours", 400.0, 380.0), "ours_auto": run("ours_auto", 250.0, 230.0),
            "torch": run("torch", 500.0, 475.0),
            "torch_test_every_epoch": run("torch_test_every_epoch", 1000.0, 950.0, 1)}
    out = protocol_time.compare(runs, target=2.0)
    # The failed PyTorch run is left out; each finished pair is compared.
    assert sorted(out) == ["torch/ours", "torch/ours_auto"]
    assert out["torch/ours"]["wall_ratio"] == pytest.approx(1.25)
    assert out["torch/ours"]["phases_ratio"] == pytest.approx(1.25)
    assert not out["torch/ours"]["met"] and out["torch/ours"]["short_by"] == pytest.approx(1.6)
    assert out["torch/ours_auto"]["wall_ratio"] == pytest.approx(2.0)
    assert out["torch/ours_auto"]["met"] and out["torch/ours_auto"]["short_by"] == 1.0
    assert protocol_time.compare({"torch": runs["torch"]}, target=2.0) == {}


def test_run_speed_compares_each_phase_with_the_step_it_runs():
    throughput = {"summary": {"float32": {"images_per_second": {
        "phase0": 200.0, "level1_single": 150.0, "level1_aanet": 100.0}}}}
    metrics = {"phases": [
        {"phase": 0, "num_train_images": 2000, "train_seconds": 250.0,
         "timings": {"level1": 200.0, "level2": 0.0}},
        {"phase": 1, "num_train_images": 1000, "train_seconds": 260.0,
         "timings": {"level1": 250.0, "level2": 10.0}}]}
    rows = run_speed.compare(metrics, {"epochs": 20, "branch_mode": "dual"}, throughput, 0.05)
    # Level 1's images over Level 1's seconds (not Level 2's), against its own step.
    assert [r["step"] for r in rows] == ["phase0", "level1_aanet"]
    assert rows[0]["run_images_per_second"] == pytest.approx(200.0)
    assert rows[0]["within_target"] and rows[0]["run / step"] == pytest.approx(1.0)
    assert rows[1]["run_images_per_second"] == pytest.approx(80.0)
    assert not rows[1]["within_target"]
    single = run_speed.compare(metrics, {"epochs": 20, "branch_mode": "single"}, throughput,
                               0.5)
    assert single[1]["step"] == "level1_single" and single[1]["within_target"]
    with pytest.raises(ValueError, match="no float32 step"):
        run_speed.compare(metrics, {"epochs": 20}, {"summary": {"mixed_bfloat16": {}}}, 0.05)
    # The progress lines split a phase: its first epoch, and the steady ones after it.
    log = ("Epoch 1/3\n16/16 - 12s - 759ms/step - loss: 1.0\nEpoch 2/3\n"
           "16/16 - 8s - 473ms/step - loss: 0.9\nEpoch 3/3\n16/16 - 8s - 470ms/step\n"
           "Phase 0: CNN 66.70%\nEpoch 1/3\n9/9 - 25s - 3s/step\nEpoch 2/3\n"
           "9/9 - 10s - 1s/step - level2_loss: 1.3\nEpoch 3/3\n9/9 - 10s - 1s/step\n")
    epochs = run_speed.epoch_seconds(log)
    assert epochs == [[12, 8, 8], [25, 10, 10]]
    rows = run_speed.compare(metrics, {"epochs": 3, "branch_mode": "dual"}, throughput, 0.05,
                             epochs)
    assert rows[0]["first_epoch_excess_seconds"] == pytest.approx(4.0)
    assert rows[0]["steady_images_per_second"] == pytest.approx(250.0)  # 2000 / 8 s
    # Phase 1: 10 s an epoch less 10 / 3 s of Level 2.
    assert rows[1]["steady_images_per_second"] == pytest.approx(1000 / (10 - 10 / 3))
    # A run that timed its first step and its checkpoints: the rest is shown beside them.
    metrics["phases"][1]["timings"].update(first_step=20.0, checkpoints=5.0)
    rows = run_speed.compare(metrics, {"epochs": 20, "branch_mode": "dual"}, throughput, 0.05)
    assert rows[1]["first_step_seconds"] == 20.0 and rows[1]["checkpoint_seconds"] == 5.0
    assert "first_step_seconds" not in rows[0]
    report = {"machine_summary": "m", "run_command": "r", "throughput_command": "t",
              "phases": rows, "run_wall_seconds": None, "tolerance": 0.05}
    # 20,000 images in 250 - 20 - 5 s: 88.9 img/s, 0.889 of the step's 100.
    assert "| 1 | 20.0 | 5.0 | 88.9 | 0.889 |" in run_speed.table(report)


def test_fixed_costs_are_shares_of_an_epoch_and_of_a_phase():
    from aanets_tf.config import TrainConfig

    costs = {"level1_step": 0.5, "level1_epoch": 4.5, "phase1_steps_per_epoch": 9,
             "epoch_checkpoint": 0.45, "trace_level1": 9.0, "python_trace_level1": 4.0,
             "trace_level2": 1.0,
             "trace_predict": 1.5, "predict_call_setup": 0.3,
             "update_keras_ops": 1200, "update_keras_trace": 2.0, "update_keras_step": 0.025,
             "update_fused_ops": 400, "update_fused_trace": 0.8, "update_fused_step": 0.01}
    markdown = fixed_costs.table(costs, TrainConfig(epochs=20))
    assert "| SGD update, Keras: tracing (1200 graph operations) | 2.000 | - |" in markdown
    assert "| SGD update, fused: steady | 0.010 | 2.0% of a Level-1 step |" in markdown
    assert ("| epoch checkpoint (one save) | 0.450 | 10.0% of an epoch; 1.5% at a save per "
            "30 s of training |") in markdown
    assert "| of which optimising the graph, first kernels | 5.000 | - |" in markdown
    markdown = fixed_costs.table(costs, TrainConfig(epochs=20, checkpoint_seconds=0))
    assert "10.0% of an epoch; 10.0% at a save per 0 s of training" in markdown
    assert "| tracing the Level-1 step (once a phase) | 9.000 | 10.0% of 20 epochs |" in markdown


def test_fixed_costs_time_both_sgd_updates_on_copies():
    import keras

    variables = [keras.Variable(np.ones((3, 3, 8, 8), "float32")),
                 keras.Variable(np.ones((8,), "float32"))]
    costs = fixed_costs.update_costs(variables, repeats=2)
    assert costs["update_fused_ops"] < costs["update_keras_ops"]
    assert costs["update_keras_step"] > 0 and costs["update_fused_step"] > 0
    for v in variables:  # the learner's own variables are not updated
        np.testing.assert_array_equal(v.numpy(), np.ones(v.shape, "float32"))


def test_hosts_grid_knows_a_finished_run_from_a_partial_one(tmp_path):
    from benchmarks import hosts
    from support import write_run_workdir

    # The CPU protocol plans phase 0 and three more (10 classes: 4 + 3 x 2).
    assert hosts.finished(write_run_workdir(tmp_path / "done", [70, 50, 40, 30]))
    assert not hosts.finished(write_run_workdir(tmp_path / "partial", [70, 50]))
    assert not hosts.finished(str(tmp_path / "missing"))
    # A run set to fewer phases (a phase-0 run) is finished when it has them.
    assert hosts.finished(write_run_workdir(tmp_path / "phase0", [70], num_phases=1))


def test_hosts_grid_leaves_a_run_another_process_trains_and_waits_for_its_phase0(
        tmp_path, monkeypatch):
    import threading
    import types

    from benchmarks import hosts
    from aanets_tf.workdir import Workdir

    runs = tmp_path / "runs"
    monkeypatch.setattr(hosts, "FLAGS", types.SimpleNamespace(
        runs=str(runs), output_dir=str(tmp_path / "out")))
    monkeypatch.setattr(hosts, "WAIT_SECONDS", 0.05)

    def train(workdir, args):
        raise AssertionError(f"trained {workdir}")

    monkeypatch.setattr(hosts, "_train", train)
    run = runs / "lucir_dual_1993"
    assert not hosts.in_use(str(run))
    run.mkdir(parents=True)
    assert not hosts.in_use(str(run)) and os.listdir(run) == []
    with Workdir(run).lock():
        assert hosts.in_use(str(run))
        assert hosts._run("lucir", "dual", "1993", None) == ("lucir_dual_1993", hosts.BUSY)

    # A phase-0 run in progress elsewhere is waited for, then taken as it is.
    phase0 = Workdir(runs / "phase0_cosine_1993")
    held, release = threading.Event(), threading.Event()

    def other_process():
        with phase0.lock():
            held.set()
            release.wait(10)
            os.makedirs(phase0.checkpoints)
            open(phase0.phase_network(0), "w").close()

    thread = threading.Thread(target=other_process)
    thread.start()
    held.wait(10)
    threading.Timer(0.3, release.set).start()
    assert hosts._phase0_run("cosine", "1993") == phase0.root
    thread.join()


def test_hosts_grid_shares_phase0_within_a_family():
    from benchmarks import hosts

    assert hosts.PHASE0_FAMILIES["lucir"] == hosts.PHASE0_FAMILIES["icarl"]
    assert hosts.PHASE0_FAMILIES["podnet"] != hosts.PHASE0_FAMILIES["lucir"]
    # LUCIR trains the cosine family's phase 0, PODNet its own.
    assert hosts.phase0_host("cosine") == "lucir" and hosts.phase0_host("podnet") == "podnet"
    # The grid's families agree with the hosts' own (`Host.phase0`).
    from aanets_tf.config import TrainConfig
    from aanets_tf.hosts import host_for

    for host, family in hosts.PHASE0_FAMILIES.items():
        assert host_for(TrainConfig(host=host)).phase0 == family


def test_hosts_grid_parses_its_run_names_only():
    from benchmarks import hosts

    assert hosts.parse_run_name("lucir_dual_1993") == ("lucir", "dual", "1993")
    assert hosts.parse_run_name("icarl_dual_held_out_1994") == ("icarl", "dual_held_out", "1994")
    for other in ("phase0_cosine_1993", "lucir_dual", "lucir_wide_1993", "lucir_dual_x"):
        assert hosts.parse_run_name(other) is None


def test_hosts_grid_compares_variants_with_the_single_branch_run(tmp_path):
    from benchmarks import hosts
    from support import write_run_workdir

    runs = tmp_path / "runs"
    write_run_workdir(runs / "lucir_single_1993", [70, 50, 40, 30], [71, 52, 42, 33],
                      forgetting={"cnn": 30.0, "nme": 20.0})
    write_run_workdir(runs / "lucir_dual_1993", [70, 54, 44, 36], [71, 55, 46, 38],
                      forgetting={"cnn": 25.0, "nme": 18.0})
    write_run_workdir(runs / "lucir_fixed_1993", [70, 52], [71, 53])  # unfinished
    write_run_workdir(runs / "phase0_cosine_1993", [70], num_phases=1)  # not a grid run
    compared = hosts.comparison(str(runs))
    assert list(compared) == ["lucir_1993"]
    entry = compared["lucir_1993"]
    assert list(entry["variants"]) == ["single", "dual"]
    gain = entry["minus_single"]["dual"]
    assert gain["average_incremental_accuracy"]["cnn"] == pytest.approx(3.5)
    assert gain["average_incremental_accuracy"]["nme"] == pytest.approx(3.0)
    assert gain["forgetting"] == {"cnn": -5.0, "nme": -2.0}
    markdown = hosts.comparison_table(compared)
    assert "## LUCIR, class order 1993" in markdown
    assert "|  | single CNN | single NME | dual CNN | dual NME |" in markdown
    assert "| phase 3 | 30.00 | 33.00 | 36.00 | 38.00 |" in markdown
    assert "| average minus single | - | - | +3.50 | +3.00 |" in markdown


def test_hosts_grid_splits_accuracy_into_old_and_new_classes(tmp_path):
    from benchmarks import hosts
    from support import write_run_workdir

    runs = tmp_path / "runs"

    def run(name, old_new):
        # old_new: per incremental phase, (old CNN, old NME, new CNN, new NME).
        keys = ("old_accuracy", "nme_old_accuracy", "new_accuracy", "nme_new_accuracy")
        write_run_workdir(runs / name, [70] + [50] * len(old_new),
                          phase_fields=[{}] + [dict(zip(keys, values)) for values in old_new])

    run("podnet_single_1993", [(40, 30, 80, 60), (20, 10, 60, 40), (30, 20, 70, 50)])
    run("podnet_dual_1993", [(50, 40, 70, 50), (30, 20, 50, 30), (40, 30, 60, 40)])
    run("podnet_single_1994", [(10, 10, 90, 90), (20, 20, 80, 80), (30, 30, 70, 70)])
    run("podnet_dual_1994", [(20, 20, 80, 80), (30, 30, 70, 70), (40, 40, 60, 60)])
    write_run_workdir(runs / "podnet_dual_1995", [70, 50, 40, 30])  # no split recorded
    write_run_workdir(runs / "podnet_single_1995", [70, 50, 40, 30])
    run("podnet_single_1996", [(90, 90, 10, 10)] * 3)  # its dual run has not finished
    run("lucir_single_1993", [(40, 30, 80, 60)] * 3)
    run("lucir_fixed_1993", [(60, 50, 60, 40)] * 3)
    compared = hosts.comparison(str(runs))
    assert compared["podnet_1993"]["variants"]["dual"]["old_new"] == {
        "old": {"cnn": 40.0, "nme": 30.0}, "new": {"cnn": 60.0, "nme": 40.0}}
    assert compared["podnet_1995"]["variants"]["dual"]["old_new"] is None
    # Every row of a host averages the same orders: those where all its variants have the
    # split (1993 and 1994; not 1995, without it, nor 1996, without a dual run).
    summary = hosts.split_summary(compared)
    assert summary["podnet"]["single"] == {"orders": 2, "old": {"cnn": 25.0, "nme": 20.0},
                                           "new": {"cnn": 75.0, "nme": 65.0}}
    assert summary["podnet"]["dual"]["old"] == {"cnn": 35.0, "nme": 30.0}
    assert list(summary["lucir"]) == ["single", "fixed"]
    assert summary["lucir"]["fixed"]["old"] == {"cnn": 60.0, "nme": 50.0}
    markdown = hosts.comparison_table(compared)
    assert "| PODNet | dual | 2 | 35.00 | 30.00 | 65.00 | 55.00 |" in markdown
    assert "| old classes, phases 1+ | 30.00 | 20.00 | 40.00 | 30.00 |" in markdown
    assert "| new classes, phases 1+ | - | - | - | - |" in markdown


# === The harness ===

def test_markdown_table_lays_out_header_rule_and_rows():
    text = harness.markdown_table(["step", "img/s"], [["phase0", 12.5], ("eval", "-")])
    assert text == ("| step | img/s |\n|---|---|\n| phase0 | 12.5 |\n| eval | - |\n")
    with pytest.raises(ValueError, match=r"3 cells, the header 2.*'x'"):
        harness.markdown_table(["a", "b"], [["x", 1, 2]])


def test_write_report_writes_json_and_markdown(tmp_path):
    out = tmp_path / "new" / "dir"
    json_path, md_path = harness.write_report(str(out), "bench", {"a": [1, 2]}, "| a |\n")
    assert json.loads(pathlib.Path(json_path).read_text()) == {"a": [1, 2]}
    assert pathlib.Path(md_path).read_text() == "| a |\n"
    assert harness.write_report(str(out), "only_json", {"b": 1})[1] is None
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "only_json.json"]
    with pytest.raises(ValueError):  # NaN is no JSON: nothing half-written is left
        harness.write_report(str(out), "nan", {"x": float("nan")})
    assert not (out / "nan.json").exists()


def test_machine_description_names_cpu_cores_and_versions():
    described = harness.describe()
    assert set(described) == {"cpu", "cpus", "platform", "tensorflow", "keras", "devices",
                              "kernels"}
    assert set(described["cpu"]) == {"model", "flags"}
    assert described["kernels"]["onednn"] in (True, False, None)
    assert described["cpus"] == os.cpu_count()
    line = harness.summary_line(described)
    assert described["cpu"]["model"] in line and f"TensorFlow {described['tensorflow']}" in line
    no_flags = {**described, "cpu": {"model": "a CPU", "flags": []}}
    assert "flags: none of avx2" in harness.summary_line(no_flags)
    # Which kernels ran is named; a report from before the record names none.
    for onednn, words in ((True, "(oneDNN kernels)"), (False, "(Eigen kernels)")):
        assert words in harness.summary_line({**described, "kernels": {"onednn": onednn}})
    older = {k: v for k, v in described.items() if k != "kernels"}
    assert "kernels" not in harness.summary_line(older)


def test_launcher_reports_a_failing_exit_code_and_its_log(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    log = tmp_path / "logs" / "fails.log"
    finished = harness.run(harness.python_command(str(script)), str(log))
    assert finished.returncode == 3 and finished.wall_seconds > 0
    assert "about to fail" in finished.log_tail()
    assert len(finished.load_average_before) == 3
    with pytest.raises(RuntimeError, match=r"(?s)exit code 3\).*about to fail"):
        finished.check()
    # A log is appended to on request (a resumed run's).
    harness.run(harness.python_command(str(script)), str(log), append=True)
    assert log.read_text().count("about to fail") == 2


def test_launcher_measures_the_childs_peak_memory(tmp_path):
    script = tmp_path / "allocates.py"
    # Runs from the repository's root, as `python tools/train.py` would; 64 MiB touched.
    script.write_text("import os, sys\nassert os.getcwd() == sys.argv[1]\n"
                      "block = bytearray(64 * 2 ** 20)\n")
    peak = tmp_path / "peak.txt"
    peak.write_text("1e9")  # an earlier run's figure is never read
    finished = harness.run(harness.python_command(str(script), harness.REPO_ROOT),
                           peak_rss_file=str(peak)).check()
    assert 64 < finished.peak_rss_mib < 1e9
    with pytest.raises(ValueError, match="by its path"):
        harness.launch(harness.python_command("benchmarks.hosts"), peak_rss_file=str(peak))


def test_interleaved_rotates_the_order_every_repeat():
    calls = []

    def sample(variant, step):
        calls.append((variant, step))
        return 100.0 * len(calls)

    tasks = [("a", "x"), ("a", "y"), ("b", "x")]
    samples = harness.interleaved(tasks, 3, sample, log=lambda line: None)
    assert calls == tasks + tasks[1:] + tasks[:1] + tasks[2:] + tasks[:2]
    assert samples == {"a": {"x": [100.0, 600.0, 800.0], "y": [200.0, 400.0, 900.0]},
                       "b": {"x": [300.0, 500.0, 700.0]}}
    with pytest.raises(ValueError, match="No task"):
        harness.interleaved([], 3, sample)


def test_paired_ratio_is_the_median_of_ratios_within_a_repeat():
    # Ratios 0.5, 1, 0.25 -> 0.5 (the ratio of the medians would be 100 / 200).
    assert harness.paired_ratio([50.0, 200.0, 100.0], [100.0, 200.0, 400.0]) == 0.5
    with pytest.raises(ValueError, match="3 and 2 samples"):
        harness.paired_ratio([1.0, 2.0, 3.0], [1.0, 2.0])


def test_choice_flags_refuse_an_unknown_value_naming_it():
    values = flags.FlagValues()
    harness.define_choices("steps", ["a"], ["a", "b"], "Steps", flag_values=values)
    values(["prog", "--steps=b,a"])
    assert values.steps == ["b", "a"]
    with pytest.raises(flags.IllegalFlagValueError, match=r"unknown \['zz'\].*--steps=a,zz"):
        values(["prog", "--steps=a,zz"])


# === Every benchmark module ===

def _script_modules():
    """`benchmarks.NAME` of every module of the package, the PyTorch subpackage's included."""
    paths = sorted(BENCHMARKS.glob("*.py")) + sorted((BENCHMARKS / "pytorch").glob("*.py"))
    return [".".join(p.relative_to(BENCHMARKS.parent).with_suffix("").parts)
            for p in paths if p.name != "__init__.py"]


def _source(module):
    return (BENCHMARKS.parent / (module.replace(".", "/") + ".py")).read_text()


COMMON_FLAGS = ("output_dir", "flagfile_path", "extra_flags", "parallel", "only", "repeats",
                "steps", "warmup", "torch_threads")


def test_benchmarks_leave_sys_path_alone_and_define_common_flags_in_one_place():
    modules = _script_modules()
    assert "benchmarks.hosts" in modules and "benchmarks.pytorch.protocol" in modules
    defined = re.compile(r"DEFINE_\w+\(\s*\"(\w+)\"")
    for module in modules + ["benchmarks.pytorch"]:
        source = _source(module) if module != "benchmarks.pytorch" else (
            BENCHMARKS / "pytorch" / "__init__.py").read_text()
        assert "sys.path" not in source, module
        names = set(defined.findall(source))
        if module not in ("benchmarks.harness", "benchmarks.pytorch"):
            assert not names & set(COMMON_FLAGS), (module, names & set(COMMON_FLAGS))
        assert not names & {"out", "extra", "threads"}, (module, names)


# Imports each module in a fresh interpreter, as `python -m` from the root would, and
# defines its flags into absl's FLAGS (then takes them out again for the next one).
_IMPORT_ALL = """
import importlib, json, sys
from absl import flags
before, found = list(sys.path), {}
for name in sys.argv[1:]:
    if name in ("benchmarks.pytorch.authors", "benchmarks.pytorch.fidelity"):
        try:
            import torch
        except ImportError:
            continue
    module = importlib.import_module(name)
    defined = set(flags.FLAGS)
    if hasattr(module, "define_flags"):
        module.define_flags()
    added = sorted(set(flags.FLAGS) - defined)
    found[name] = {"flags": added, "main": hasattr(module, "main")}
    for flag in added:
        delattr(flags.FLAGS, flag)
    assert sys.path == before, (name, sys.path)
print(json.dumps(found))
"""


@pytest.mark.slow  # a fresh process
def test_every_benchmark_imports_as_a_module_and_defines_its_flags():
    modules = _script_modules()
    process = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *modules],
                             capture_output=True, text=True, cwd=harness.REPO_ROOT)
    assert process.returncode == 0, process.stderr[-3000:]
    found = json.loads(process.stdout.strip().splitlines()[-1])
    scripts = {name: f for name, f in found.items() if f["main"]}
    assert "benchmarks.hosts" in scripts and "benchmarks.same_metrics" in scripts
    for name, f in scripts.items():
        if name != "benchmarks.same_metrics":  # positional files only
            assert "output_dir" in f["flags"], name
    assert {"flagfile_path", "extra_flags", "parallel", "runs"} <= set(
        scripts["benchmarks.hosts"]["flags"])
    assert {"output_dir", "host", "learning_rates", "fixed_aggregations",
            "level2_images"} <= set(scripts["benchmarks.aggregation_lr"]["flags"])


@pytest.mark.parametrize("flag, messages", [
    ("--fixed_aggregations=0.5,1.5", ["--fixed_aggregations=1.5 is refused",
                                      "`initial_aggregation` must lie in [0, 1]"]),
    ("--fixed_aggregations=half", ["--fixed_aggregations must be numbers"]),
    ("--learning_rates=-0.1", ["--learning_rates=-0.1 is refused",
                               "`aggregation_lr` must be a positive number"]),
    ("--learning_rates=0.01,0", ["--learning_rates=0 is refused",
                                 "`aggregation_lr` must be a positive number"]),
])
def test_aggregation_lr_refuses_bad_candidates_by_name_before_training(tmp_path, flag, messages):
    out = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.aggregation_lr", flag, f"--output_dir={out}"],
        capture_output=True, text=True, cwd=harness.REPO_ROOT)
    assert process.returncode != 0
    for message in messages:
        assert message in process.stderr + process.stdout
    assert not (out / "phase0").exists()


def test_same_metrics_sets_timings_and_old_loss_names_aside_and_names_what_differs(tmp_path):
    from benchmarks import same_metrics

    def write(name, **phase):
        path = tmp_path / name
        path.write_text(json.dumps({"phases": [{"cnn_accuracy": 70.0, **phase}]}))
        return str(path)

    before = write("before.json", train_seconds=10.0, final_losses={"lf": 0.5, "ce": 1.0})
    after = write("after.json", train_seconds=99.0, final_losses={"less_forget": 0.5, "ce": 1.0})
    assert same_metrics.main(["same_metrics", before, after]) == 0
    changed = write("changed.json", cnn_accuracy=70.5, final_losses={"less_forget": 0.5,
                                                                    "ce": 1.0})
    assert same_metrics.differences(same_metrics.comparable(before),
                                    same_metrics.comparable(changed)) == [
        "phases[0].cnn_accuracy: 70.0 != 70.5"]
    assert same_metrics.main(["same_metrics", before, changed]) == 1


def test_benchmarks_start_quietly_unless_verbosity_is_given(monkeypatch):
    from absl import app, logging

    from tools import console

    started, ran = [], []
    monkeypatch.setattr(console, "start_tensorflow", lambda verbose: started.append(verbose))
    monkeypatch.setattr(app, "run", lambda main: main(["benchmark"]))
    before = logging.get_verbosity()
    try:
        harness.run_main(lambda argv: ran.append((argv, logging.get_verbosity())))
        assert started == [False] and ran == [(["benchmark"], logging.ERROR)]
        logging.set_verbosity(logging.INFO)
        monkeypatch.setattr(flags.FLAGS["verbosity"], "present", 1)
        harness.run_main(lambda argv: ran.append((argv, logging.get_verbosity())))
        assert started == [False, True] and ran[-1][1] == logging.INFO
    finally:
        logging.set_verbosity(before)


@pytest.mark.slow  # reads real CIFAR-10 and builds five networks
def test_step_bench_times_phase_two_under_an_aanet_teacher():
    import numpy as np

    from aanets_tf.models.network import backbone_of
    from benchmarks import throughput

    config = train_config(num_phases=0)
    data, plan = throughput.protocol_data(config)
    bench = throughput.StepBench(config, data, plan, "float32", False)
    assert "level1_aanet_teacher" in bench.supported
    phase2 = bench.learners["level1_aanet_teacher"]
    assert backbone_of(phase2.teacher).is_aanet and backbone_of(phase2.network).is_aanet
    assert phase2.teacher is not bench.learners["level1_aanet"].network
    # Phase 1's AANet still trains (a learner freezes its teacher, not this one).
    phase1 = bench.learners["level1_aanet"]
    before = [v.numpy().copy() for v in phase1.level1_variables()]
    for step in ("level1_aanet", "level1_aanet_teacher"):
        images, seconds = bench.run(step, 1)
        assert images == config.batch_size and seconds > 0
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, phase1.level1_variables()))
    # Two phases (no phase 2): the step is not offered.
    short = train_config(num_phases=2)
    data, plan = throughput.protocol_data(short)
    assert "level1_aanet_teacher" not in throughput.StepBench(
        short, data, plan, "float32", False).supported


def train_config(**overrides):
    from aanets_tf.config import TrainConfig
    from support import SHARED_DATA_DIR

    return TrainConfig(**{**dict(dataset="cifar10", data_dir=SHARED_DATA_DIR, arch="resnet8",
                                 num_base_classes=4, classes_per_phase=2,
                                 train_images_per_class=20, test_images_per_class=10,
                                 batch_size=16, exemplars_per_class=3), **overrides})


def test_the_layout_benchmark_builds_one_network_in_both_layouts():
    import numpy as np

    from benchmarks import layout

    last, first = layout.resnet32("channels_last"), layout.resnet32("channels_first")
    assert last.count_params() == first.count_params() > 460_000  # ResNet-32: 0.46M
    assert last.input_shape == (None, 32, 32, 3) and first.input_shape == (None, 3, 32, 32)
    step = layout.training_step("channels_first", batch_size=4)
    assert np.isfinite(float(step())) and np.isfinite(float(step()))
    summary = {"images_per_second": {"channels_last": 200.0, "channels_first": 120.0},
               "channels_first / channels_last": 0.6}
    assert "NCHW / NHWC, median of the per-repeat ratios: 0.60" in layout.table(
        summary, "m", 128)
