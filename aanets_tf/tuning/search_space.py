"""The search-space text of `tools/tune.py --search`, parsed into KerasTuner hyper-parameters.

    learning_rate=log:0.01:0.5,lambda_base=1:10,top_k=int:1:4,margin=choice:0.3|0.5|0.7

Each entry names a searchable `TrainConfig` field and a range (linear, `log:`
or `int:`, with an optional step) or a list of choices. `parse_search` checks
every entry against the trials' configuration at once and reports all
problems together. See `docs/tuning.md` for the syntax.
"""

from __future__ import annotations

import dataclasses
import difflib
import math

import keras_tuner

from aanets_tf.config import TrainConfig

# `TrainConfig` fields a search may vary. The rest (data, protocol, budget) is
# fixed by the training flags: changing them changes the task, not the method.
SEARCHABLE = ("learning_rate", "aggregation_lr", "lambda_base", "margin", "top_k",
              "weight_decay", "initial_aggregation", "momentum", "aggregation_momentum",
              "lr_decay_factor")
DEFAULT_SEARCH = ("learning_rate=log:0.01:0.5,aggregation_lr=log:0.0001:1,lambda_base=1:10,"
                  "margin=0.1:0.7,top_k=int:1:4,weight_decay=log:0.00001:0.001,"
                  "initial_aggregation=0.2:0.8")
class SearchSpaceError(ValueError):
    """The search-space text is malformed or names something that cannot be searched."""



