"""Tests for aanets_tf.reports.reporting."""

import json
import math

import numpy as np
import pytest

from aanets_tf.reports import reporting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _metrics():
    return {
        "dataset": "cifar10",
        "branch_mode": "dual",
        "aggregation": "learned",
        "phases": [
            {"phase": 0, "num_seen_classes": 4, "cnn_accuracy": 81.25, "nme_accuracy": 79.5,
             "old_accuracy": None, "new_accuracy": 81.25, "train_seconds": 12.34,
             "aggregation_weights": None, "aggregation_trajectory": []},
            {"phase": 1, "num_seen_classes": 6, "cnn_accuracy": 66.125,
             "nme_accuracy": 64.0, "old_accuracy": 60.5, "new_accuracy": 77.75,
             "train_seconds": 20.0, "aggregation_weights": [0.512, 0.488, 0.7],
             "aggregation_trajectory": [[0.5, 0.5, 0.5], [0.512, 0.488, 0.7]]},
            {"phase": 2, "num_seen_classes": 8, "cnn_accuracy": 58.0, "nme_accuracy": 59.0,
             "old_accuracy": 55.0, "new_accuracy": 67.0, "train_seconds": 21.5,
             "aggregation_weights": [0.6, 0.4, 0.3]},
        ],
        "average_incremental_accuracy": {"cnn": 68.458, "nme": 67.5},
        "forgetting": {"cnn": 11.75, "nme": None},
    }


def test_clean_converts_numpy_and_non_finite():
    value = {
        "f32": np.float32(1.5), "f64": np.float64(math.nan), "i": np.int64(7),
        "inf": math.inf, "ninf": -np.inf, "arr": np.array([[1, 2], [3, 4]], np.int32),
        "farr": np.array([0.5, np.nan]), "tuple": (np.int8(1), 2.0), "s": "text",
        "none": None, "b": True, "nested": [{"x": np.float16(0.25)}],
        "flag": np.bool_(True),
    }
    out = reporting.clean(value)
    assert out == {"f32": 1.5, "f64": None, "i": 7, "inf": None, "ninf": None,
                   "arr": [[1, 2], [3, 4]], "farr": [0.5, None], "tuple": [1, 2.0],
                   "s": "text", "none": None, "b": True, "nested": [{"x": 0.25}],
                   "flag": True}
    assert type(out["i"]) is int and type(out["f32"]) is float
    assert type(out["arr"][0][0]) is int and type(out["flag"]) is bool
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out


def test_clean_does_not_modify_input():
    value = {"a": [np.float64(math.nan)]}
    reporting.clean(value)
    assert math.isnan(value["a"][0])


def test_write_metrics_writes_strict_json(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    reporting.write_metrics(str(path), {"acc": np.float32(50.0), "f": math.nan,
                                        "row": np.array([1.0, np.inf])})
    assert json.loads(path.read_text()) == {"acc": 50.0, "f": None, "row": [1.0, None]}


@pytest.mark.parametrize("plot", [reporting.plot_accuracy, reporting.plot_aggregation])
def test_plots_are_png_files(tmp_path, plot):
    path = tmp_path / "plots" / "figure.png"
    plot(_metrics(), str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]


def test_aggregation_plot_without_weights(tmp_path):
    metrics = _metrics()
    for p in metrics["phases"]:
        p["aggregation_weights"] = None
        p["aggregation_trajectory"] = []
    path = tmp_path / "aggregation.png"
    reporting.plot_aggregation(metrics, str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_replaces_existing_file(tmp_path):
    path = tmp_path / "accuracy.png"
    path.write_bytes(b"not a png")
    reporting.plot_accuracy(_metrics(), str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_summary_table_contains_the_numbers():
    table = reporting.summary_table(_metrics())
    lines = table.splitlines()
    assert "dataset=cifar10" in lines[0] and "branch_mode=dual" in lines[0]
    assert "aggregation=learned" in lines[0]
    phase_lines = lines[2:5]
    assert phase_lines[0].split()[:7] == ["0", "4", "81.25", "79.50", "-", "81.25", "12.3"]
    assert phase_lines[0].split()[7] == "-"
    assert phase_lines[1].split() == ["1", "6", "66.12", "64.00", "60.50", "77.75", "20.0",
                                      "0.512", "0.488", "0.700"]
    assert phase_lines[2].split()[:7] == ["2", "8", "58.00", "59.00", "55.00", "67.00", "21.5"]
    assert "CNN 68.46" in lines[5] and "NME 67.50" in lines[5]
    assert "CNN 11.75" in lines[6] and "NME -" in lines[6]


def test_summary_table_without_averages():
    metrics = _metrics()
    metrics.pop("average_incremental_accuracy")
    metrics["forgetting"] = None
    table = reporting.summary_table(metrics)
    assert "average incremental accuracy: CNN -  NME -" in table
    assert "forgetting: CNN -  NME -" in table
