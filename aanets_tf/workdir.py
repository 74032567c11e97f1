"""A run's directory: every path and file name in it, in one place.

    <workdir>/
      config.json              the run's settings (TrainConfig)
      metrics.json             results so far (rewritten after every phase)
      growth.json              grows from image folders (growing runs only)
      checkpoints/
        phase_{p}.keras        the network after phase p
        phase_{p}.state.json   exemplar memory and metrics after phase p
        phase_{p}.epoch.json   the last finished epoch of the phase in progress
        phase_{p}.epoch_{e}.weights.npz  the learner after that epoch (.weights.h5
                                         in runs saved before the .npz format)
      exemplars/phase_{p}.tfrecord   the exemplars phase p chose
      data_index/              the checked image index of the streamed data
      tensorboard/phase_{p}/   training curves
      plots/                   accuracy.png, aggregation.png
      export/<model_name>/<v>/ SavedModel versions (unless `export_dir` is set)
      .lock                    held while a run trains here (who holds it: pid, host, start)

Framework-free: tools and reports use it before TensorFlow starts.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import glob
import os
import socket

CONFIG = "config.json"
METRICS = "metrics.json"
GROWTH = "growth.json"
# What starting a run over (`overwrite`) removes: everything but the config
# (rewritten), the data index (a cache of the data, not of the run) and exports.
RUN_OUTPUTS = ("checkpoints", "exemplars", "tensorboard", "plots", METRICS, GROWTH)
LOCK = ".lock"


class WorkdirInUseError(RuntimeError):
    """Another process is running in the workdir."""


class Workdir:
    """The paths of one run's directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.fspath(root)

    def __repr__(self) -> str:
        return f"Workdir({self.root!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Workdir) and (
            os.path.abspath(self.root) == os.path.abspath(other.root))

    def __hash__(self) -> int:
        return hash(os.path.abspath(self.root))

    def path(self, *names: str) -> str:
        return os.path.join(self.root, *names)

    @property
    def config(self) -> str:
        return self.path(CONFIG)

    @property
    def metrics(self) -> str:
        return self.path(METRICS)

    @property
    def growth(self) -> str:
        return self.path(GROWTH)

    @property
    def checkpoints(self) -> str:
        return self.path("checkpoints")

    @property
    def data_index(self) -> str:
        return self.path("data_index")

    def plot(self, name: str) -> str:
        return self.path("plots", name)

    def tensorboard(self, phase: int) -> str:
        return self.path("tensorboard", f"phase_{phase}")

    def exemplars(self, phase: int) -> str:
        return self.path("exemplars", f"phase_{phase}.tfrecord")

    def phase_network(self, phase: int) -> str:
        return os.path.join(self.checkpoints, f"phase_{phase}.keras")

    def phase_state(self, phase: int) -> str:
        return os.path.join(self.checkpoints, f"phase_{phase}.state.json")

    def epoch_state(self, phase: int) -> str:
        return os.path.join(self.checkpoints, f"phase_{phase}.epoch.json")

    def epoch_weights(self, phase: int, epoch: int) -> str:
        return os.path.join(self.checkpoints, f"phase_{phase}.epoch_{epoch}.weights.npz")

    def epoch_weight_files(self, phase: int) -> list[str]:
        """Every epoch weights file of `phase` on disk (`.weights.h5`: an earlier format)."""
        return sorted(path for ext in ("npz", "h5") for path in glob.glob(
            os.path.join(glob.escape(self.checkpoints), f"phase_{phase}.epoch_*.weights.{ext}")))

    def epoch_files(self, phase: int) -> list[str]:
        """Every epoch file of `phase` on disk (weights and the epoch state)."""
        return glob.glob(os.path.join(glob.escape(self.checkpoints), f"phase_{phase}.epoch*"))

    def completed_phases(self) -> list[int]:
        """Phases with a network checkpoint, ascending."""
        directory = self.checkpoints
        names = os.listdir(directory) if os.path.isdir(directory) else []
        stems = [n[len("phase_"):-len(".keras")] for n in names
                 if n.startswith("phase_") and n.endswith(".keras")]
        return sorted(int(s) for s in stems if s.isdigit())

    def export_root(self, export_dir: str | None = None) -> str:
        """Where SavedModels go: `export_dir` when set, else `<workdir>/export`."""
        return export_dir or self.path("export")

    def holds_run(self) -> bool:
        return os.path.isfile(self.config)

    @contextlib.contextmanager
    def lock(self):
        """Hold the workdir for one run: a second run here is refused, naming the first.

        An advisory `flock` on `<workdir>/.lock`: the kernel releases it when the process
        ends, however it ends, so a killed run never leaves the workdir locked (its
        `.lock` file stays, unlocked, and the next run takes it). The file is removed
        when the run ends; a run that opened it just before is caught by comparing
        inodes, so two runs never both hold the lock.
        """
        os.makedirs(self.root, exist_ok=True)
        path = self.path(LOCK)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise WorkdirInUseError(
                    f"workdir={self.root} is in use by another run ({holder or 'holder unknown'})"
                    f". Wait for it to end, or use another `workdir`.") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed by the run that held it: take the new file
        try:
            started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n"
                     .encode())
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            os.close(fd)
