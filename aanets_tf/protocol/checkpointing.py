"""Checkpoints of a run: one network per finished phase, and the last saved epoch.

Layout under `<workdir>/checkpoints/` (paths: `aanets_tf.workdir.Workdir`):
- `phase_{p}.keras`: the network after phase `p` (a `.keras` archive);
- `phase_{p}.state.json`: exemplar memory and metrics after phase `p`;
- `phase_{p}.epoch_{e}.weights.npz`: the learner after epoch `e` of the phase
  in progress (network, teacher, both optimizers' slots and step counters),
  saved once `checkpoint_seconds` of training have passed since the last save.
  One NumPy array per variable and a manifest of their paths, shapes and
  dtypes: a sixth of the time of Keras' `.weights.h5` (which runs saved
  earlier hold, and which a resume still reads);
- `phase_{p}.epoch.json`: which epoch file is current, with the Level-2
  trajectory and the per-epoch logs so far.

Every file is written under a temporary name and renamed, and the epoch JSON
is written only after the weights it names, so a crash at any instant leaves
a consistent set: a resumed run continues after the last saved epoch.
"""

from __future__ import annotations

import json
import os
import zipfile

import keras
import numpy as np

from aanets_tf import atomic_io
# Imported for their side effect: they register the custom layers that a
# `.keras` checkpoint names (PODNet's head included), so loading works in a
# fresh process.
from aanets_tf.hosts import local_similarity  # noqa: F401
from aanets_tf.models import backbones, network  # noqa: F401
from aanets_tf.workdir import Workdir


class CorruptCheckpointError(RuntimeError):
    """A checkpoint exists but could not be read."""


def save_network(network: keras.Model, workdir: str, phase: int) -> None:
    with atomic_io.staged_path(Workdir(workdir).phase_network(phase), ".keras") as tmp:
        network.save(tmp)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would run Python code when loaded (a Lambda layer)."""


# Objects whose config carries Python bytecode. Keras' safe mode refuses them too, unless
# unsafe deserialization was enabled process-wide.
_CODE_CLASSES = ("Lambda", "__lambda__")


def _code_in_config(config) -> list[str]:
    """Names of the objects in a `.keras` config that carry Python code, depth first."""
    found, stack = [], [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") in _CODE_CLASSES:
                config = node.get("config")
                found.append(str(config.get("name", node["class_name"]))
                             if isinstance(config, dict) else node["class_name"])
                continue  # its function is part of the same finding
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def load_network(path: str) -> keras.Model:
    """Load a phase checkpoint, with a clear error for a truncated, corrupt or unsafe file.

    Checkpoints are loaded with Keras' safe mode on, and their config is read first:
    one holding a Lambda layer (Python bytecode) is refused before Keras sees it, even
    if something in the process called `keras.config.enable_unsafe_deserialization()`
    (which overrides `safe_mode=True`). The project's own networks never hold one.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CorruptCheckpointError(f"Checkpoint {path} is unreadable ({type(e).__name__}: "
                                     f"{str(e)[:200]}).") from e
    code = _code_in_config(config)
    if code:
        raise UnsafeCheckpointError(
            f"Checkpoint {path} holds layers that run Python code when loaded (Lambda "
            f"layers): {code}. Networks of this project have none; it is refused. "
            f"Received: {path}")
    try:
        loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        raise CorruptCheckpointError(f"Checkpoint {path} is unreadable ({type(e).__name__}: "
                                     f"{str(e)[:200]}).") from e
    return network.upgrade_legacy_network(loaded)


# Loss names that runs wrote before they were spelled out (epoch logs, the
# `final_losses` of metrics.json); read under their current names on resume.
RENAMED_LOSSES = {"lf": "less_forget", "mr": "margin_ranking"}


def current_loss_names(losses: dict) -> dict:
    """`losses` with keys written under an earlier name renamed (`RENAMED_LOSSES`)."""
    return {RENAMED_LOSSES.get(k, k): v for k, v in losses.items()}


