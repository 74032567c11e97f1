"""Tests for aanets_tf.models.network."""

import keras
import numpy as np
import pytest

from aanets_tf.models.aggregation import Aggregation
from aanets_tf.models.backbones import aanet_from_resnet, build_aanet, build_resnet, clone_backbone
from aanets_tf.models.cosine_classifier import CosineClassifier, imprint_weights
from aanets_tf.models.network import (backbone_of, build_network, classifier_of, grow_network,
                                      parameter_counts, variable_groups)
from aanets_tf.models.stable_conv import StableConv2D
from support import random_batch, to_numpy as _np

INPUT_SHAPE = (16, 16, 3)


def _images(n=4, seed=0):
    return random_batch(n, INPUT_SHAPE, 1, seed)[0]


def _randomize_head(network, seed):
    rng = np.random.RandomState(seed)
    head = classifier_of(network)
    head.new_weights.assign(rng.normal(size=head.new_weights.shape).astype("float32"))
    head.sigma.assign(3.0)


@pytest.fixture(scope="module")
def phase0():
    backbone = build_resnet("resnet8", INPUT_SHAPE, name="resnet_phase0")
    network = build_network(backbone, 0, 3, name="network_phase0")
    _randomize_head(network, seed=1)
    return network


@pytest.fixture(scope="module")
def grown_aanet(phase0):
    """Phase 1 of an AANet run: 3 old classes, 2 new ones imprinted."""
    backbone = aanet_from_resnet(backbone_of(phase0), name="aanet_phase1")
    features = _np(backbone(_images(6, seed=2), training=False))
    network = grow_network(phase0, backbone, 2, features, np.array([0, 1, 0, 1, 0, 1]),
                           name="network_phase1")
    for k, alpha in enumerate((0.2, 0.6, 0.9), start=1):
        backbone.get_layer(f"aggregation{k}").set_alpha(alpha)
    return network


def test_build_network_outputs(phase0):
    outputs = phase0(_images(4), training=False)
    assert set(outputs) == {"logits", "features"}
    assert tuple(outputs["logits"].shape) == (4, 3)
    assert tuple(outputs["features"].shape) == (4, 64)
    backbone = backbone_of(phase0)
    assert backbone.name == "resnet_phase0"
    np.testing.assert_allclose(_np(outputs["features"]),
                               _np(backbone(_images(4), training=False)), rtol=1e-6, atol=1e-6)
    head = classifier_of(phase0)
    assert isinstance(head, CosineClassifier)
    assert (head.num_old_classes, head.num_new_classes) == (0, 3)
    np.testing.assert_allclose(_np(outputs["logits"]),
                               _np(head(outputs["features"])), rtol=1e-6, atol=1e-6)


def test_grow_network_keeps_old_logits(phase0):
    x = _images(5, seed=3)
    before = _np(phase0(x, training=False)["logits"])
    backbone = clone_backbone(backbone_of(phase0), name="resnet_phase1")
    features = np.random.RandomState(4).normal(size=(8, 64)).astype("float32")
    labels = np.array([0, 1, 2, 3] * 2)
    grown = grow_network(phase0, backbone, 4, features, labels, name="network_phase1")
    logits = _np(grown(x, training=False)["logits"])
    assert logits.shape == (5, 7)
    np.testing.assert_array_equal(logits[:, :3], before)

    old_head = classifier_of(phase0)
    head = classifier_of(grown)
    assert (head.num_old_classes, head.num_new_classes) == (3, 4)
    old_weights = _np(old_head.class_weights())
    np.testing.assert_array_equal(_np(head.old_weights), old_weights)
    np.testing.assert_allclose(_np(head.new_weights),
                               imprint_weights(features, labels, 4, old_weights), rtol=1e-6)
    assert float(_np(head.sigma)) == 3.0
    assert not head.old_weights.trainable
    assert head.new_weights.trainable and head.sigma.trainable
    # The previous network is untouched.
    assert classifier_of(phase0).num_classes == 3


def test_grow_twice_stacks_old_classes(phase0):
    first = grow_network(phase0, backbone_of(phase0), 2,
                         np.eye(2, 64, dtype="float32"), np.array([0, 1]), name="n1")
    second = grow_network(first, backbone_of(phase0), 2,
                          np.eye(2, 64, k=5, dtype="float32"), np.array([0, 1]), name="n2")
    head = classifier_of(second)
    assert (head.num_old_classes, head.num_new_classes) == (5, 2)
    np.testing.assert_array_equal(_np(head.old_weights),
                                  _np(classifier_of(first).class_weights()))
    x = _images(3, seed=5)
    np.testing.assert_array_equal(_np(second(x)["logits"])[:, :5], _np(first(x)["logits"]))


def test_grown_aanet_old_logits_match_resnet(phase0, grown_aanet):
    x = _images(4, seed=6)
    before = _np(phase0(x, training=False)["logits"])
    after = _np(grown_aanet(x, training=False)["logits"])
    assert after.shape == (4, 5)
    np.testing.assert_allclose(after[:, :3], before, atol=1e-4)


