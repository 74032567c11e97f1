"""Tests for aanets_tf.reports.results_table and tools/report.py, on hand-written workdirs."""

import csv
import io
import json
import math
import os

import pytest
from absl import app, flags
from absl.testing import flagsaver

from aanets_tf.reports import paper_results, results_table as rt, run_records
from aanets_tf.reports.paper_results import PaperNumber
from aanets_tf.reports.run_records import Method, ReportInputError, Setting
from support import write_run_workdir
from tools import report

FLAGS = flags.FLAGS
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# CIFAR-100 as the paper runs it with N=5: 50 base classes, then 5 phases of 10.
C100_N5 = dict(dataset="cifar100", num_classes=100, num_base_classes=50, classes_per_phase=10)

report.define_flags()


def _cpu(tmp_path, name, cnn, nme=None, **config):
    """A CPU-protocol run (CIFAR-10, 4 base classes, 3 phases of 2) in tmp_path/name."""
    return write_run_workdir(tmp_path / name, cnn, nme, **config)


def _groups(*workdirs):
    return rt.group_runs(run_records.read_runs(list(workdirs)))


def _snapshot(*workdirs):
    """Every file of the workdirs with its bytes (to prove nothing was written there)."""
    files = {}
    for w in workdirs:
        for root, _, names in os.walk(w):
            for n in names:
                path = os.path.join(root, n)
                with open(path, "rb") as f:
                    files[path] = f.read()
    return files


# === Reading a run ===

@pytest.mark.parametrize("config, label", [
    ({}, "LUCIR w/ AANets"),
    ({"aggregation_bound": None}, "LUCIR w/ AANets (alpha clipped to [0, 1])"),
    ({"aggregation_bound": 0.1}, "LUCIR w/ AANets (alpha in [0.1, 0.9])"),
    ({"level2_images": "held_out"}, "LUCIR w/ AANets (Level 2 on held-out images)"),
    ({"aggregation": "fixed", "aggregation_bound": 0.0}, "LUCIR w/ AANets (fixed aggregation)"),
])
def test_how_alpha_is_learned_labels_the_method(tmp_path, config, label):
    written = write_run_workdir(tmp_path / "run", [80, 60, 50, 40], **config)
    if config.get("aggregation_bound", 0) is None:  # a run from before the setting existed
        path = os.path.join(written, "config.json")
        with open(path) as f:
            older = {k: v for k, v in json.load(f).items() if k != "aggregation_bound"}
        with open(path, "w") as f:
            json.dump(older, f)
    method = run_records.read_run(written).method
    assert method.label == label
    assert method.is_paper_method == (config.get("aggregation") != "fixed")


def test_bad_aggregation_bound_is_named(tmp_path):
    written = write_run_workdir(tmp_path / "run", [80, 60, 50, 40], aggregation_bound="wide")
    with pytest.raises(run_records.ReportInputError, match="aggregation_bound='wide'"):
        run_records.read_run(written)


def test_read_run_places_setting_method_and_phases(tmp_path):
    run = run_records.read_run(_cpu(tmp_path, "a", [80, 60, 50, 40], [81, 62, 52, 44],
                           forgetting={"cnn": 30.0, "nme": None}))
    assert run.setting == Setting("CIFAR-10", 10, 4, 3, "20 per class")
    assert run.method == Method("lucir", True, "learned", "scaled", 0.05, "seen")  # no host
    assert not run.partial and run.planned_phases == 4
    assert run.average("cnn") == pytest.approx(57.5)
    assert run.average("nme") == pytest.approx(59.75)
    assert run.forgetting("cnn") == 30.0 and math.isnan(run.forgetting("nme"))


def test_host_and_ablations_name_the_row(tmp_path):
    labels = [run_records.read_run(_cpu(tmp_path, str(i), [50], **cfg)).method.label for i, cfg in
              enumerate([dict(host="icarl", branch_mode="single"),
                         dict(host="podnet"),
                         dict(aggregation="fixed"),
                         dict(stable_block="plastic", aggregation="fixed")])]
    assert labels == ["iCaRL", "PODNet w/ AANets", "LUCIR w/ AANets (fixed aggregation)",
                      "LUCIR w/ AANets (two plastic blocks, fixed aggregation)"]


