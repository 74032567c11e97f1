"""Tests for aanets_tf.hosts.podnet_losses."""

import math

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.hosts import podnet_losses as pod
from support import to_numpy as _np


# --- lambda adaptation ---------------------------------------------------------------------

@pytest.mark.parametrize("seen, new, bases, expected", [
    (60, 10, (3.0, 1.0), (3.0 * math.sqrt(6.0), math.sqrt(6.0))),   # CIFAR-100, 50 + 10
    (52, 2, (3.0, 1.0), (3.0 * math.sqrt(26.0), math.sqrt(26.0))),  # CIFAR-100, 25 phases
    (6, 2, (8.0, 10.0), (8.0 * math.sqrt(3.0), 10.0 * math.sqrt(3.0))),
    (4, 4, (3.0, 1.0), (3.0, 1.0)),
])
def test_pod_weights(seen, new, bases, expected):
    assert pod.pod_weights(seen, new, *bases) == pytest.approx(expected)


def test_pod_weights_defaults_are_cifar_and_use_seen_not_old_classes():
    spatial, flat = pod.pod_weights(60, 10)
    assert (spatial, flat) == pytest.approx((3.0 * math.sqrt(6.0), math.sqrt(6.0)))
    # LUCIR's sqrt(old / new) would give sqrt(5) here.
    assert flat != pytest.approx(math.sqrt(5.0))


@pytest.mark.parametrize("seen, new", [(10, 0), (4, 6), (-1, 1)])
def test_pod_weights_rejects_bad_counts(seen, new):
    with pytest.raises(ValueError, match="num_seen_classes"):
        pod.pod_weights(seen, new)


# --- POD-spatial ---------------------------------------------------------------------------

def _np_pod_level(old, new, normalize=True):
    """Reference in PyTorch's (b, C, H, W) layout, as the released code pools."""
    a, b = np.transpose(old, (0, 3, 1, 2)) ** 2, np.transpose(new, (0, 3, 1, 2)) ** 2
    a = np.concatenate([a.sum(3).reshape(len(a), -1), a.sum(2).reshape(len(a), -1)], axis=1)
    b = np.concatenate([b.sum(3).reshape(len(b), -1), b.sum(2).reshape(len(b), -1)], axis=1)
    if normalize:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.linalg.norm(a - b, axis=1)


def _maps(seed, shapes=((2, 8, 8, 4), (2, 4, 4, 8), (2, 2, 2, 16))):
    rng = np.random.RandomState(seed)
    return [rng.normal(size=s).astype("float32") for s in shapes]


def test_pod_embedding_hand_example():
    # One sample, H = 2, W = 3, C = 1: rows (1, 2, 0) and (0, 0, 3).
    x = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]], np.float32)[None, :, :, None]
    # Squares (1, 4, 0) / (0, 0, 9): summed over the width per row (5, 9),
    # over the height per column (1, 4, 9).
    np.testing.assert_allclose(_np(pod.pod_embedding(x)), [[5.0, 9.0, 1.0, 4.0, 9.0]])


def test_pod_spatial_hand_example():
    old = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)[None, :, :, None]
    new = np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)[None, :, :, None]
    # Pooled: old (1, 0 | 1, 0), new (0, 1 | 0, 1); normalised, their distance is sqrt(2).
    np.testing.assert_allclose(_np(pod.pod_spatial([old], [new])), math.sqrt(2.0), rtol=1e-6)
    # Unnormalised: ||(1, -1, 1, -1)|| = 2.
    np.testing.assert_allclose(_np(pod.pod_spatial([old], [new], normalize=False)), 2.0,
                               rtol=1e-6)
    # Averaged over levels: a second, identical level halves it.
    np.testing.assert_allclose(_np(pod.pod_spatial([old, old], [new, old])), math.sqrt(2.0) / 2,
                               rtol=1e-6)


def test_pod_spatial_matches_numpy_reference():
    old, new = _maps(0), _maps(1)
    per_example = _np(pod.pod_spatial_per_example(old, new))
    expected = np.mean([_np_pod_level(o, n) for o, n in zip(old, new)], axis=0)
    assert per_example.shape == (2,)
    np.testing.assert_allclose(per_example, expected, rtol=1e-5)
    np.testing.assert_allclose(_np(pod.pod_spatial(old, new)), expected.mean(), rtol=1e-5)
    raw = _np(pod.pod_spatial_per_example(old, new, normalize=False))
    np.testing.assert_allclose(
        raw, np.mean([_np_pod_level(o, n, False) for o, n in zip(old, new)], axis=0), rtol=1e-5)