def test_variable_groups_of_grown_aanet(grown_aanet):
    groups = variable_groups(grown_aanet)
    paths = {name: [v.path for v in getattr(groups, name)]
             for name in ("frozen", "level1", "level2", "statistics")}
    all_paths = [v.path for v in grown_aanet.weights]
    assert len(set(all_paths)) == len(all_paths)
    grouped = [p for group in paths.values() for p in group]
    assert sorted(grouped) == sorted(all_paths)
    for a in paths:
        for b in paths:
            if a < b:
                assert not set(paths[a]) & set(paths[b]), (a, b)

    assert sorted(paths["level2"]) == [f"aggregation{k}/alpha" for k in (1, 2, 3)]
    assert all(p.endswith(("moving_mean", "moving_variance")) for p in paths["statistics"])
    backbone = backbone_of(grown_aanet)
    num_bn = sum(isinstance(layer, keras.layers.BatchNormalization)
                 for layer in backbone._flatten_layers(include_self=False))
    assert len(paths["statistics"]) == 2 * num_bn
    stable_kernels = [layer.kernel.path for layer in backbone._flatten_layers(include_self=False)
                      if isinstance(layer, StableConv2D)]
    assert len(stable_kernels) == 1 + 2 + 3 + 3
    assert sorted(paths["frozen"]) == sorted(stable_kernels + ["classifier/old_weights"])
    for name in ("scale", "gamma", "beta", "new_weights", "sigma"):
        assert any(p.endswith("/" + name) for p in paths["level1"])
    assert not any(p.endswith("/alpha") for p in paths["level1"] + paths["frozen"])
    assert all(v.trainable for v in groups.level1 + groups.level2)
    assert not any(v.trainable for v in groups.frozen)


def test_variable_groups_fixed_aggregation_is_frozen():
    backbone = build_aanet("resnet8", INPUT_SHAPE, learnable_aggregation=False)
    groups = variable_groups(build_network(backbone, 2, 2))
    assert groups.level2 == []
    assert sum(v.path.endswith("/alpha") for v in groups.frozen) == 3


def test_parameter_counts(grown_aanet, phase0):
    counts = parameter_counts(grown_aanet)
    assert set(counts) == {"total", "frozen", "level1_trainable", "level2_aggregation",
                           "statistics", "scaling_weights", "aggregation_weights"}
    assert counts["total"] == grown_aanet.count_params()
    assert counts["total"] == (counts["frozen"] + counts["level1_trainable"]
                               + counts["level2_aggregation"] + counts["statistics"])
    assert counts["level2_aggregation"] == counts["aggregation_weights"] == 3
    # Scales: one per (in, out) pair of each stable conv, here (3, 16) in the stem and
    # 16x16 (2), 16x32 + 32x32 + 16x32, 32x64 + 64x64 + 32x64 in the levels.
    assert counts["scaling_weights"] == (3 * 16 + 2 * 256 + (512 + 1024 + 512)
                                         + (2048 + 4096 + 2048))
    plain = parameter_counts(phase0)
    assert plain["frozen"] == plain["scaling_weights"] == plain["aggregation_weights"] == 0
    assert plain["total"] == phase0.count_params()


def test_keras_round_trip_of_grown_aanet(grown_aanet, tmp_path):
    path = str(tmp_path / "network.keras")
    grown_aanet.save(path)
    restored = keras.saving.load_model(path)
    x = _images(4, seed=7)
    expected = grown_aanet(x, training=False)
    got = restored(x, training=False)
    for key in ("logits", "features"):
        np.testing.assert_array_equal(_np(got[key]), _np(expected[key]))
    restored_backbone = backbone_of(restored)
    assert [float(_np(layer.alpha)) for layer in restored_backbone.layers
            if isinstance(layer, Aggregation)] == pytest.approx([0.2, 0.6, 0.9])
    head = classifier_of(restored)
    assert (head.num_old_classes, head.num_new_classes) == (3, 2)
    assert not head.old_weights.trainable
    restored_groups = variable_groups(restored)
    groups = variable_groups(grown_aanet)
    for name in ("frozen", "level1", "level2", "statistics"):
        assert (sorted(v.path for v in getattr(restored_groups, name))
                == sorted(v.path for v in getattr(groups, name)))


def test_checkpoint_with_a_plain_functional_backbone_is_upgraded(grown_aanet, tmp_path):
    """Checkpoints written before `Backbone` existed load as networks with a `Backbone`."""
    from aanets_tf.protocol import checkpointing

    backbone = backbone_of(grown_aanet)
    # The earlier format: the same layers in a plain functional model.
    legacy_backbone = keras.Model(backbone.input, backbone.output, name="aanet_phase1")
    assert type(legacy_backbone) is not type(backbone)
    inputs = keras.Input(INPUT_SHAPE, name="images")
    features = legacy_backbone(inputs)
    legacy = keras.Model(inputs, {"logits": classifier_of(grown_aanet)(features),
                                  "features": features}, name="network_phase1")
    path = str(tmp_path / "phase_1.keras")
    legacy.save(path)

    upgraded = checkpointing.load_network(path)
    restored = backbone_of(upgraded)
    assert (restored.arch, restored.branches, restored.name) == ("resnet8", "dual", "aanet_phase1")
    x = _images(4, seed=8)
    for key in ("logits", "features"):
        np.testing.assert_allclose(_np(upgraded(x, training=False)[key]),
                                   _np(grown_aanet(x, training=False)[key]), rtol=1e-6, atol=1e-6)
    assert (sorted(v.path for v in variable_groups(upgraded).level2)
            == sorted(v.path for v in variable_groups(grown_aanet).level2))