def test_single_branch_ignores_aggregation_settings(tmp_path):
    # The baseline has no aggregation weights: their settings neither name nor split it.
    a = _cpu(tmp_path, "a", [50, 40, 30, 20], branch_mode="single", aggregation="fixed")
    b = _cpu(tmp_path, "b", [60, 50, 40, 30], branch_mode="single", seed=1994,
             aggregation_lr=0.5)
    (group,) = _groups(a, b)
    assert group.method == Method("lucir", False) and group.variant == ""


def test_fixed_aggregation_ignores_how_a_learned_alpha_is_learned(tmp_path):
    # Fixed weights run no Level 2: its settings, or a run from before one existed, do not
    # split the row; the fixed value itself does.
    a = _cpu(tmp_path, "a", [50, 40, 30, 20], aggregation="fixed", aggregation_bound=0.0)
    b = _cpu(tmp_path, "b", [60, 50, 40, 30], aggregation="fixed", seed=1994,
             aggregation_bound=0.05, aggregation_lr=0.5, level2_images="held_out")
    (group,) = _groups(a, b)
    assert group.variant == "" and len(group.runs) == 2
    c = _cpu(tmp_path, "c", [60, 50, 40, 30], aggregation="fixed", seed=1995,
             initial_aggregation=0.7)
    assert len(_groups(a, b, c)) == 2
    learned = [_cpu(tmp_path, n, [50, 40, 30, 20], seed=s, aggregation_lr=lr)
               for n, s, lr in (("d", 1993, 0.003), ("e", 1994, 0.03))]
    assert len(_groups(*learned)) == 2


def test_setting_reads_memory_rule_subset_and_imagenet_subset(tmp_path):
    fixed = run_records.read_run(write_run_workdir(tmp_path / "f", [70] * 6, memory_budget=2000,
                                          **C100_N5))
    assert fixed.setting == Setting("CIFAR-100", 100, 50, 5, "2000 in all")
    subset = run_records.read_run(write_run_workdir(tmp_path / "s", [70] * 6, dataset="imagenet2012",
                                           num_classes=100, num_base_classes=50,
                                           classes_per_phase=10))
    assert subset.setting.dataset == "ImageNet-Subset"
    # num_phases cuts the run short of what the class split allows: N follows it.
    short = run_records.read_run(_cpu(tmp_path, "n", [70, 60], num_phases=2))
    assert short.setting.num_phases == 1 and not short.partial


# === Grouping, mean and standard deviation ===

def test_seeds_of_one_setting_and_method_form_a_group(tmp_path):
    dual = [_cpu(tmp_path, f"d{s}", cnn, seed=s)
            for s, cnn in [(1993, [80, 60, 50, 50]), (1994, [90, 70, 60, 60])]]
    single = _cpu(tmp_path, "s", [80, 50, 40, 30], branch_mode="single")
    groups = _groups(*dual, single)
    assert [(g.method.label, g.seeds) for g in groups] == [
        ("LUCIR", [1993]), ("LUCIR w/ AANets", [1993, 1994])]
    mean, std, n = groups[1].stat("cnn")
    # Averages 60 and 70: mean 65, sample std sqrt(2 * 5**2 / 1).
    assert (mean, n) == (65.0, 2) and std == pytest.approx(math.sqrt(50))
    assert groups[0].stat("cnn") == (50.0, None, 1)


def test_other_settings_split_a_row_and_name_the_difference(tmp_path):
    a = _cpu(tmp_path, "a", [80, 60, 50, 50], epochs=20)
    b = _cpu(tmp_path, "b", [80, 60, 50, 50], epochs=20, seed=1994, workdir="elsewhere",
             data_dir="/data")  # where a run lives does not split it
    c = _cpu(tmp_path, "c", [70, 50, 40, 40], epochs=5)
    groups = _groups(a, b, c)
    assert sorted((g.variant, len(g.runs)) for g in groups) == [("epochs=20", 2),
                                                                ("epochs=5", 1)]


def test_per_phase_mean_and_spread(tmp_path):
    a = _cpu(tmp_path, "a", [80, 60, 50, 40])
    b = _cpu(tmp_path, "b", [90, 70, 50, 30], seed=1994)
    seen, mean, std = _groups(a, b)[0].per_phase("cnn")
    assert seen.tolist() == [4, 6, 8, 10]
    assert mean.tolist() == [85, 65, 50, 35]
    assert std == pytest.approx([math.sqrt(50), math.sqrt(50), 0, math.sqrt(50)])