def test_pod_spatial_zero_when_maps_match_up_to_sign_and_scale():
    maps = _maps(2)
    assert _np(pod.pod_spatial(maps, maps)) == 0.0
    # Squared activations: the sign is gone; L2 normalisation: the scale is gone.
    np.testing.assert_allclose(_np(pod.pod_spatial(maps, [-3.0 * m for m in maps])), 0.0,
                               atol=1e-6)
    assert _np(pod.pod_spatial(maps, _maps(3))) > 0.1


def test_pod_spatial_pools_width_and_height_not_all_positions():
    # Moving a pixel along its row changes only the column profile (pooled over
    # the height); moving it diagonally changes both profiles.
    base = np.zeros((1, 3, 3, 1), np.float32)
    base[0, 0, 0, 0] = 1.0
    same_row = np.zeros_like(base)
    same_row[0, 0, 2, 0] = 1.0
    diagonal = np.zeros_like(base)
    diagonal[0, 2, 2, 0] = 1.0
    within_row = _np(pod.pod_spatial([base], [same_row]))
    across = _np(pod.pod_spatial([base], [diagonal]))
    # Same row: row profiles equal, column profiles (1,0,0) vs (0,0,1) -> ||(1,0,-1)|| / sqrt(2).
    np.testing.assert_allclose(within_row, 1.0, rtol=1e-6)
    np.testing.assert_allclose(across, math.sqrt(2.0), rtol=1e-6)


def test_pod_spatial_symmetric_in_height_and_width():
    old, new = _maps(4, ((3, 5, 7, 2),)), _maps(5, ((3, 5, 7, 2),))
    swap = [np.transpose(m, (0, 2, 1, 3)) for m in old], [np.transpose(m, (0, 2, 1, 3))
                                                          for m in new]
    np.testing.assert_allclose(_np(pod.pod_spatial_per_example(old, new)),
                               _np(pod.pod_spatial_per_example(*swap)), rtol=1e-5)


def test_pod_spatial_gradients_finite_at_the_phase_start():
    # At the first step of a phase the student is a copy of the teacher.
    old = _maps(6)
    new = [tf.Variable(m) for m in old]
    with tf.GradientTape() as tape:
        loss = pod.pod_spatial(old, new)
    grads = tape.gradient(loss, new)
    assert _np(loss) == 0.0
    for g in grads:
        assert np.all(np.isfinite(_np(g)))
    new[0].assign_add(0.1 * np.ones_like(old[0]))
    with tf.GradientTape() as tape:
        loss = pod.pod_spatial(old, new)
    grads = tape.gradient(loss, new)
    assert all(np.all(np.isfinite(_np(g))) for g in grads)
    assert np.any(np.abs(_np(grads[0])) > 1e-6)
    np.testing.assert_array_equal(_np(grads[1]), 0.0)  # an unchanged level pulls nothing


def test_pod_spatial_bfloat16_inputs_give_float32():
    maps = _maps(7)
    out = pod.pod_spatial([tf.cast(m, tf.bfloat16) for m in maps], maps)
    assert out.dtype == tf.float32
    assert np.isfinite(_np(out)) and _np(out) < 0.05


def test_pod_spatial_rejects_mismatched_levels():
    maps = _maps(8)
    with pytest.raises(ValueError, match="same non-empty list"):
        pod.pod_spatial(maps, maps[:2])
    with pytest.raises(ValueError, match="same non-empty list"):
        pod.pod_spatial([], [])
    with pytest.raises(ValueError, match="same shape"):
        pod.pod_spatial(maps[:1], maps[1:2])
    with pytest.raises(ValueError, match=r"\(b, H, W, C\)"):
        pod.pod_spatial([np.zeros((2, 4), np.float32)], [np.zeros((2, 4), np.float32)])


# --- POD-flat ------------------------------------------------------------------------------

