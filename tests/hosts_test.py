"""The host seam: each host's objective, head and post-herding step, and their settings."""

import numpy as np
import pytest
import tensorflow as tf

from aanets_tf.models.backbones import aanet_from_resnet, build_resnet, level_taps
from aanets_tf.config import TrainConfig
from aanets_tf.hosts import host_for
from aanets_tf.hosts.host import Outputs
from aanets_tf.hosts.local_similarity import LocalSimilarityClassifier
from aanets_tf.hosts.podnet import finetune_head
from aanets_tf.models.network import backbone_of, build_network, classifier_of, grow_network
from aanets_tf.training.learner import term_share
from support import random_batch, to_numpy
from aanets_tf.workdir import Workdir

INPUT_SHAPE = (16, 16, 3)


def _networks(host_name, num_old=3, num_new=2, dual=True):
    """Phase 0 and phase 1 networks of `host_name`, as `aanets_tf.protocol.phase` builds them."""
    extra = {"proxies_per_class": 2} if host_name == "podnet" else {}
    host = host_for(TrainConfig(host=host_name, **extra))
    resnet = build_resnet("resnet8", INPUT_SHAPE, name="resnet_phase0")
    teacher = build_network(resnet, name="network_phase0", head=host.classifier(0, num_old))
    backbone = aanet_from_resnet(resnet) if dual else resnet
    images, _ = random_batch(12, INPUT_SHAPE, num_new, seed=3)
    network = grow_network(teacher, backbone, num_new, to_numpy(backbone(images)),
                           np.arange(12) % num_new, name="network_phase1")
    return host, teacher, network


def _outputs(network, images, maps=False):
    backbone = backbone_of(network)
    if not maps:
        return Outputs(network, backbone(images))
    out = level_taps(backbone)(images)
    return Outputs(network, out["features"], out["maps"])


def _level1(objective, labels, student, teacher):
    """The objective's terms as one device averages them over the batch (a term the
    phase does not have: absent), and its logits."""
    means, logits = objective.level1_terms(labels, student, teacher)
    batch = tf.constant(float(len(labels)))
    return {name: term_share(mean, batch) for name, mean in means.items()}, logits


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_unknown_host_and_other_hosts_settings_are_refused():
    with pytest.raises(ValueError, match=r"`host` must be one of .*host='der'"):
        TrainConfig(host="der")
    with pytest.raises(ValueError, match=r"`margin` has no effect with host='icarl'"):
        TrainConfig(host="icarl", margin=0.3)
    with pytest.raises(ValueError, match=r"`nca_margin` has no effect with host='lucir'"):
        TrainConfig(nca_margin=0.2)
    # A setting left at its default is accepted (flagfiles list LUCIR's).
    TrainConfig(host="podnet", margin=0.5, lambda_base=5.0, nca_margin=0.3)


def test_icarl_objective_against_numpy():
    host, teacher, network = _networks("icarl")
    images, labels = random_batch(6, INPUT_SHAPE, 5, seed=4)
    objective = host.objective(network, teacher, 3, 2)
    terms, logits = _level1(objective, labels, _outputs(network, images),
                            _outputs(teacher, images))
    z, z_old = to_numpy(logits), to_numpy(teacher(images)["logits"])
    ce = -np.log(_softmax(z)[np.arange(6), labels])
    p_old, p_new = _softmax(z_old / 2), _softmax(z[:, :3] / 2)
    kd = 4 * np.sum(p_old * (np.log(p_old) - np.log(p_new)), axis=1)
    assert set(terms) == set(objective.names) == {"ce", "distillation"}
    np.testing.assert_allclose(to_numpy(terms["ce"]), ce.mean(), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(terms["distillation"]), 0.25 * kd.mean(), rtol=1e-4,
                               atol=1e-7)
    assert host.headline == "nme"


def test_podnet_objective_reads_every_level_and_weights_by_seen_over_new():
    from aanets_tf.hosts import podnet_losses as pod

    host, teacher, network = _networks("podnet")
    backbone_of(network).get_layer("plastic_level1").set_weights(
        [w * 1.1 for w in backbone_of(network).get_layer("plastic_level1").get_weights()])
    images, labels = random_batch(6, INPUT_SHAPE, 5, seed=5)
    objective = host.objective(network, teacher, 3, 2)
    student, old = _outputs(network, images, maps=True), _outputs(teacher, images, maps=True)
    assert objective.uses_level_maps and len(student.maps) == 3
    terms, logits = _level1(objective, labels, student, old)
    factor = np.sqrt(5 / 2)
    np.testing.assert_allclose(
        to_numpy(terms["pod_spatial"]),
        3.0 * factor * to_numpy(pod.pod_spatial(old.maps, student.maps)), rtol=1e-5)
    np.testing.assert_allclose(
        to_numpy(terms["pod_flat"]),
        1.0 * factor * to_numpy(pod.pod_flat(old.features, student.features)), rtol=1e-5)
    head = classifier_of(network)
    np.testing.assert_allclose(
        to_numpy(terms["nca"]),
        to_numpy(pod.nca_loss(head.similarities(student.features), labels, 0.0, head.scale)),
        rtol=1e-5)
    assert to_numpy(terms["pod_spatial"]) > 0  # the changed level shows
    np.testing.assert_allclose(to_numpy(logits), to_numpy(network(images)["logits"]),
                               rtol=1e-5, atol=1e-6)
    # Phase 0: NCA alone.
    phase0 = host.objective(teacher, None, 0, 3)
    terms0, _ = _level1(phase0, labels % 3, _outputs(teacher, images, maps=True), None)
    assert set(terms0) == {"nca"}