def test_partial_run_is_its_own_group_and_marked(tmp_path):
    done = _cpu(tmp_path, "done", [80, 60, 50, 40])
    going = _cpu(tmp_path, "going", [82, 61], seed=1994)
    groups = _groups(done, going)
    assert [(g.partial, g.phases_completed, g.planned_phases) for g in groups] == [
        (False, 4, 4), (True, 2, 4)]
    assert groups[1].row_label == "LUCIR w/ AANets (partial: 2 of 4 phases)"
    assert groups[1].stat("cnn")[0] == pytest.approx(71.5)  # over the phases it finished


def test_partial_group_has_no_paper_figure_beside_it(tmp_path):
    # An average over the first phases is not comparable with the paper's over all six.
    done = write_run_workdir(tmp_path / "done", [70] * 6, **C100_N5)
    going = write_run_workdir(tmp_path / "going", [80, 70], seed=1994, **C100_N5)
    assert [g.paper() for g in _groups(done, going)] == [PaperNumber(66.74, "cnn"), None]


def test_notes_name_partial_runs_and_repeated_seeds(tmp_path):
    a = _cpu(tmp_path, "a", [80, 60, 50, 40])
    rerun = _cpu(tmp_path, "rerun", [82, 62, 52, 42])  # seed 1993 again
    going = _cpu(tmp_path, "going", [70])
    notes = rt.notes(_groups(a, rerun, going))
    assert notes == [
        "CIFAR-10 N=3 LUCIR w/ AANets: seed(s) [1993] ran more than once, so its spread is "
        "partly run-to-run noise rather than class orders.",
        f"{going} is unfinished: 1 of 4 phases; reported as partial."]