def test_pod_flat_hand_examples():
    old = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    new = np.array([[6.0, 8.0], [0.0, 2.0]], np.float32)
    # cosine: same direction -> 0, orthogonal -> 1; mean 0.5.
    np.testing.assert_allclose(_np(pod.pod_flat_per_example(old, new)), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(_np(pod.pod_flat(old, new)), 0.5, atol=1e-6)
    # l2: ||(-3, -4)|| = 5 and ||(1, -2)|| = sqrt(5).
    np.testing.assert_allclose(_np(pod.pod_flat_per_example(old, new, distance="l2")),
                               [5.0, math.sqrt(5.0)], rtol=1e-6)


def test_pod_flat_zero_when_equal_with_finite_gradients():
    rng = np.random.RandomState(9)
    features = rng.normal(size=(4, 6)).astype("float32")
    for distance in pod.FLAT_DISTANCES:
        new = tf.Variable(features)
        with tf.GradientTape() as tape:
            loss = pod.pod_flat(features, new, distance=distance)
        np.testing.assert_allclose(_np(loss), 0.0, atol=1e-6)
        assert np.all(np.isfinite(_np(tape.gradient(loss, new))))


def test_pod_flat_rejects_unknown_distance():
    with pytest.raises(ValueError, match="distance='l1'"):
        pod.pod_flat(np.ones((1, 2)), np.ones((1, 2)), distance="l1")


# --- NCA -----------------------------------------------------------------------------------

def _np_nca(similarities, labels, margin, scale, margin_scale=None):
    """NumPy NCA; `margin_scale` (default: `scale`) multiplies the margin."""
    out = []
    for row, y in zip(np.asarray(similarities, np.float64), labels):
        z = scale * row
        z[y] -= (scale if margin_scale is None else margin_scale) * margin
        denominator = z.copy()
        denominator[y] = z.max()  # PODNet's code: exp(0) after the row-max shift
        out.append(-z[y] + np.log(np.exp(denominator).sum()))
    return np.array(out)


def test_nca_hand_example():
    s = np.array([[0.9, 0.1, 0.3]], np.float32)
    # The target has the largest logit: softmax cross-entropy.
    # -0.9 + log(e^0.9 + e^0.1 + e^0.3) = 0.6922
    np.testing.assert_allclose(_np(pod.nca_per_example(s, np.array([0]))), [0.692217],
                               atol=1e-5)
    # It does not: the largest other class counts twice. -0.1 + log(e^0.9 + e^0.9 + e^0.3)
    np.testing.assert_allclose(_np(pod.nca_per_example(s, np.array([1]))), [1.735627],
                               atol=1e-5)
    # eta = 10, margin 0.6 on the target: z = (3, 1, 3); -3 + log(e^3 + e^1 + e^3) = 0.7586
    np.testing.assert_allclose(_np(pod.nca_loss(s, np.array([0]), margin=0.6, scale=10.0)),
                               0.758624, atol=1e-5)


def test_nca_matches_numpy_reference_and_is_never_negative():
    rng = np.random.RandomState(10)
    s = rng.uniform(-1, 1, size=(8, 5)).astype("float32")
    labels = rng.randint(0, 5, size=8)
    for margin, scale in [(0.0, 1.0), (0.6, 1.0), (0.2, 4.0), (0.0, 16.0)]:
        loss = _np(pod.nca_per_example(s, labels, margin, scale))
        np.testing.assert_allclose(loss, _np_nca(s, labels, margin, scale), rtol=1e-5,
                                   atol=1e-6)
        assert np.all(loss >= 0)


def test_nca_margin_acts_on_the_target_only():
    s = np.array([[0.2, 0.9, -0.3, 0.1]], np.float32)
    labels = np.array([1])
    for margin in (0.0, 0.5):
        # Raising every class's similarity alike changes nothing, with or without a margin.
        np.testing.assert_allclose(_np(pod.nca_loss(s + 0.05, labels, margin, scale=3.0)),
                                   _np(pod.nca_loss(s, labels, margin, scale=3.0)), rtol=1e-5)
    # The margin lowers the target's logit alone: the same as lowering its similarity.
    lowered = s.copy()
    lowered[0, 1] -= 0.5
    np.testing.assert_allclose(_np(pod.nca_loss(s, labels, margin=0.5, scale=3.0)),
                               _np(pod.nca_loss(lowered, labels, scale=3.0)), rtol=1e-5)


def test_nca_gradient_reaches_similarities_and_a_learnable_scale():
    rng = np.random.RandomState(11)
    s = tf.Variable(rng.uniform(-1, 1, size=(6, 4)).astype("float32"))
    scale = tf.Variable(2.0)
    labels = np.array([0, 1, 2, 3, 0, 1])
    with tf.GradientTape() as tape:
        loss = pod.nca_loss(s, labels, margin=0.3, scale=scale)
    g_s, g_scale = tape.gradient(loss, [s, scale])
    assert np.all(np.isfinite(_np(g_s))) and np.isfinite(_np(g_scale))
    assert _np(g_scale) != 0.0
    # Raising the target's similarity lowers the loss: negative gradient at the targets.
    assert np.all(_np(g_s)[np.arange(6), labels] < 0)
    # The margin's term does not train the scale: d loss / d scale holds the margin's
    # offset `scale * margin` fixed (numeric check).
    eps = 1e-3
    up, down = (_np_nca(_np(s), labels, 0.3, 2.0 + d, margin_scale=2.0).mean() for d in (eps, -eps))
    np.testing.assert_allclose(_np(g_scale), (up - down) / (2 * eps), rtol=1e-3)


def test_nca_scale_gradient_fades_once_the_targets_win():
    # Every target ahead of the other classes: a growing scale lowers the loss less and
    # less, so a learnt scale levels off (the paper's form pushes it up at a constant rate).
    s = np.array([[0.8, 0.1, 0.2], [0.0, 0.7, 0.3], [0.1, 0.2, 0.9]], np.float32)
    labels = np.array([0, 1, 2])

    def scale_gradient(value):
        scale = tf.Variable(value)
        with tf.GradientTape() as tape:
            loss = pod.nca_loss(s, labels, scale=scale)
        return float(_np(tape.gradient(loss, scale)))

    gradients = [scale_gradient(v) for v in (1.0, 5.0, 20.0)]
    assert gradients[0] < gradients[1] < gradients[2] < 0
    assert abs(gradients[2]) < 1e-3


def test_nca_margin_does_not_drive_the_scale_through_zero():
    # Every similarity near 0, below the margin: the state at the start of training.
    s = tf.constant(np.full((4, 3), 0.01, np.float32))
    labels = np.array([0, 1, 2, 0])
    scale = tf.Variable(1.0)
    with tf.GradientTape() as tape:
        loss = pod.nca_loss(s, labels, margin=0.6, scale=scale)
    # With the margin's term trained too, d loss / d scale would be positive (eta shrinks
    # towards 0 and below); here it is the margin-free gradient, 0 for equal similarities.
    np.testing.assert_allclose(_np(tape.gradient(loss, scale)), 0.0, atol=1e-6)


def test_nca_extreme_similarities_stay_finite():
    s = np.array([[1.0, -1.0, 1.0]], np.float32)
    out = _np(pod.nca_per_example(s, np.array([0]), scale=1000.0))
    # A tie with the largest other class: log(e^1000 + e^-1000 + e^1000) - 1000 = log 2.
    np.testing.assert_allclose(out, [math.log(2.0)], atol=1e-4)  # float32 near 1000


def test_nca_needs_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        pod.nca_loss(np.ones((2, 1), np.float32), np.array([0, 0]))


def test_losses_run_inside_a_compiled_step():
    # The Level-1 step is a tf.function, XLA-compiled when jit_compile is on.
    old, new = _maps(12), _maps(13)
    rng = np.random.RandomState(14)
    s = rng.uniform(-1, 1, size=(2, 3)).astype("float32")
    labels = np.array([2, 0])

    @tf.function(jit_compile=True)
    def step(old, new, s):
        return (pod.pod_spatial(old, new), pod.pod_flat(old[-1][:, 0, 0], new[-1][:, 0, 0]),
                pod.nca_loss(s, labels, scale=3.0))

    spatial, flat, nca = step(old, new, s)
    np.testing.assert_allclose(_np(spatial), _np(pod.pod_spatial(old, new)), rtol=1e-5)
    np.testing.assert_allclose(_np(flat), _np(pod.pod_flat(old[-1][:, 0, 0], new[-1][:, 0, 0])),
                               rtol=1e-5)
    np.testing.assert_allclose(_np(nca), _np_nca(s, labels, 0.0, 3.0).mean(), rtol=1e-5)
