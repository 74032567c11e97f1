"""One progress bar per phase, with the time left in the phase and an estimate for the run."""

from __future__ import annotations

import shutil
import sys
import time

import keras
from tqdm.auto import tqdm


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class PhaseProgress(keras.callbacks.Callback):
    """A tqdm bar over a phase's Level-1 steps (every epoch), for `fit(verbose=0)`.

    The bar shows the phase's steps, its time left (tqdm's own estimate), the
    last loss, and an estimate for the whole run: the phases after this one
    are assumed to cost what this one is projected to cost, scaled by their
    share of training images (`later_images / phase_images`). Level 2, herding,
    evaluation and export are not in the bar; their time shows in the next
    phase's projection only through this assumption, so the run's estimate is
    rough and marked `~`.

    Args:
        phase: the phase's index (for the bar's label).
        epochs, first_epoch, steps_per_epoch: the fit call's schedule.
        later_images: training images of the phases after this one, summed
            (0 on the last phase).
        phase_images: this phase's training images.
    """

    def __init__(self, phase: int, *, epochs: int, first_epoch: int, steps_per_epoch: int,
                 later_images: int = 0, phase_images: int = 1, file=None):
        super().__init__()
        self.phase = phase
        self.total = epochs * steps_per_epoch
        self.done_before = first_epoch * steps_per_epoch
        self.later_share = later_images / max(phase_images, 1)
        self.file = file or sys.stderr
        self._bar = None
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        # A pseudo-terminal may report a 0 x 0 size, where tqdm hides its bar
        # (it would lie below the last row); shutil falls back to $COLUMNS/$LINES
        # or 80 x 24.
        size = shutil.get_terminal_size()
        self._bar = tqdm(total=self.total, initial=self.done_before, unit="step",
                         desc=f"phase {self.phase}", file=self.file, ncols=size.columns,
                         nrows=size.lines, leave=True)

    def on_train_batch_end(self, batch, logs=None):
        self._bar.update(1)
        steps = self._bar.n - self.done_before
        if steps <= 0:
            return
        elapsed = time.perf_counter() - self._start
        phase_seconds = elapsed / steps * (self.total - self.done_before)
        # The run's estimate first: a narrow terminal cuts the line's end.
        postfix = {}
        if self.later_share:
            left = phase_seconds - elapsed + phase_seconds * self.later_share
            postfix["run left"] = f"~{_duration(left)}"
        if logs and "loss" in logs:
            postfix["loss"] = f"{float(logs['loss']):.3f}"
        self._bar.set_postfix(postfix, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        if logs and "level2_loss" in logs:
            self._bar.set_postfix_str(
                f"{self._bar.postfix}, level2 {float(logs['level2_loss']):.3f}", refresh=True)

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()
