"""Tests for aanets_tf.serving.serving: versioned exports and their three signatures."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from aanets_tf.serving import serving
from serving_networks import (CLASS_ORDER, INPUT_SHAPE, LABEL_NAMES, PHASE_CLASSES, images,
                              keras_outputs, two_phases)

H, W, _ = INPUT_SHAPE


@pytest.fixture(scope="module")
def networks(phase_networks):
    return phase_networks


@pytest.fixture(scope="module")
def exported(exported_phases):
    """Versions 1 (phase 0, a ResNet) and 2 (phase 1, an AANet) of one model."""
    return exported_phases


@pytest.fixture(scope="module")
def loaded(exported):
    return {v: tf.saved_model.load(os.path.join(exported, str(v))) for v in (1, 2)}


def test_each_version_is_a_complete_directory_and_nothing_else_is_left(exported):
    assert sorted(os.listdir(exported)) == ["1", "2"]
    assert serving.export_versions(exported) == [1, 2]
    for v in ("1", "2"):
        names = os.listdir(os.path.join(exported, v))
        assert {"saved_model.pb", "variables", "assets.extra"} <= set(names)
    umask = os.umask(0)
    os.umask(umask)
    # A server running as another user must be able to read the version.
    assert os.stat(os.path.join(exported, "1")).st_mode & 0o777 == 0o777 & ~umask


def test_vocabulary_is_stored_with_the_export(exported):
    classes = serving.read_classes(os.path.join(exported, "2"))
    assert classes["class_ids"] == [7, 3, 9, 1, 0, 5]
    assert classes["labels"] == ["horse", "cat", "truck", "automobile", "airplane", "dog"]
    assert classes["top_k"] == 5 and classes["image_size"] == [H, W]
    assert serving.read_classes(os.path.join(exported, "1"))["top_k"] == 4  # min(5, 4 classes)


@pytest.mark.slow
def test_reload_in_a_fresh_process_gives_the_keras_logits(networks, exported, tmp_path):
    """Phase 0 (ResNet) and phase 1 (AANet), loaded with tf.saved_model.load in a new process."""
    pixels = images(5, seed=3)
    np.save(tmp_path / "pixels.npy", pixels)
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        pixels = tf.constant(np.load({str(tmp_path / 'pixels.npy')!r}))
        for v in (1, 2):
            model = tf.saved_model.load({exported!r} + "/" + str(v))
            out = model.signatures["serving_default"](images=pixels)
            np.save({str(tmp_path)!r} + f"/logits_{{v}}.npy", out["logits"].numpy())
            feats = model.signatures["features"](images=pixels)["features"]
            np.save({str(tmp_path)!r} + f"/features_{{v}}.npy", feats.numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    for v, network in zip((1, 2), networks):
        expected = keras_outputs(network, pixels)
        logits = np.load(tmp_path / f"logits_{v}.npy")
        assert logits.shape == (5, PHASE_CLASSES[v - 1])
        np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(np.load(tmp_path / f"features_{v}.npy"),
                                   expected["features"], rtol=0, atol=1e-5)
    # The AANet's logits are its own, not a copy of phase 0's.
    assert not np.allclose(np.load(tmp_path / "logits_2.npy")[:, :4],
                           np.load(tmp_path / "logits_1.npy"), atol=1e-3)


@pytest.mark.parametrize("batch", [1, 7])
def test_top_k_names_dataset_labels_for_any_batch(loaded, networks, batch):
    pixels = images(batch, seed=batch)
    out = {k: v.numpy() for k, v in
           loaded[2].signatures["serving_default"](images=tf.constant(pixels)).items()}
    logits = keras_outputs(networks[1], pixels)["logits"]
    order = np.argsort(-logits, axis=1)[:, :5]
    expected_ids = np.array(CLASS_ORDER)[order]
    np.testing.assert_array_equal(out["top_k_class_ids"], expected_ids)
    assert out["top_k_class_ids"].dtype == np.int64
    assert [[s.decode() for s in row] for row in out["top_k_labels"]] == \
        [[LABEL_NAMES[c] for c in row] for row in expected_ids]
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["top_k_scores"],
                               np.take_along_axis(out["probabilities"], order, axis=1), atol=1e-6)


def test_bytes_signature_decodes_and_resizes(loaded):
    signatures = loaded[1].signatures
    pixels = images(2, seed=5)
    png = [tf.io.encode_png(p).numpy() for p in pixels]
    from_png = signatures["serving_bytes"](image_bytes=tf.constant(png))
    from_pixels = signatures["serving_default"](images=tf.constant(pixels))
    # A PNG at the model's size reaches it with its exact pixels.
    np.testing.assert_array_equal(from_png["logits"].numpy(), from_pixels["logits"].numpy())

    large = images(1, seed=6, shape=(40, 24, 3))[0]
    jpeg = tf.io.encode_jpeg(large, quality=95).numpy()
    out = signatures["serving_bytes"](image_bytes=tf.constant([jpeg, png[0]]))
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    resized = tf.cast(tf.image.resize(decoded, (H, W), antialias=True)[None], tf.float32)
    reference = loaded[1].signatures["serving_default"]
    assert out["logits"].shape == (2, 4)
    assert out["top_k_labels"].shape == (2, 4)
    # Resizing happens inside: the same logits as resizing first (to within uint8 rounding).
    rounded = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    np.testing.assert_allclose(out["logits"].numpy()[0],
                               reference(images=rounded)["logits"].numpy()[0], atol=0.5)

    with pytest.raises(tf.errors.InvalidArgumentError):
        signatures["serving_bytes"](image_bytes=tf.constant([b"not an image"]))


@pytest.mark.slow
def test_saved_model_cli_lists_the_three_signatures(exported):
    command = ["saved_model_cli", "show", "--all", "--dir", os.path.join(exported, "2")]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    except FileNotFoundError:
        command[:1] = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=True)
    blocks = dict(re.findall(r"signature_def\['(\w+)'\]:(.*?)Method name is", result.stdout,
                             flags=re.S))
    assert {"serving_default", "serving_bytes", "features"} <= set(blocks)

    def tensors(block, kind):
        found = re.findall(rf"{kind}\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))",
                           block)
        return {name: (dtype, shape) for name, dtype, shape in found}

    classification = {"logits": ("DT_FLOAT", "(-1, 6)"), "probabilities": ("DT_FLOAT", "(-1, 6)"),
                      "top_k_class_ids": ("DT_INT64", "(-1, 5)"),
                      "top_k_scores": ("DT_FLOAT", "(-1, 5)"),
                      "top_k_labels": ("DT_STRING", "(-1, 5)")}
    images_input = {"images": ("DT_UINT8", f"(-1, {H}, {W}, 3)")}
    assert tensors(blocks["serving_default"], "inputs") == images_input
    assert tensors(blocks["serving_default"], "outputs") == classification
    # Declared of unknown rank so that the graph's own rank check stays (serving.py).
    assert re.search(r"inputs\['image_bytes'\] tensor_info:\s+dtype: DT_STRING\s+"
                     r"shape: unknown_rank", blocks["serving_bytes"])
    assert tensors(blocks["serving_bytes"], "outputs") == classification
    assert tensors(blocks["features"], "inputs") == images_input
    assert tensors(blocks["features"], "outputs") == {"features": ("DT_FLOAT", "(-1, 64)")}


def test_warmup_request_is_a_valid_serving_default_request(exported, loaded):
    path = os.path.join(exported, "2", serving.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    assert len(records) == 1
    request = prediction_log_pb2.PredictionLog.FromString(records[0]).predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    pixels = tf.make_ndarray(request.inputs["images"])
    assert pixels.dtype == np.uint8 and pixels.shape == (1, H, W, 3)
    out = loaded[2].signatures["serving_default"](images=tf.constant(pixels))
    assert out["top_k_class_ids"].shape == (1, 5)


@pytest.mark.slow  # writes a SavedModel
def test_an_existing_version_is_never_overwritten_silently(networks, tmp_path):
    base = str(tmp_path / "aanets")
    phase0 = networks[0]
    serving.export_phase(phase0, base, 1, CLASS_ORDER[:4], LABEL_NAMES)
    before = open(os.path.join(base, "1", "saved_model.pb"), "rb").read()
    with pytest.raises(FileExistsError) as e:
        serving.export_phase(phase0, base, 1, CLASS_ORDER[4:8], LABEL_NAMES)
    assert os.path.join(base, "1") in str(e.value) and "overwrite" in str(e.value)
    assert open(os.path.join(base, "1", "saved_model.pb"), "rb").read() == before

    path = serving.export_phase(phase0, base, 1, CLASS_ORDER[4:8], LABEL_NAMES, top_k=2,
                                overwrite=True)
    assert path == os.path.join(base, "1")
    assert serving.read_classes(path)["class_ids"] == CLASS_ORDER[4:8]
    out = tf.saved_model.load(path).signatures["serving_default"](images=images(1))
    assert out["top_k_class_ids"].shape == (1, 2)
    assert os.listdir(base) == ["1"]


def test_a_failed_export_leaves_no_version_behind(networks, tmp_path, monkeypatch):
    base = tmp_path / "aanets"

    def crash(network, path, *args, **kwargs):
        os.makedirs(os.path.join(path, "variables"))
        open(os.path.join(path, "saved_model.pb"), "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(serving, "write_saved_model", crash)
    with pytest.raises(OSError, match="disk full"):
        serving.export_phase(networks[0], str(base), 3, CLASS_ORDER[:4], LABEL_NAMES)
    assert os.listdir(base) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(version=0), "version=0"),
    (dict(version="2"), "version='2'"),
    (dict(version=True), "version=True"),
    (dict(class_ids=[7, 3, 9]), "Received: 3 class ids"),
    (dict(class_ids=[7, 3, 3, 1]), "must be distinct"),
    (dict(class_ids=[7, 3, 9, 10]), "class_ids[3]=10 has no name"),
    (dict(top_k=0), "top_k=0"),
])
def test_bad_arguments_are_named(networks, tmp_path, kwargs, message):
    args = dict(version=1, class_ids=CLASS_ORDER[:4], top_k=5) | kwargs
    with pytest.raises(ValueError) as e:
        serving.export_phase(networks[0], str(tmp_path / "m"), args["version"],
                             args["class_ids"], LABEL_NAMES, top_k=args["top_k"])
    assert message in str(e.value)
    assert not (tmp_path / "m").exists()


def test_read_classes_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="classes.json is missing"):
        serving.read_classes(str(tmp_path))


@pytest.mark.slow  # writes a SavedModel
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_mixed_precision_network_exports_float32_outputs(policy, tmp_path):
    from aanets_tf.training import precision

    with precision.precision_policy(policy):
        _, network = two_phases(seed=3)
    assert network.get_layer("aanet_phase1").get_layer(
        "plastic_level1").compute_dtype == policy.removeprefix("mixed_")
    version = serving.export_phase(network, str(tmp_path / "aanets"), 1,
                                   CLASS_ORDER[:PHASE_CLASSES[1]], LABEL_NAMES)
    pixels = images(3, seed=4)
    out = tf.saved_model.load(version).signatures["serving_default"](images=tf.constant(pixels))
    assert out["logits"].dtype == out["probabilities"].dtype == tf.float32
    # The graph (oneDNN's fused, BatchNorm-folded kernels) and Keras round bfloat16
    # activations at different points: agreement within bfloat16's precision (2^-8).
    tolerance = 1e-2 if policy == "mixed_bfloat16" else 1e-5
    np.testing.assert_allclose(out["logits"].numpy(), keras_outputs(network, pixels)["logits"],
                               rtol=tolerance, atol=tolerance)


@pytest.fixture(scope="module")
def limited(limited_export):
    """Version 1 exported with small limits (tests/conftest.py), loaded."""
    path, limits = limited_export
    return path, tf.saved_model.load(path), limits


def _png(array):
    return tf.io.encode_png(array).numpy()


def test_limits_are_stored_and_hostile_requests_refused_before_work(limited):
    from support import bomb_png

    path, model, limits = limited
    assert serving.read_classes(path)["limits"] == limits.to_dict()
    by_bytes = model.signatures[serving.SERVING_BYTES]
    good = _png(images(1, seed=3)[0])
    normal = by_bytes(image_bytes=tf.constant([good]))["logits"].numpy()
    # A header declaring 60,000 x 60,000 pixels (10.8 GB decoded) in a few KB.
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_pixels=4096"):
        by_bytes(image_bytes=tf.constant([good, bomb_png()]))
    big = _png(np.random.RandomState(0).randint(0, 256, (48, 48, 3)).astype(np.uint8))
    assert len(big) > limits.max_image_bytes
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_bytes=4000"):
        by_bytes(image_bytes=tf.constant([big]))
    for garbage, words in ((b"", "empty"), (b"<html>not an image", "no known image signature"),
                           (good[:20], "header")):
        with pytest.raises(tf.errors.InvalidArgumentError, match=words):
            by_bytes(image_bytes=tf.constant([garbage]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_batch=3"):
        by_bytes(image_bytes=tf.constant([good] * 4))
    for name in (serving.SERVING_DEFAULT, serving.FEATURES):
        with pytest.raises(tf.errors.InvalidArgumentError, match="max_batch=3"):
            model.signatures[name](images=tf.constant(images(4)))
        model.signatures[name](images=tf.constant(images(3)))  # at the limit: answered
    # Still answering normal requests, with the same outputs.
    np.testing.assert_array_equal(by_bytes(image_bytes=tf.constant([good]))["logits"].numpy(),
                                  normal)


def test_serving_limits_must_be_positive_integers():
    with pytest.raises(ValueError, match="max_batch=0"):
        serving.ServingLimits(max_batch=0)
    with pytest.raises(ValueError, match="max_image_pixels=1.5"):
        serving.ServingLimits(max_image_pixels=1.5)


@pytest.mark.parametrize("name", [serving.SERVING_DEFAULT, serving.FEATURES])
@pytest.mark.parametrize("shape", [(1, 8, 8, 3), (2, 32, 16, 3), (1, 16, 16, 4), (16, 16, 3),
                                   (1, 1, 16, 16, 3)])
def test_pixel_signatures_refuse_another_size_naming_the_expected_one(limited, name, shape):
    """TF Serving does not compare shapes with the signature: the graph must refuse them."""
    _, model, _ = limited
    fn = model.signatures[name]
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        fn(images=tf.zeros(shape, tf.uint8))
    assert f"16 x 16 pixels, of shape (batch, {H}, {W}, 3)" in e.value.message
    assert f"Received: shape=] [{' '.join(str(d) for d in shape)}]" in e.value.message
    assert fn(images=tf.zeros((1, H, W, 3), tf.uint8))[
        "features" if name == serving.FEATURES else "logits"].shape[0] == 1


def test_bytes_signature_refuses_other_ranks_and_every_signature_an_empty_batch(limited):
    _, model, _ = limited
    fn = model.signatures[serving.SERVING_BYTES]
    good = _png(images(1, seed=3)[0])
    for bad in (tf.constant(good), tf.constant([[good]])):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"of shape \(batch,\)"):
            fn(image_bytes=bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"at least 1 .* batch=\] \[0\]"):
        fn(image_bytes=tf.zeros([0], tf.string))
    for name in (serving.SERVING_DEFAULT, serving.FEATURES):
        with pytest.raises(tf.errors.InvalidArgumentError, match="at least 1"):
            model.signatures[name](images=tf.zeros((0, H, W, 3), tf.uint8))
    assert fn(image_bytes=tf.constant([good]))["logits"].shape == (1, PHASE_CLASSES[0])


@pytest.mark.slow  # writes a SavedModel
def test_export_without_checks_exists_only_to_measure_them(networks, tmp_path):
    """`checks=False` (the latency benchmark's baseline) really leaves the checks out."""
    path = str(tmp_path / "unchecked")
    serving.write_saved_model(networks[0], path, CLASS_ORDER[:4], LABEL_NAMES, checks=False)
    fn = tf.saved_model.load(path).signatures[serving.SERVING_DEFAULT]
    assert fn(images=tf.zeros((4, H, W, 3), tf.uint8))["logits"].shape == (4, 4)


def test_versions_linked_from_outside_are_refused_and_odd_names_ignored(exported, tmp_path):
    base = tmp_path / "aanets"
    base.mkdir()
    os.symlink(os.path.join(exported, "1"), base / "1")
    with pytest.raises(serving.ForeignExportError, match="resolves outside it") as e:
        serving.export_versions(str(base))
    assert str(base / "1") in str(e.value)
    with pytest.raises(serving.ForeignExportError):
        serving.resolve_version(str(base))
    os.unlink(base / "1")
    import shutil

    shutil.copytree(os.path.join(exported, "2"), base / "2")
    os.symlink("2", base / "3")  # a link inside the base path is the owner's choice
    for odd in ("latest", "02", "0"):
        (base / odd).mkdir()
        (base / odd / "saved_model.pb").write_bytes(b"")
    (base / ".tmp-4-abc").mkdir()
    with pytest.warns(UserWarning, match="not a version directory") as warned:
        assert serving.export_versions(str(base)) == [2, 3]
    assert sorted(os.path.basename(str(w.message).split(" ")[0]) for w in warned) == \
        ["0", "02", "latest"]
    with pytest.warns(UserWarning):
        assert serving.resolve_version(str(base)) == (str(base / "3"), 3)
        assert serving.resolve_version(str(base), 2) == (str(base / "2"), 2)
        with pytest.raises(FileNotFoundError, match=r"has no version 7; it has \[2, 3\]"):
            serving.resolve_version(str(base), 7)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "saved_model.pb").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is not an aanets_tf export"):
        serving.resolve_version(str(foreign))


def test_read_limits_gives_the_stored_limits_and_refuses_unknown_keys(limited, tmp_path):
    import json
    import shutil

    path, _, limits = limited
    assert serving.read_limits(path) == limits
    copy = tmp_path / "1"
    shutil.copytree(path, copy)
    classes = json.loads((copy / serving.CLASSES_FILE).read_text())
    classes["limits"]["max_sleep"] = 1
    (copy / serving.CLASSES_FILE).write_text(json.dumps(classes))
    with pytest.raises(ValueError, match="max_sleep"):
        serving.read_limits(str(copy))
    del classes["limits"]
    (copy / serving.CLASSES_FILE).write_text(json.dumps(classes))
    assert serving.read_limits(str(copy)) == serving.ServingLimits()
