"""Compiled steps keep fixed signatures: no retracing per batch, per epoch or per call.

Every epoch below ends with a short batch, and evaluation sets have sizes
that are not multiples of the batch size; each step function must still be
traced exactly once (Python code in a `tf.function` runs only when it traces).
With XLA on, the steps must compute what they compute without it.
"""

import collections
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.data import pipeline
from aanets_tf.data.sources import ArraySource
from aanets_tf.protocol import phase
from aanets_tf.training.learner import AggregationCallback
from support import phase1_learner

INPUT_SHAPE = (8, 8, 3)
BATCH = 8
NUM_IMAGES = 20  # 2 full batches and a short one of 4 per epoch
EPOCHS = 3


def _counting(fn, counts, key):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        counts[key] += 1
        return fn(*args, **kwargs)
    return wrapper


def _phase1_learner(jit_compile):
    return phase1_learner(INPUT_SHAPE, less_forget_weight=1.0, level2_learning_rate=0.1,
                          learning_rate=0.01, momentum=0.0, jit_compile=jit_compile)


def test_each_step_function_traces_once():
    # XLA (`jit_compile=True`) uses the same functions; compiling them for
    # every shape here would take minutes on a CPU, so the XLA test below
    # checks one step of each level instead.
    learner = _phase1_learner(jit_compile=False)
    counts = collections.Counter()
    learner.train_step = _counting(learner.train_step, counts, "level1")
    learner._level2_replica_step = _counting(learner._level2_replica_step, counts, "level2")
    network = learner.network
    network.predict_step = _counting(network.predict_step, counts, "eval")

    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=(NUM_IMAGES,) + INPUT_SHAPE).astype("uint8")
    labels = np.arange(NUM_IMAGES) % 4
    source = ArraySource(images, labels)
    parts = [pipeline.Part(source, np.arange(NUM_IMAGES), labels)]
    transform = pipeline.ImageTransform("cifar", INPUT_SHAPE[0])
    steps = pipeline.steps_per_epoch(NUM_IMAGES, BATCH)
    trajectory = []
    history = learner.fit(
        pipeline.train_dataset(parts, BATCH, seed=0, epochs=EPOCHS, transform=transform),
        epochs=EPOCHS, steps_per_epoch=steps, verbose=0, shuffle=False,
        callbacks=[AggregationCallback(
            pipeline.train_dataset(parts, BATCH, seed=1, epochs=EPOCHS, transform=transform),
            steps, trajectory)])
    assert len(trajectory) == EPOCHS and len(history.history["level2_loss"]) == EPOCHS
    assert all(np.isfinite(history.history["loss"]))

    sizes = (NUM_IMAGES, 5, 13, 2 * BATCH)
    for n in sizes:
        outputs = phase.predict(network, source, np.arange(n), BATCH, transform)
        assert outputs["logits"].shape == (n, 4) and outputs["features"].shape == (n, 64)
    # The padded last batch does not change the real images' outputs.
    np.testing.assert_allclose(phase.predict(network, source, np.arange(5), BATCH,
                                                   transform)["logits"],
                               keras.ops.convert_to_numpy(
                                   network(images[:5].astype("float32"))["logits"]),
                               rtol=1e-4, atol=1e-5)

    assert counts == {"level1": 1, "level2": 1, "eval": 1}


def _one_level1_and_level2_step(learner, images, labels):
    """Losses of one Level-1 and one Level-2 step from the learner's current weights."""
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    learner.reset_metrics()
    level1 = float(learner.train_function(iter(dataset))["loss"])
    level2 = float(learner.level2_pass(iter(dataset), 1))
    return level1, level2, [keras.ops.convert_to_numpy(v) for v in learner.network.weights]


@pytest.fixture
def without_op_determinism():
    # Keras turns XLA off while op determinism is on (an earlier test in this
    # process may have turned it on; it is process-wide).
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was_enabled:
        tf_config.enable_op_determinism()


@pytest.mark.slow  # XLA compiles
def test_xla_steps_compute_what_the_graph_steps_compute(without_op_determinism):
    # One learner, run from the same weights without and then with XLA.
    learner = _phase1_learner(jit_compile=False)
    rng = np.random.RandomState(2)
    images = rng.uniform(0, 255, size=(BATCH,) + INPUT_SHAPE).astype("float32")
    labels = np.arange(BATCH) % 4
    start = [keras.ops.convert_to_numpy(v) for v in learner.weights]
    network_start = [keras.ops.convert_to_numpy(v) for v in learner.network.weights]
    learner.make_train_function()
    graph = _one_level1_and_level2_step(learner, images, labels)

    for variable, value in zip(learner.weights, start):
        variable.assign(value)
    learner.jit_compile = True
    learner.make_train_function(force=True)
    learner._level2_function = None
    assert learner.jit_compile
    xla = _one_level1_and_level2_step(learner, images, labels)

    np.testing.assert_allclose(xla[:2], graph[:2], rtol=1e-4)
    moved = [not np.array_equal(a, b) for a, b in zip(graph[2], network_start)]
    assert any(moved)
    for after_xla, after_graph in zip(xla[2], graph[2]):
        np.testing.assert_allclose(after_xla, after_graph, rtol=1e-3, atol=1e-5)
