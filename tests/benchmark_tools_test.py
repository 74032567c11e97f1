"""The pure parts of the speed benchmarks: profile summaries, lever ratios, phase costs."""

import json

import pytest

from benchmarks import fixed_costs, levers, phase_cost, profile_steps, protocol_time


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


def test_fixed_costs_are_shares_of_an_epoch_and_of_a_phase():
    from aanets_tf.config import TrainConfig

    costs = {"level1_step": 0.5, "level1_epoch": 4.5, "phase1_steps_per_epoch": 9,
             "epoch_checkpoint": 0.45, "trace_level1": 9.0, "trace_level2": 1.0,
             "trace_predict": 1.5, "predict_call_setup": 0.3}
    markdown = fixed_costs.table(costs, TrainConfig(epochs=20))
    assert "| epoch checkpoint (every epoch) | 0.450 | 10.0% of an epoch |" in markdown
    assert "| tracing the Level-1 step (once a phase) | 9.000 | 10.0% of 20 epochs |" in markdown


def test_hosts_grid_knows_a_finished_run_from_a_partial_one(tmp_path):
    from benchmarks import hosts
    from support import write_run_workdir

    # The CPU protocol plans phase 0 and three more (10 classes: 4 + 3 x 2).
    assert hosts.finished(write_run_workdir(tmp_path / "done", [70, 50, 40, 30]))
    assert not hosts.finished(write_run_workdir(tmp_path / "partial", [70, 50]))
    assert not hosts.finished(str(tmp_path / "missing"))
    # A run set to fewer phases (a phase-0 run) is finished when it has them.
    assert hosts.finished(write_run_workdir(tmp_path / "phase0", [70], num_phases=1))


def test_hosts_grid_shares_phase0_within_a_family():
    from benchmarks import hosts

    assert hosts.PHASE0_FAMILIES["lucir"] == hosts.PHASE0_FAMILIES["icarl"]
    assert hosts.PHASE0_FAMILIES["podnet"] != hosts.PHASE0_FAMILIES["lucir"]
    # The grid's families agree with the hosts' own (`Host.phase0`).
    from aanets_tf.config import TrainConfig
    from aanets_tf.hosts import host_for

    for host, family in hosts.PHASE0_FAMILIES.items():
        assert host_for(TrainConfig(host=host)).phase0 == family