def test_mean_std_skips_missing_values():
    assert rt.mean_std([1.0, None, math.nan, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert rt.mean_std([None]) == (None, None, 0)


# === The paper's numbers ===

@pytest.mark.parametrize("setting, method, expected", [
    (Setting("CIFAR-100", 100, 50, 5, "2000 in all"), Method("lucir", True, "learned", "scaled"),
     PaperNumber(66.74, "cnn")),
    (Setting("CIFAR-100", 100, 50, 25, "20 per class"), Method("lucir", False),
     PaperNumber(57.54, "cnn")),
    (Setting("ImageNet-Subset", 100, 50, 10, "20 per class"),
     Method("podnet", True, "learned", "scaled"), PaperNumber(75.58, "cnn")),
    (Setting("ImageNet", 1000, 500, 25, "20 per class"), Method("icarl", False),
     PaperNumber(43.14, "nme")),
    # No figure: the CPU protocol, another N, base split or memory, an ablation,
    # and iCaRL w/ AANets (not in SPEC section 6).
    (Setting("CIFAR-10", 10, 4, 3, "20 per class"), Method("lucir", False), None),
    (Setting("CIFAR-100", 100, 50, 3, "20 per class"), Method("lucir", False), None),
    (Setting("CIFAR-100", 100, 40, 5, "20 per class"), Method("lucir", False), None),
    (Setting("CIFAR-100", 100, 50, 5, "5 per class"), Method("lucir", False), None),
    (Setting("CIFAR-100", 100, 50, 5, "20 per class"), Method("lucir", True, "fixed", "scaled"),
     None),
    (Setting("CIFAR-100", 100, 50, 5, "20 per class"), Method("icarl", True, "learned",
                                                              "scaled"), None),
])
def test_paper_number_lookup(setting, method, expected):
    assert paper_results.paper_number(setting, method) == expected


def test_paper_table_is_complete():
    # 3 datasets x (3 hosts without AANets + LUCIR and PODNet with) x N = 5 / 10 / 25.
    assert len(paper_results.PAPER_NUMBERS) == 15
    assert all(sorted(row) == [5, 10, 25] for row in paper_results.PAPER_NUMBERS.values())


# === CSV and markdown ===

def _paper_setting_runs(tmp_path):
    """CIFAR-100 N=5: LUCIR w/ AANets over two seeds, LUCIR over one."""
    return [write_run_workdir(tmp_path / "aa1", [80, 70, 60, 60, 50, 40], seed=1993,
                              forgetting={"cnn": 20.0, "nme": 10.0}, **C100_N5),
            write_run_workdir(tmp_path / "aa2", [80, 76, 66, 64, 60, 50], seed=1994,
                              forgetting={"cnn": 24.0, "nme": 12.0}, **C100_N5),
            write_run_workdir(tmp_path / "lu", [80, 60, 50, 50, 40, 30], branch_mode="single",
                              forgetting={"cnn": 30.0, "nme": 15.0}, **C100_N5)]


def test_csv_has_one_row_per_group_with_numbers(tmp_path):
    rows = list(csv.DictReader(io.StringIO(rt.csv_table(_groups(*_paper_setting_runs(
        tmp_path))))))
    assert [r["method"] for r in rows] == ["LUCIR", "LUCIR w/ AANets"]
    lucir, aanets = rows
    assert aanets["seeds"] == "1993;1994" and aanets["runs"] == "2"
    assert float(aanets["cnn_mean"]) == pytest.approx(63.0)  # averages 60 and 66
    assert float(aanets["cnn_std"]) == pytest.approx(math.sqrt(18), abs=1e-6)
    assert float(aanets["forgetting_cnn_mean"]) == 22.0
    assert (aanets["paper"], aanets["paper_classifier"]) == ("66.74", "cnn")
    assert (lucir["paper"], lucir["cnn_std"], lucir["partial"]) == ("63.17", "", "False")
    assert lucir["num_phases"] == "5" and lucir["memory"] == "20 per class"


def test_markdown_rows_cells_and_gain(tmp_path):
    text = rt.markdown_table(_groups(*_paper_setting_runs(tmp_path)))
    assert "## CIFAR-100: 100 classes, 50 in phase 0, memory 20 per class" in text
    assert ("| method | N=5 runs | N=5 CNN | N=5 NME | N=5 forgetting | N=5 paper |"
            in text)
    assert "| LUCIR | 1 | 51.67 | 51.67 | 30.00 | 63.17 |" in text
    assert "| LUCIR w/ AANets | 2 | 63.00 ± 4.24 | 63.00 ± 4.24 | 22.00 ± 2.83 | 66.74 |" in text
    # With minus without AANets, measured and in the paper (66.74 - 63.17): over the
    # class orders both rows ran (1993: 60.00 - 51.67), not the two rows' means (+11.33).
    assert "| *AANets gain, LUCIR* | 1 | +8.33 | +8.33 | -10.00 | +3.57 |" in text


def test_markdown_marks_missing_paper_numbers_and_partial_rows(tmp_path):
    done = _cpu(tmp_path, "done", [80, 60, 50, 40], host="icarl", branch_mode="single")
    going = _cpu(tmp_path, "going", [82, 61], host="icarl", branch_mode="single", seed=1994)
    text = rt.markdown_table(_groups(done, going))
    assert "| iCaRL | 1 | 57.50 | 57.50 | — | — |" in text
    assert "| iCaRL (partial: 2 of 4 phases) | 1 | 71.50 | 71.50 | — | — |" in text
    assert "AANets gain" not in text  # no with-AANets row to compare with


# === Bad input ===

def test_errors_name_every_bad_workdir(tmp_path):
    good = _cpu(tmp_path, "good", [50])
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()
    (no_metrics / "config.json").write_text("{}")
    corrupt = _cpu(tmp_path, "corrupt", [50])
    with open(os.path.join(corrupt, "metrics.json"), "w") as f:
        f.write('{"phases": [')
    with pytest.raises(ReportInputError) as e:
        run_records.read_runs([good, str(no_metrics), corrupt, str(tmp_path / "missing"),
                      str(tmp_path)])
    message = str(e.value)
    assert f"{no_metrics}: no metrics.json" in message
    assert f"{corrupt}/metrics.json: not valid JSON" in message and "line 1" in message
    assert f"{tmp_path / 'missing'}: no such directory" in message
    assert f"{tmp_path}: no config.json" in message
    assert f"{good}:" not in message


@pytest.mark.parametrize("change, expected", [
    (dict(host="gem"), "host='gem'"),
    (dict(branch_mode="triple"), "branch_mode='triple'"),
    (dict(stable_block="frozen"), "stable_block='frozen'"),
    (dict(memory_budget="2000"), "memory_budget must be an integer. Received: "
                                 "memory_budget='2000'"),
    (dict(seed=None), "seed=None"),
    (dict(dataset=""), "dataset=''"),
])
def test_unknown_setting_values_are_named(tmp_path, change, expected):
    with pytest.raises(ReportInputError, match=expected):
        run_records.read_run(_cpu(tmp_path, "a", [50], **change))


@pytest.mark.parametrize("metrics, expected", [
    ({"phases": [], "class_order": [0, 1]}, "no phase evaluated yet"),
    ({"phases": "none"}, "'phases' must be a list"),
    ({"phases": [{"cnn_accuracy": 5, "num_seen_classes": 4}]}, "has no 'nme_accuracy'"),
    ({"phases": [{"cnn_accuracy": "high", "nme_accuracy": 1, "num_seen_classes": 4}]},
     "cnn_accuracy='high'"),
    ({"phases": [{"cnn_accuracy": 5, "nme_accuracy": 1, "num_seen_classes": 4}]},
     "no class_order"),
    ([1, 2], "must hold a JSON object"),
])
def test_malformed_metrics_are_refused(tmp_path, metrics, expected):
    workdir = _cpu(tmp_path, "a", [50])
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    with pytest.raises(ReportInputError, match=expected):
        run_records.read_run(workdir)


def test_expand_workdirs_globs_skip_non_runs_and_deduplicate(tmp_path):
    a, b = _cpu(tmp_path, "run_a", [50]), _cpu(tmp_path, "run_b", [50])
    (tmp_path / "run_notes").mkdir()
    assert run_records.expand_workdirs([str(tmp_path / "run_*"), a]) == [a, b]
    with pytest.raises(ReportInputError, match="matches the pattern"):
        run_records.expand_workdirs([str(tmp_path / "nothing_*")])
    with pytest.raises(ReportInputError, match="No workdir given"):
        run_records.expand_workdirs([])


def test_report_is_never_written_into_a_workdir(tmp_path):
    workdir = _cpu(tmp_path, "a", [50, 40])
    with pytest.raises(ReportInputError, match="outside the workdirs"):
        rt.write_report(run_records.read_runs([workdir]), os.path.join(workdir, "report"))
    assert not os.path.exists(os.path.join(workdir, "report"))


# === tools/report.py ===

def _report(*args):
    """Run tools/report.py's main in this process on `args` (flags, then workdirs)."""
    with flagsaver.flagsaver():
        return report.main(FLAGS(["report.py", *args]))


def test_tool_writes_the_three_files_and_leaves_workdirs_alone(tmp_path, capsys):
    dual = _cpu(tmp_path, "dual", [80, 60, 50, 40])
    single = _cpu(tmp_path, "single", [80, 55, 45, 30], branch_mode="single")
    before = _snapshot(dual, single)
    out = tmp_path / "report"
    assert _report(f"--output_dir={out}", f"--workdirs={dual}", str(tmp_path / "sing*")) == 0
    assert sorted(os.listdir(out)) == ["accuracy_per_phase.png", "table.csv", "table.md"]
    table = (out / "table.md").read_text()
    assert "| LUCIR | 1 | 52.50 |" in table and "| LUCIR w/ AANets | 1 | 57.50 |" in table
    assert "| *AANets gain, LUCIR* | 1 | +5.00 |" in table
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert [r["workdirs"] for r in rows] == [single, dual]
    assert (out / "accuracy_per_phase.png").read_bytes().startswith(PNG_MAGIC)
    assert _snapshot(dual, single) == before
    assert "Reported 2 run(s)" in capsys.readouterr().out


def test_tool_reports_partial_runs_and_refuses_bad_ones(tmp_path, capsys):
    going = _cpu(tmp_path, "going", [80, 60])
    assert _report(f"--output_dir={tmp_path / 'r1'}", going) == 0
    assert "is unfinished: 2 of 4 phases" in capsys.readouterr().err
    broken = _cpu(tmp_path, "broken", [50])
    os.remove(os.path.join(broken, "metrics.json"))
    assert _report(f"--output_dir={tmp_path / 'r2'}", going, broken) == 2
    assert f"{broken}: no metrics.json" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "r2")


def test_tool_needs_an_output_dir(tmp_path):
    with pytest.raises(app.UsageError, match="--output_dir is required"):
        _report(_cpu(tmp_path, "a", [50]))
