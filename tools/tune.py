r"""Search AANets hyper-parameters with KerasTuner, scored on a validation split.

    python tools/tune.py --flagfile=flags/cifar10_cpu.flags --validation_images_per_class=50 \
        --search=learning_rate=log:0.01:0.5,lambda_base=1:10,top_k=int:1:4 \
        --tuner=bayesian --max_trials=20 --trial_num_phases=3 --trial_epochs=5
    python tools/train.py --flagfile=runs/tuning/aanets/best.flags

Each trial is a class-incremental run (the training flags, reduced by the
--trial_* flags, with the trial's values) scored by its average incremental
accuracy on the last --validation_images_per_class training images of each
class; the test split is never read. Writes into <directory>/<project_name>:
best.flags (the training flags with the best values, for tools/train.py),
trials.csv and trials.json (every trial and its objective), tuning.json and
KerasTuner's own state. Rerun with the same --directory and --project_name to
continue the search. Distributed (chief and workers): see docs/tuning.md.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402

from tools import console, train_flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The training flags of `tools/train.py` plus the search's own (idempotent)."""
    # The search's flags name KerasTuner's choices, and KerasTuner imports TensorFlow:
    # start it quietly first, unless the command line asks for its logs.
    console.start_tensorflow(verbose=console.verbosity_requested(sys.argv))
    from aanets_tf.tuning.search_space import DEFAULT_SEARCH, SEARCHABLE
    from aanets_tf.tuning.tuning import OBJECTIVE_KINDS, TUNERS

    train_flags.define_flags()
    if "search" in FLAGS:
        return
    flags.DEFINE_string(
        "search", DEFAULT_SEARCH,
        "Hyper-parameters to search and their ranges: comma-separated NAME=SPEC, where SPEC "
        "is LOW:HIGH[:STEP] (uniform), log:LOW:HIGH (log-uniform), int:LOW:HIGH (integers) "
        f"or choice:A|B|C. Searchable: {', '.join(SEARCHABLE)}. Every other setting comes "
        "from the training flags.")
    flags.DEFINE_enum("tuner", "random", TUNERS,
                      "Search algorithm: random search, Bayesian optimisation (needs "
                      "scikit-learn) or Hyperband (its budget is --epochs per phase).")
    flags.DEFINE_integer("max_trials", 10, "Trials to run in all (a rerun continues up to it).")
    flags.DEFINE_string("directory", "runs/tuning", "Directory of the tuning projects.")
    flags.DEFINE_string("project_name", "aanets", "Project under --directory: the search's "
                        "state, trials and outputs.")
    flags.DEFINE_enum("objective_kind", "cnn", OBJECTIVE_KINDS,
                      "Maximise the validation average incremental accuracy of the CNN "
                      "(cosine classifier) or of NME (nearest mean of exemplars).")
    flags.DEFINE_integer("trial_num_phases", 0,
                         "Phases of each trial, phase 0 included (0 = --num_phases).")
    flags.DEFINE_integer("trial_epochs", 0, "Epochs per phase of each trial (0 = --epochs); "
                         "Hyperband's largest budget.")
    flags.DEFINE_integer("trial_train_images_per_class", 0,
                         "Training images per class of each trial (0 = "
                         "--train_images_per_class).")
    flags.DEFINE_integer("hyperband_factor", 3, "Hyperband's reduction factor.")
    flags.DEFINE_integer("num_initial_points", 0, "Random trials before Bayesian optimisation "
                         "fits its model (0 = KerasTuner's default, 3 per hyper-parameter).")
    flags.DEFINE_string("best_flagfile", None,
                        "Where to write the best flagfile (default: "
                        "<directory>/<project_name>/best.flags).")


