r"""The paper's results table from run workdirs: table.md, table.csv, accuracy_per_phase.png.

    python tools/report.py --output_dir=reports/cpu 'runs/cpu_*'
    python tools/report.py --workdirs=runs/cifar100_n5,runs/cifar100_n10 --output_dir=reports/c100

Workdirs come from --workdirs (comma-separated) and/or the positional
arguments; glob patterns are expanded (quote them to let this tool do it, and
then only directories holding a config.json count). Runs are grouped by setting
(dataset, base classes, N, memory rule) and method (host, with or without
AANets); runs that differ only in --seed give a mean and a standard deviation.
The paper's figures stand beside the measured ones where the setting matches.
A run still going is reported with the phases it has finished, marked partial.
Nothing is written into the workdirs.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The tool's flags (idempotent, so tests can import the module more than once)."""
    if "output_dir" in FLAGS:
        return
    flags.DEFINE_list("workdirs", [], "Run workdirs or glob patterns, comma-separated "
                      "(positional arguments are added to them).")
    flags.DEFINE_string("output_dir", None, "Directory for table.md, table.csv and "
                        "accuracy_per_phase.png; must lie outside the workdirs.")


def main(argv) -> int:
    if not FLAGS["verbosity"].present:
        # Matplotlib announces, through absl, the font cache it builds on a first run.
        logging.set_verbosity(logging.WARNING)
    from aanets_tf.reports import results_table, run_records

    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required (where table.md, table.csv and "
                             "accuracy_per_phase.png go). Received: output_dir=None")
    try:
        workdirs = run_records.expand_workdirs(list(FLAGS.workdirs) + list(argv[1:]))
        runs = run_records.read_runs(workdirs)
        paths = results_table.write_report(runs, FLAGS.output_dir)
    except run_records.ReportInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for note in results_table.notes(results_table.group_runs(runs)):
        print(f"note: {note}", file=sys.stderr)
    print(f"Reported {len(runs)} run(s):")
    for path in paths.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