@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched `TrainConfig` field: a range `[low, high]` or a list of choices.

    `integer` follows the field's type (`top_k` is an integer, the rest are
    real numbers). `sampling` is `"linear"` or `"log"` (log-uniform).
    """
    name: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    sampling: str = "linear"
    choices: tuple = ()
    integer: bool = False

    def values_to_check(self) -> tuple:
        """Values that must each give a valid `TrainConfig`."""
        return self.choices or (self.low, self.high)

    def spec(self) -> str:
        """The dimension in `--search` syntax (canonical form)."""
        if self.choices:
            return f"{self.name}=choice:" + "|".join(fmt(v) for v in self.choices)
        prefix = "log:" if self.sampling == "log" else ("int:" if self.integer else "")
        step = f":{fmt(self.step)}" if self.step is not None else ""
        return f"{self.name}={prefix}{fmt(self.low)}:{fmt(self.high)}{step}"

    def declare(self, hp: keras_tuner.HyperParameters, default=None) -> None:
        """Register the dimension in `hp`; `default` is used when it lies in the space."""
        if self.choices:
            hp.Choice(self.name, list(self.choices),
                      default=default if default in self.choices else None)
            return
        if not (self.low <= default <= self.high) or (
                self.step is not None and not _on_grid(default, self.low, self.step)):
            default = None
        if self.integer:
            hp.Int(self.name, int(self.low), int(self.high),
                   step=None if self.step is None else int(self.step),
                   sampling=self.sampling, default=default)
        else:
            hp.Float(self.name, float(self.low), float(self.high), step=self.step,
                     sampling=self.sampling, default=default)


def fmt(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _on_grid(value, low, step) -> bool:
    k = (value - low) / step
    return abs(k - round(k)) < 1e-9


_FIELD_DEFAULTS = TrainConfig()


def _is_integer_field(name: str) -> bool:
    value = getattr(_FIELD_DEFAULTS, name)
    return isinstance(value, int) and not isinstance(value, bool)


def _number(text: str, integer: bool):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if integer:
        if not value.is_integer():
            raise ValueError(f"{text!r} is not an integer")
        return int(value)
    return value


def _parse_entry(entry: str) -> Dimension:
    """One `NAME=SPEC` entry; raises ValueError with a message that starts with the entry."""
    def fail(reason: str):
        raise ValueError(f"{entry!r}: {reason}")

    name, sep, spec = entry.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        fail("expected NAME=SPEC, e.g. learning_rate=log:0.01:0.5")
    if name not in SEARCHABLE:
        if name in _FIELD_DEFAULTS.to_dict():
            fail(f"--{name} is a training flag but not a searchable hyper-parameter; set it "
                 f"with --{name}=VALUE. Searchable: {', '.join(SEARCHABLE)}")
        close = difflib.get_close_matches(name, SEARCHABLE, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        fail(f"unknown hyper-parameter {name!r}{hint}. Searchable: {', '.join(SEARCHABLE)}")
    integer = _is_integer_field(name)
    parts = [p.strip() for p in spec.split(":")]

    def number(text: str):
        try:
            return _number(text, integer)
        except ValueError as e:
            fail(str(e))

    if parts[0] == "choice":
        if len(parts) != 2 or not parts[1]:
            fail(f"choice takes values separated by '|', e.g. {name}=choice:1|2|4")
        values = tuple(dict.fromkeys(number(v.strip()) for v in parts[1].split("|")))
        if len(values) < 2:
            fail(f"choice needs at least two different values (to fix {name}, "
                 f"set --{name}={fmt(values[0])} instead)")
        return Dimension(name, choices=values, integer=integer)
    sampling = "linear"
    if parts[0] in ("log", "linear", "int"):
        prefix = parts.pop(0)
        if prefix == "int" and not integer:
            fail(f"'int:' is for integer hyper-parameters; {name} takes real values")
        sampling = "log" if prefix == "log" else "linear"
    elif parts[0][:1].isalpha() and parts[0].lower() not in ("inf", "nan"):
        fail(f"unknown kind {parts[0]!r}; use log:, int: or choice:")
    if len(parts) not in (2, 3):
        fail("expected [log:|int:]LOW:HIGH[:STEP] or choice:A|B|...")
    low, high = number(parts[0]), number(parts[1])
    step = number(parts[2]) if len(parts) == 3 else None
    if low >= high:
        fail(f"empty range: the low end {fmt(low)} must be below the high end {fmt(high)}")
    if sampling == "log" and low <= 0:
        fail(f"log sampling needs a positive low end. Received: {fmt(low)}")
    if step is not None:
        if sampling == "log":
            fail("a step is only allowed for linear ranges")
        if step <= 0 or step > high - low:
            fail(f"the step must lie in (0, high - low]. Received: step={fmt(step)}")
    return Dimension(name, low, high, step, sampling, integer=integer)


def _has_no_effect(name: str, config: TrainConfig) -> str | None:
    """Why searching `name` cannot change a run of `config`, or None."""
    if name in ("aggregation_lr", "aggregation_momentum", "initial_aggregation"):
        if config.branch_mode != "dual":
            return f"branch_mode={config.branch_mode} has no aggregation weights"
        if name != "initial_aggregation" and config.aggregation != "learned":
            return f"aggregation={config.aggregation} does not train the aggregation weights"
    if name in ("lambda_base", "margin", "top_k", "aggregation_lr", "aggregation_momentum",
                "initial_aggregation") and config.num_phases == 1:
        return "only phase 0 runs (num_phases=1), which does not use it"
    return None


def parse_search(text: str, config: TrainConfig) -> tuple[Dimension, ...]:
    """Parse `--search` text into dimensions, checked against the trials' `config`.

    Every problem is collected into one `SearchSpaceError` that names each bad
    entry: malformed text, an unknown or unsearchable name, a name given twice,
    an empty range, a value the training flags refuse (e.g. an
    `initial_aggregation` above 1), or a hyper-parameter `config` never uses.
    """
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise SearchSpaceError(f"--search names no hyper-parameter. Received: --search={text!r}. "
                               f"Searchable: {', '.join(SEARCHABLE)}")
    problems, dims, seen = [], [], set()
    for entry in entries:
        try:
            dim = _parse_entry(entry)
        except ValueError as e:
            problems.append(str(e))
            continue
        if dim.name in seen:
            problems.append(f"{entry!r}: {dim.name} is searched twice")
            continue
        seen.add(dim.name)
        reason = _has_no_effect(dim.name, config)
        if reason:
            problems.append(f"{entry!r}: searching {dim.name} has no effect: {reason}")
        for value in dim.values_to_check():
            try:
                config.replace(**{dim.name: value})
            except ValueError as e:
                detail = str(e).split("\n", 1)[-1].strip()
                problems.append(f"{entry!r}: {detail}")
        dims.append(dim)
    if problems:
        raise SearchSpaceError("Invalid --search:\n  " + "\n  ".join(problems))
    return tuple(dims)


def build_hyperparameters(dims: tuple[Dimension, ...],
                          config: TrainConfig) -> keras_tuner.HyperParameters:
    """The KerasTuner search space; each default is `config`'s value when inside the space."""
    hp = keras_tuner.HyperParameters()
    for dim in dims:
        dim.declare(hp, default=getattr(config, dim.name))
    return hp


def _typed(name: str, value):
    return int(value) if _is_integer_field(name) else float(value)


def tuned_values(values: dict) -> dict:
    """The searched `TrainConfig` fields among a trial's values (no `tuner/...` entries)."""
    return {k: _typed(k, v) for k, v in values.items() if k in SEARCHABLE}