def _settings():
    """Validated settings from the flags; raises app.UsageError naming the bad flag."""
    from aanets_tf.tuning import search_space, tuning

    try:
        config = train_flags.config_from_flags()
    except ValueError as e:
        raise app.UsageError(train_flags.as_flag_names(str(e))) from None
    try:
        tuning.check_validation_split(config.validation_images_per_class)
    except ValueError as e:
        raise app.UsageError(train_flags.as_flag_names(str(e))) from None
    for name in ("trial_num_phases", "trial_epochs", "trial_train_images_per_class",
                 "num_initial_points"):
        if FLAGS[name].value < 0:
            raise app.UsageError(f"--{name} must be >= 0. Received: {FLAGS[name].value}")
    if FLAGS.max_trials < 1:
        raise app.UsageError(f"--max_trials must be >= 1. Received: {FLAGS.max_trials}")
    if FLAGS.hyperband_factor < 2:
        raise app.UsageError(f"--hyperband_factor must be >= 2. Received: "
                             f"{FLAGS.hyperband_factor}")
    try:
        base = tuning.reduced_config(config, num_phases=FLAGS.trial_num_phases,
                                     epochs=FLAGS.trial_epochs,
                                     train_images_per_class=FLAGS.trial_train_images_per_class)
        dims = search_space.parse_search(FLAGS.search, base)
    except ValueError as e:
        raise app.UsageError(train_flags.as_flag_names(str(e))) from None
    return config, base, dims


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config, base, dims = _settings()
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    console.start_tensorflow(verbose=FLAGS["verbosity"].present)

    from aanets_tf import atomic_io
    from aanets_tf.data import datasets
    from aanets_tf.tuning import search_space, tuning

    try:
        oracle = tuning.build_oracle(
            FLAGS.tuner, search_space.build_hyperparameters(dims, base), FLAGS.objective_kind,
            max_trials=FLAGS.max_trials, seed=config.seed, max_epochs=base.epochs,
            hyperband_factor=FLAGS.hyperband_factor, num_initial_points=FLAGS.num_initial_points)
    except (ImportError, ValueError) as e:
        raise app.UsageError(train_flags.as_flag_names(str(e))) from None
    worker, chief = tuning.is_worker(), tuning.is_chief()
    project_dir = os.path.join(FLAGS.directory, FLAGS.project_name)
    record = tuning.search_record(FLAGS.tuner, FLAGS.objective_kind, dims, base,
                                  hyperband_factor=FLAGS.hyperband_factor)
    # Workers neither own nor reset the project: the chief does.
    overwrite = FLAGS.overwrite and not worker
    if not worker and not overwrite:
        try:
            tuning.check_search_record(project_dir, record)
        except tuning.SearchConflictError as e:
            print(f"error: {train_flags.as_flag_names(str(e))}", file=sys.stderr)
            return 2

    data = None
    if not chief:  # The chief only serves the oracle and never needs the data.
        try:
            data = tuning.load_tuning_data(
                base.dataset, base.data_dir, download=base.download,
                train_images_per_class=base.train_images_per_class,
                validation_images_per_class=base.validation_images_per_class)
        except (datasets.DatasetNotFoundError, ValueError) as e:
            print(f"error: {train_flags.as_flag_names(str(e))}", file=sys.stderr)
            return 2

    tuner = tuning.IncrementalTuner(oracle, base, data=data,
                                    verbose=1 if sys.stdout.isatty() else 2,
                                    directory=FLAGS.directory, project_name=FLAGS.project_name,
                                    overwrite=overwrite)
    if not worker:
        tuning.write_search_record(project_dir, record)
    try:
        tuner.search()
    except RuntimeError as e:  # KerasTuner gives up after consecutive failed trials.
        if worker:
            raise
        tuning.write_trials_table(tuner.oracle, project_dir)
        print(f"error: the search stopped: {e}", file=sys.stderr)
        return 1
    if worker:
        print(f"Worker {tuner.tuner_id} done: the chief writes the results to {project_dir}.")
        return 0

    csv_path, _ = tuning.write_trials_table(tuner.oracle, project_dir)
    best = tuning.best_trial(tuner.oracle)
    if best is None:
        print(f"error: no trial completed; see {csv_path}.", file=sys.stderr)
        return 1
    values = search_space.tuned_values(best.hyperparameters.values)
    final = tuning.final_config(config, values)
    path = FLAGS.best_flagfile or os.path.join(project_dir, "best.flags")
    described = ", ".join(f"{k}={v}" for k, v in values.items())
    header = (f"Best of the trials in {project_dir} (trial {best.trial_id}): "
              f"{tuner.oracle.objective.name} = {best.score:.2f}\n"
              f"Tuned: {described}\n"
              f"Validation images are back in training; accuracy is measured on the test split.\n"
              f"  python tools/train.py --flagfile={path}")
    atomic_io.write_text(path, train_flags.config_to_flagfile(final, header))
    print(f"\nBest trial {best.trial_id}: {tuner.oracle.objective.name} = {best.score:.2f} "
          f"({described})")
    print(f"Trials: {csv_path}\nBest flagfile: {path}\n"
          f"Train with it: python tools/train.py --flagfile={path}")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
