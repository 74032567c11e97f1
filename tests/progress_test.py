"""Tests for aanets_tf.training.progress: one bar per phase, with the phase's and the run's
time left."""

import io

import keras
import numpy as np

from aanets_tf.training.progress import PhaseProgress, _duration


def test_duration_format():
    assert _duration(5) == "0:05"
    assert _duration(125.4) == "2:05"
    assert _duration(3 * 3600 + 61) == "3:01:01"


def test_one_bar_over_every_epoch_with_the_run_estimate():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    out = io.StringIO()
    # Epoch 2 of 3 resumed: the bar starts at 4 of 12 steps. Later phases hold
    # twice this phase's images, so the run estimate is about 3x the phase's.
    bar = PhaseProgress(1, epochs=3, first_epoch=1, steps_per_epoch=4, later_images=200,
                        phase_images=100, file=out)
    model.fit(x, y, batch_size=2, epochs=3, initial_epoch=1, verbose=0, callbacks=[bar])
    text = out.getvalue()
    assert "phase 1" in text
    assert "12/12" in text and "4/12" in text
    assert "run left=~" in text
    assert "loss=" in text
    # The run's estimate comes before the loss (a narrow terminal cuts the end).
    assert text.rindex("run left=~") < text.rindex("loss=")
    assert bar._bar.n == 12