def test_level_maps_follow_the_aggregation_weights():
    resnet = build_resnet("resnet8", INPUT_SHAPE)
    aanet = aanet_from_resnet(resnet)
    taps = level_taps(aanet)
    # Make the branches differ, then move the last level's aggregation weight.
    plastic = aanet.get_layer("plastic_level3")
    plastic.set_weights([w * 0.5 for w in plastic.get_weights()])
    images, _ = random_batch(2, INPUT_SHAPE, 2, seed=6)
    for alpha in (0.5, 0.1):
        aanet.get_layer("aggregation3").set_alpha(alpha)
        out = taps(images)
        np.testing.assert_allclose(to_numpy(out["maps"][-1]).mean(axis=(1, 2)),
                                   to_numpy(aanet(images)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(to_numpy(out["features"]), to_numpy(aanet(images)),
                                   rtol=1e-6)
    assert [tuple(m.shape[1:]) for m in out["maps"]] == [(16, 16, 16), (8, 8, 32), (4, 4, 64)]


def test_podnet_head_grows_with_old_proxies_and_scale_kept():
    _, teacher, network = _networks("podnet", dual=False)
    old_head, head = classifier_of(teacher), classifier_of(network)
    assert isinstance(head, LocalSimilarityClassifier)
    assert (head.num_old_classes, head.num_new_classes, head.proxies_per_class) == (3, 2, 2)
    np.testing.assert_array_equal(to_numpy(head.old_proxies), to_numpy(old_head.proxies()))
    assert not head.old_proxies.trainable
    np.testing.assert_allclose(to_numpy(head.scale), to_numpy(old_head.scale))


def test_class_balanced_finetuning_removes_the_new_class_bias():
    rng = np.random.RandomState(7)
    centres = rng.normal(size=(4, 8)) * 2
    targets = np.repeat(np.arange(4), 20)
    features = (centres[targets] + rng.normal(size=(80, 8))).astype("float32")
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    head = LocalSimilarityClassifier(2, 2, proxies_per_class=2)
    head.build((None, 8))
    # Biased head: old proxies point away from their classes, new ones at theirs.
    head.old_proxies.assign(np.repeat(-unit[:2].T, 2, axis=1).astype("float32"))
    head.new_proxies.assign(np.repeat(unit[2:].T, 2, axis=1).astype("float32"))
    old_before = to_numpy(head.old_proxies).copy()
    head.scale.assign(3.0)

    def accuracy():
        return np.mean(np.argmax(to_numpy(head(features)), axis=1) == targets)

    before = accuracy()
    history = finetune_head(head, features, targets, epochs=15, learning_rate=0.5,
                            batch_size=16, seed=0)
    assert len(history) == 15 and np.all(np.isfinite(history))
    assert before <= 0.5 and accuracy() > 0.9
    assert not np.allclose(to_numpy(head.old_proxies), old_before)  # old proxies are tuned too
    assert float(to_numpy(head.scale)) == 3.0  # the NCA scale stays as Level 1 left it
    with pytest.raises(ValueError, match="one target per feature"):
        finetune_head(head, features, targets[:3], epochs=1, learning_rate=0.1, batch_size=4)


@pytest.mark.slow  # a fresh process
def test_a_podnet_checkpoint_loads_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    from aanets_tf.protocol import checkpointing
    from support import REPO_ROOT

    _, teacher, _ = _networks("podnet")
    classifier_of(teacher).scale.assign(2.5)
    checkpointing.save_network(teacher, str(tmp_path), 0)
    path = Workdir(str(tmp_path)).phase_network(0)
    code = ("import sys; sys.path.insert(0, '.'); from aanets_tf.protocol import checkpointing; "
            f"head = checkpointing.load_network({path!r}).get_layer('classifier'); "
            "print(type(head).__name__, float(head.scale))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["LocalSimilarityClassifier", "2.5"]


def test_a_term_is_a_mean_over_the_batch_or_over_its_own_count():
    from aanets_tf.hosts.host import Mean, per_example

    batch = tf.constant(4.0)
    # One value per example: the batch mean, times the weight.
    assert float(term_share(per_example(tf.constant([1.0, 2.0, 3.0, 6.0]), 0.5), batch)) == 1.5
    # A mean over its own count (LUCIR's margin ranking: over the pairs), whatever the batch.
    assert float(term_share(Mean(tf.constant(6.0), tf.constant(3.0)), batch)) == 2.0
    # No pair in the batch: 0, not NaN.
    assert float(term_share(Mean(tf.constant(0.0), tf.constant(0.0)), batch)) == 0.0
