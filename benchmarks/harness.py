"""What the benchmarks share: their common flags, the machine, memory, subprocesses,
step timing and the report files.

- Flags: one spelling each. `--output_dir` (where a benchmark writes its report),
  `--flagfile_path` (the protocol every `tools/train.py` run of a benchmark
  shares), `--extra_flags` (more train.py flags for every run), `--parallel`
  (runs at a time), `--only` (which parts to run), and `--repeats`, `--steps`,
  `--warmup` of step timing. A list flag with a fixed set of values
  (`define_choices`) refuses an unknown value at parsing, naming it.
- The machine: speeds differ several-fold between the CPUs this project runs on
  (AVX2-only AMD EPYC, AVX-512 / AMX Intel Xeon), so every benchmark records
  `describe()` beside its figures, and claims are ratios measured within one run.
- Subprocesses: `launch` / `run` start `tools/train.py`, a benchmark module or
  a tool from the repository's root, their output into a log, and time them;
  with `peak_rss_file` the child writes its own peak resident memory at exit
  (a parent's `RUSAGE_CHILDREN` would count the parent's memory at fork).
- Step timing: `interleaved` times every task once a repeat in a rotating
  order; `paired_ratio` compares two tasks within each repeat.
- Reports: `write_report` writes `<name>.json` and `<name>.md` atomically;
  `markdown_table` is the table they hold; `write_figure` saves a plot.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from absl import flags

from aanets_tf import atomic_io
from aanets_tf.cpu import FEATURES_OF_INTEREST as FLAGS_OF_INTEREST
from aanets_tf.cpu import cpu_info, tensorflow_kernels

FLAGS = flags.FLAGS
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO_ROOT, "tools", "train.py")
# The TFDS datasets the machines share, beside the repository.
SHARED_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")
DEFAULT_PROTOCOL = os.path.join("flags", "cifar10_cpu.flags")
# The flags this module defines belong to the benchmark that asks for them (its --helpshort).
flags.disclaim_key_flags()


# === Common flags ===

def define_output_dir(default: str | None, what: str = "the report") -> None:
    """`--output_dir`: where the benchmark writes `what`."""
    flags.DEFINE_string("output_dir", default, f"Output directory: {what}.")


def define_flagfile_path(default: str = DEFAULT_PROTOCOL) -> None:
    """`--flagfile_path`: the flagfile every `tools/train.py` run of the benchmark shares."""
    flags.DEFINE_string("flagfile_path", default,
                        "Flagfile of the protocol every tools/train.py run shares.")


def define_extra_flags() -> None:
    """`--extra_flags`: more `tools/train.py` flags for every run."""
    flags.DEFINE_list("extra_flags", [], "More tools/train.py flags for every run, "
                      "comma-separated, e.g. --extra_flags=--epochs=2,--stem=per_branch.")


def define_parallel(default: int, what: str = "Runs at a time.") -> None:
    """`--parallel`: how many subprocesses run at once (at least 1)."""
    flags.DEFINE_integer("parallel", default, what, lower_bound=1)


def define_timing_flags(*, steps: bool = True) -> None:
    """`--repeats` of a step benchmark and, with `steps`, `--steps` and `--warmup`."""
    flags.DEFINE_integer("repeats", 5, "Timed repeats (medians are reported).", lower_bound=1)
    if steps:
        flags.DEFINE_integer("steps", 3, "Steps per timed repeat.", lower_bound=1)
        flags.DEFINE_integer("warmup", 2, "Untimed calls per step before timing (tracing, "
                                          "compilation, caches).", lower_bound=0)


def define_choices(name: str, default: Sequence[str], choices: Sequence[str], what: str,
                   flag_values: flags.FlagValues = FLAGS) -> None:
    """A list flag whose values come from `choices`; an unknown one fails the parsing."""
    choices = list(choices)
    flags.DEFINE_list(name, list(default), f"{what}, from {', '.join(choices)}.",
                      flag_values=flag_values)

    def check(values: list[str]) -> bool:
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise flags.ValidationError(
                f"--{name}: unknown {unknown}; choose from {choices}. "
                f"Received: --{name}={','.join(values)}")
        return True

    flags.register_validator(name, check, flag_values=flag_values)


def define_only(choices: Sequence[str], what: str, default: Sequence[str] | None = None
                ) -> None:
    """`--only`: the parts of the benchmark to run (default: all of `choices`)."""
    define_choices("only", choices if default is None else default, choices, what)


def run_main(main) -> None:
    """`app.run(main)` with a quiet start, as `tools/train.py` has: absl logs errors only
    (TFDS logs INFO lines at every dataset it opens) and TensorFlow starts without its
    native start-up lines; `--verbosity` leaves both on."""
    from absl import app, logging

    from tools import console

    def quiet(argv):
        verbose = flags.FLAGS["verbosity"].present
        if not verbose:
            logging.set_verbosity(logging.ERROR)
        console.start_tensorflow(verbose=verbose)
        return main(argv)

    app.run(quiet)


# === The machine ===

def describe() -> dict:
    """CPU, core count, platform and framework versions, for a benchmark's report."""
    from tools import console

    console.start_tensorflow()  # quietly: no CUDA probing lines on a CPU machine
    import keras
    import tensorflow as tf

    return {"cpu": cpu_info(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "tensorflow": tf.__version__, "keras": keras.__version__,
            "devices": [d.name for d in tf.config.list_logical_devices()],
            "kernels": tensorflow_kernels()}


def summary_line(described: dict) -> str:
    """One line of `describe()`'s answer: CPU model, cores, its flags, the versions."""
    cpu = described["cpu"]
    return (f"{cpu['model']} ({described['cpus']} cores; flags: "
            f"{', '.join(cpu['flags']) or 'none of ' + ', '.join(FLAGS_OF_INTEREST)}), "
            f"TensorFlow {described['tensorflow']}{_kernels_words(described)}, "
            f"Keras {described['keras']}")


def _kernels_words(described: dict) -> str:
    """' (oneDNN kernels)' or ' (Eigen kernels)'; nothing where a report predates the
    record or TensorFlow did not say."""
    onednn = (described.get("kernels") or {}).get("onednn")
    return "" if onednn is None else (" (oneDNN kernels)" if onednn else " (Eigen kernels)")


# === CPU time of timed steps ===

# What a step worker reports per request, summed per step by its parent.
USAGE_KEYS = ("images", "user", "system", "minor_faults")


def usage_between(before, after) -> dict:
    """User and system CPU seconds and minor page faults between two `getrusage` results."""
    return {"user": after.ru_utime - before.ru_utime,
            "system": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt}


def add_usage(totals: dict, step: str, reply: dict) -> None:
    """Add a worker's reply (`USAGE_KEYS`) to `totals[step]`."""
    usage = totals.setdefault(step, dict.fromkeys(USAGE_KEYS, 0.0))
    for key in USAGE_KEYS:
        usage[key] += reply[key]


def per_image(usage: dict) -> dict:
    """CPU milliseconds, the system share of them and minor faults, per image of a step."""
    cpu = usage["user"] + usage["system"]
    return {"cpu_ms_per_image": 1000 * cpu / usage["images"],
            "system_share": usage["system"] / cpu if cpu else 0.0,
            "minor_faults_per_image": usage["minor_faults"] / usage["images"]}


# === Memory ===

def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB."""
    try:  # Linux: the high-water mark of this program's own memory map.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 2 ** 20 if sys.platform == "darwin" else 2 ** 10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def write_peak_rss(path: str) -> None:
    """Write `peak_rss_mib()` to `path` (what a measured subprocess does at exit)."""
    atomic_io.write_text(path, str(peak_rss_mib()))


# === Subprocesses ===

def python_command(program: str, *args: str) -> list[str]:
    """This Python running `program`: a script's path (`tools/train.py`) or a module's
    name (`benchmarks.pytorch.protocol`)."""
    if program.endswith(".py"):
        return [sys.executable, program, *args]
    return [sys.executable, "-m", program, *args]


def train_command(*args: str) -> list[str]:
    """`tools/train.py` with `args`."""
    return python_command(TRAIN, *args)


def write_flagfile(config, directory: str, header: str) -> str:
    """`config` as `directory/protocol.flags` (what a benchmark's subprocesses read);
    its path."""
    from tools import train_flags

    path = os.path.join(directory, "protocol.flags")
    with open(path, "w") as f:
        f.write(train_flags.config_to_flagfile(config, header))
    return path


def with_absolute_data_dir(config):
    """`config` with its TFDS data directory made absolute: subprocesses run from the
    repository's root."""
    if config.data_dir and config.dataset != "folder":
        return config.replace(data_dir=os.path.abspath(config.data_dir))
    return config


# Runs a script (sys.argv[2:]) and writes its peak resident memory to sys.argv[1] at exit.
_MEASURED = """
import atexit, runpy, sys
from benchmarks import harness
atexit.register(harness.write_peak_rss, sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclasses.dataclass
class Finished:
    """A subprocess run to its end: its exit code, wall time, log and the machine's load."""

    command: list[str]
    returncode: int
    wall_seconds: float
    log: str | None
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]
    peak_rss_mib: float | None = None

    def log_tail(self, chars: int = 3000) -> str:
        """The last `chars` characters of the log ('' without one)."""
        if not self.log or not os.path.exists(self.log):
            return ""
        with open(self.log, errors="replace") as f:
            return f.read()[-chars:]

    def check(self) -> Finished:
        """Itself, when the process exited with 0.

        Raises:
            RuntimeError: naming the command, its exit code and the end of its log.
        """
        if self.returncode:
            raise RuntimeError(f"{' '.join(self.command)} failed (exit code "
                               f"{self.returncode}); the end of {self.log}:\n"
                               f"{self.log_tail()}")
        return self


class Launched:
    """A subprocess started by `launch`; `wait()` gives its `Finished`."""

    def __init__(self, command: list[str], log: str | None, append: bool,
                 peak_rss_file: str | None):
        self.command, self.log, self.peak_rss_file = list(command), log, peak_rss_file
        argv = self.command
        if peak_rss_file is not None:
            if len(argv) < 2 or argv[0] != sys.executable or not argv[1].endswith(".py"):
                raise ValueError("Peak memory is measured for a Python script run by its "
                                 f"path (python_command). Received: command={argv}")
            if os.path.exists(peak_rss_file):
                os.remove(peak_rss_file)  # never read an earlier run's figure
            argv = [sys.executable, "-c", _MEASURED, os.path.abspath(peak_rss_file), *argv[1:]]
        self._out = None
        if log is not None:
            os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
            self._out = open(log, "a" if append else "w")
        self._load_before = os.getloadavg()
        self._start = time.perf_counter()
        self.process = subprocess.Popen(argv, stdout=self._out,
                                        stderr=subprocess.STDOUT if log else None,
                                        cwd=REPO_ROOT)

    def wait(self) -> Finished:
        code = self.process.wait()
        wall = time.perf_counter() - self._start
        if self._out is not None:
            self._out.close()
        peak = None
        if self.peak_rss_file is not None and os.path.exists(self.peak_rss_file):
            with open(self.peak_rss_file) as f:
                peak = float(f.read())
        return Finished(self.command, code, wall, self.log, self._load_before,
                        os.getloadavg(), peak)


def launch(command: list[str], log: str | None = None, *, append: bool = False,
           peak_rss_file: str | None = None) -> Launched:
    """Start `command` from the repository's root.

    Args:
        command: the argv, e.g. from `train_command` or `python_command`.
        log: the file its standard output and error go to (None: this process's).
        append: add to `log` instead of replacing it (a resumed run's log).
        peak_rss_file: where the child writes its peak resident memory (MiB) at exit;
            `command` must then run a Python script by its path.
    """
    return Launched(command, log, append, peak_rss_file)


def run(command: list[str], log: str | None = None, *, append: bool = False,
        peak_rss_file: str | None = None) -> Finished:
    """`launch(...)`, waited for."""
    return launch(command, log, append=append, peak_rss_file=peak_rss_file).wait()


# === Step timing ===

def interleaved(tasks: Sequence[tuple[str, str]], repeats: int,
                sample: Callable[[str, str], float],
                log: Callable[[str], None] = print) -> dict[str, dict[str, list[float]]]:
    """`{a: {b: [a sample per repeat]}}` of every task `(a, b)` (e.g. variant and step).

    Every task is sampled once a repeat; each repeat starts one task later than the
    one before, so that load from other work on the machine, and each task's effect
    on the next, fall on every task alike: compare samples within a repeat
    (`paired_ratio`).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("No task to time. Received: tasks=[]")
    samples: dict[str, dict[str, list[float]]] = {}
    for a, b in tasks:
        samples.setdefault(a, {})[b] = []
    for r in range(repeats):
        shift = r % len(tasks)
        for a, b in tasks[shift:] + tasks[:shift]:
            samples[a][b].append(sample(a, b))
        log(f"repeat {r + 1}/{repeats}: " + ", ".join(
            f"{a} {b} {samples[a][b][-1]:.0f}" for a, b in tasks))
    return samples


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """The median over repeats of `numerators[i] / denominators[i]`: two tasks timed
    moments apart, under the same load, compared within each repeat."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"Ratios pair samples of the same repeats. Received: "
                         f"{len(numerators)} and {len(denominators)} samples.")
    return statistics.median(float(n) / float(d) for n, d in zip(numerators, denominators))


# === Reports ===

def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A Markdown table: the header, its rule, a line per row (cells as `str`); ends in a
    newline.

    Raises:
        ValueError: a row whose cell count differs from the header's.
    """
    width = len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * width]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"A row has {len(row)} cells, the header {width}. "
                             f"Received: row={list(row)!r}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def write_figure(figure, path: str) -> None:
    """Save a Matplotlib figure to `path` (PNG, 120 dpi) atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_io.staged_path(path, ".png") as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def write_report(output_dir: str, name: str, report: dict, markdown: str | None = None
                 ) -> tuple[str, str | None]:
    """Write `<output_dir>/<name>.json` and, given `markdown`, `<name>.md`, each atomically.

    Returns:
        `(json path, markdown path or None)`.
    """
    json_path = os.path.join(output_dir, f"{name}.json")
    atomic_io.write_json(json_path, report)
    if markdown is None:
        return json_path, None
    markdown_path = os.path.join(output_dir, f"{name}.md")
    atomic_io.write_text(markdown_path, markdown)
    return json_path, markdown_path