class EpochState:
    """What a phase in progress needs to continue: epochs done, trajectory, logs."""

    def __init__(self, epochs_done: int = 0, trajectory: list | None = None,
                 history: dict | None = None, train_seconds: float = 0.0,
                 level2_seconds: float = 0.0, checkpoint_seconds: float = 0.0,
                 first_step_seconds: float = 0.0):
        self.epochs_done = epochs_done
        self.trajectory = trajectory if trajectory is not None else []
        self.history = current_loss_names(history or {})
        self.train_seconds = train_seconds
        # Parts of train_seconds: Level 2's passes, saving epoch checkpoints, and each
        # process's first Level-1 step (the step's tracing and the input pipeline's start).
        self.level2_seconds = level2_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.first_step_seconds = first_step_seconds


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the learner and the phase's progress after an epoch: once `every_seconds`
    of training have passed since the last save (0: after every epoch), and after the
    phase's last epoch.

    Place it after the callbacks that change the model at epoch end (the
    Level-2 pass) and after the divergence guard, so a saved epoch is complete
    and finite.

    Args:
        workdir: the run's directory.
        phase: the phase being trained.
        state: the phase's `EpochState`, updated in place (its trajectory list
            is the one the Level-2 callback appends to).
        clock: returns the seconds of training so far in this process.
        level2_clock: returns the part of them spent in Level 2 (None: no Level 2).
        every_seconds: training seconds between two saves (0: every epoch).
        last_epoch: the phase's last epoch (1-based), always saved.
    """

    def __init__(self, workdir: str, phase: int, state: EpochState, clock, level2_clock=None,
                 *, every_seconds: float = 0.0, last_epoch: int | None = None):
        super().__init__()
        self.workdir = workdir
        self.phase = phase
        self.state = state
        self.clock = clock
        self.level2_clock = level2_clock
        self.every_seconds = float(every_seconds)
        self.last_epoch = last_epoch
        self._base_seconds = state.train_seconds
        self._base_level2_seconds = state.level2_seconds
        self._base_checkpoint_seconds = state.checkpoint_seconds
        self._saving = 0.0  # seconds of this process's saves so far
        self._last_save = 0.0  # the clock at the end of the last save

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.state.history.setdefault(key, []).append(float(value))
        self.state.epochs_done = epoch + 1
        now = self.clock()
        self.state.train_seconds = self._base_seconds + now
        if self.level2_clock is not None:
            self.state.level2_seconds = self._base_level2_seconds + self.level2_clock()
        # The saves that ended before now; this one's time counts from the next epoch on.
        self.state.checkpoint_seconds = self._base_checkpoint_seconds + self._saving
        if (now - self._last_save < self.every_seconds
                and self.state.epochs_done != self.last_epoch):
            return
        save_epoch(self.model, self.workdir, self.phase, self.state)
        self._last_save = self.clock()
        self._saving += self._last_save - now


class FirstStepClock(keras.callbacks.Callback):
    """Adds the seconds to the end of `fit`'s first batch (`clock`: the seconds of
    training so far in this process) to `state.first_step_seconds`: the Level-1
    step's tracing, the input pipeline's start and one step."""

    def __init__(self, state: EpochState, clock):
        super().__init__()
        self.state = state
        self.clock = clock
        self._done = False

    def on_train_batch_end(self, batch, logs=None):
        if not self._done:
            self._done = True
            self.state.first_step_seconds += self.clock()


def epoch_variables(learner: keras.Model) -> list:
    """What an epoch checkpoint holds, in a fixed order: the learner's weights (its
    networks, the teacher included), then the variables of its optimizers (Level 1's
    and, where it has one, Level 2's: slots and step counters)."""
    found, seen = [], set()
    optimizers = [getattr(learner, name, None) for name in ("optimizer", "level2_optimizer")]
    for variable in list(learner.weights) + [
            v for opt in optimizers if opt is not None for v in opt.variables]:
        if id(variable) not in seen:
            seen.add(id(variable))
            found.append(variable)
    return found


_MANIFEST = "manifest"


def _write_epoch_arrays(learner: keras.Model, path: str) -> None:
    variables = epoch_variables(learner)
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
    manifest = [[v.path, list(a.shape), str(a.dtype)]
                for v, a in zip(variables, arrays.values())]
    with open(path, "wb") as f:
        np.savez(f, **arrays, **{_MANIFEST: np.array(json.dumps(manifest))})
        f.flush()
        os.fsync(f.fileno())


def _read_epoch_arrays(learner: keras.Model, path: str) -> None:
    """Assign the arrays of `path` to `learner`'s epoch variables; refuses a file saved
    from another learner (another count, shape or dtype of its variables), naming the
    first difference, before assigning any. Variables are matched by position: their
    paths (kept in the manifest to read) hold Keras' auto-numbered names, which depend
    on what a process built before."""
    variables = epoch_variables(learner)
    with np.load(path, allow_pickle=False) as saved:
        manifest = json.loads(str(saved[_MANIFEST]))
        if len(manifest) != len(variables):
            raise ValueError(f"{path} holds {len(manifest)} variables; this learner has "
                             f"{len(variables)}.")
        arrays = []
        for i, (variable, (name, shape, dtype)) in enumerate(zip(variables, manifest)):
            here = [list(variable.shape), str(np.dtype(variable.dtype))]
            if here != [shape, dtype]:
                raise ValueError(f"Variable {i} of {path} is {name} {shape} {dtype}; this "
                                 f"learner's is {variable.path} {here[0]} {here[1]}.")
            arrays.append(saved[f"v{i:05d}"])
    for variable, array in zip(variables, arrays):
        variable.assign(array)


def save_epoch(learner: keras.Model, workdir: str, phase: int, state: EpochState) -> None:
    weights = Workdir(workdir).epoch_weights(phase, state.epochs_done)
    with atomic_io.staged_path(weights) as tmp:
        _write_epoch_arrays(learner, tmp)
    atomic_io.write_json(Workdir(workdir).epoch_state(phase), {
        "phase": phase,
        "epochs_done": state.epochs_done,
        "weights": os.path.basename(weights),
        "trajectory": state.trajectory,
        "history": state.history,
        "train_seconds": state.train_seconds,
        "level2_seconds": state.level2_seconds,
        "checkpoint_seconds": state.checkpoint_seconds,
        "first_step_seconds": state.first_step_seconds,
    })
    for old in Workdir(workdir).epoch_weight_files(phase):
        if os.path.basename(old) != os.path.basename(weights):
            os.remove(old)


def restore_epoch(learner: keras.Model, workdir: str, phase: int,
                  log=print) -> EpochState:
    """Load the last saved epoch of `phase` into `learner` (built, optimizers built).

    Returns a fresh `EpochState` when there is none or it is unreadable (the
    phase then restarts from its first epoch).
    """
    path = Workdir(workdir).epoch_state(phase)
    if not os.path.exists(path):
        return EpochState()
    try:
        with open(path) as f:
            saved = json.load(f)
        weights = os.path.join(Workdir(workdir).checkpoints, saved["weights"])
        if weights.endswith(".h5"):  # saved before the .npz format
            learner.load_weights(weights)
        else:
            _read_epoch_arrays(learner, weights)
        state = EpochState(int(saved["epochs_done"]), saved["trajectory"], saved["history"],
                           float(saved["train_seconds"]),
                           float(saved.get("level2_seconds", 0.0)),
                           float(saved.get("checkpoint_seconds", 0.0)),
                           float(saved.get("first_step_seconds", 0.0)))
    except Exception as e:  # noqa: BLE001 - any failure: restart the phase
        log(f"Epoch checkpoint of phase {phase} is unreadable ({type(e).__name__}: "
            f"{str(e)[:200]}); restarting the phase from its first epoch.")
        return EpochState()
    log(f"Resuming phase {phase} after epoch {state.epochs_done}.")
    return state


def clear_epochs(workdir: str, phase: int) -> None:
    """Remove a finished phase's epoch checkpoints."""
    for path in Workdir(workdir).epoch_files(phase):
        os.remove(path)

