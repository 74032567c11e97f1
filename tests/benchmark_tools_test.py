"""The pure parts of the speed benchmarks: profile summaries, lever ratios, phase costs."""

import json

import pytest

from benchmarks import levers, phase_cost, profile_steps


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
