"""Exports from a run's workdir (aanets_tf/protocol/run_export.py, export/export_saved_model.py) and
export/models_config.py, including the refusal of workdirs, checkpoints and export directories
that are not the project's own.

The tools' flags are only parsed in subprocesses: they share names
(--workdir, --model_name, ...) with tools/train.py's flags defined by other
test files in this process.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from aanets_tf.config import TrainConfig
from aanets_tf.protocol import checkpointing, run_export
from aanets_tf.serving import serving
from support import REPO_ROOT
from export import models_config
from serving_networks import (CLASS_ORDER, LABEL_NAMES, PHASE_CLASSES, images, keras_outputs,
                              two_phases)

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def networks():
    return two_phases(seed=1)


@pytest.fixture(scope="module")
def workdir(networks, tmp_path_factory):
    """A finished two-phase run: config.json, metrics.json and both phase checkpoints."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = TrainConfig(workdir=workdir, arch="resnet8", model_name="cifar_aanets")
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json())
    metrics = {"class_order": CLASS_ORDER, "label_names": LABEL_NAMES,
               "phases": [{"num_seen_classes": n} for n in PHASE_CLASSES]}
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    for phase, network in enumerate(networks):
        checkpointing.save_network(network, workdir, phase)
    return workdir


@pytest.mark.slow  # writes a SavedModel
def test_exports_the_last_completed_phase_by_default(workdir, networks):
    path = run_export.export_from_workdir(workdir)
    assert path == os.path.join(workdir, "export", "cifar_aanets", "2")
    assert serving.read_classes(path)["class_ids"] == CLASS_ORDER[:6]
    pixels = images(3, seed=9)
    logits = tf.saved_model.load(path).signatures["serving_default"](images=pixels)["logits"]
    np.testing.assert_allclose(logits.numpy(), keras_outputs(networks[1], pixels)["logits"],
                               rtol=0, atol=1e-5)
    with pytest.raises(FileExistsError, match="already exists"):
        run_export.export_from_workdir(workdir)


@pytest.mark.slow  # writes a SavedModel
def test_phase_export_dir_and_model_name_override_the_run(workdir, tmp_path):
    path = run_export.export_from_workdir(workdir, 0, export_dir=str(tmp_path),
                                                  model_name="other", top_k=3)
    assert path == str(tmp_path / "other" / "1")
    classes = serving.read_classes(path)
    assert classes["class_ids"] == CLASS_ORDER[:4] and classes["top_k"] == 3


def test_workdir_problems_are_explained(workdir, tmp_path):
    with pytest.raises(ValueError, match=r"Phase 5 has no checkpoint.*Completed phases: \[0, 1\]"):
        run_export.export_from_workdir(workdir, 5, export_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        run_export.export_from_workdir(str(tmp_path))

    broken = tmp_path / "broken"
    shutil.copytree(workdir, broken)
    (broken / "metrics.json").write_text(json.dumps(
        {"class_order": CLASS_ORDER, "label_names": LABEL_NAMES,
         "phases": [{"num_seen_classes": 4}, {"num_seen_classes": 8}]}))
    with pytest.raises(ValueError, match="says phase 1 saw 8 classes but its checkpoint has 6"):
        run_export.export_from_workdir(str(broken), export_dir=str(tmp_path))


@pytest.mark.slow
def test_export_command_line(workdir, tmp_path):
    tool = os.path.join(REPO_ROOT, "export", "export_saved_model.py")
    command = [sys.executable, tool, f"--workdir={workdir}", "--phase=0",
               f"--export_dir={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 0, done.stderr
    assert f"Exported {tmp_path / 'cifar_aanets' / '1'}" in done.stdout
    assert serving.export_versions(str(tmp_path / "cifar_aanets")) == [1]


def _parsed(text):
    return models_config.parse_models_config(text).model_config_list.config


def _fake_versions(base, versions=(1, 2, 3)):
    """Version directories as export_versions counts them (holding saved_model.pb)."""
    for v in versions:
        (base / str(v)).mkdir(parents=True)
        (base / str(v) / "saved_model.pb").write_bytes(b"")


def test_models_config_policies_and_labels_parse_with_tf_serving_protos(tmp_path):
    base = tmp_path / "aanets"
    _fake_versions(base)
    text = models_config.models_config_text([
        models_config.model_config("aanets", str(base), policy="specific", versions=[2, 3],
                                   version_labels={"stable": 2, "canary": 3}),
        models_config.model_config("latest2", str(base), policy="latest", num_latest=2),
        models_config.model_config("everything", "/models/aanets", policy="all"),
    ])
    server_config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    specific, latest, everything = server_config.model_config_list.config
    assert (specific.name, specific.base_path, specific.model_platform) == \
        ("aanets", str(base), "tensorflow")
    assert list(specific.model_version_policy.specific.versions) == [2, 3]
    assert dict(specific.version_labels) == {"stable": 2, "canary": 3}
    assert latest.model_version_policy.latest.num_versions == 2
    assert everything.model_version_policy.WhichOneof("policy_choice") == "all"


@pytest.mark.parametrize("kwargs, message", [
    (dict(policy="newest"), "policy='newest'"),
    (dict(policy="specific"), "needs at least one version"),
    (dict(policy="specific", versions=[2, 7]), r"Versions \[7\] do not exist"),
    (dict(policy="latest", versions=[2]), "applies to the `specific` policy only"),
    (dict(policy="specific", versions=[2], version_labels={"canary": 3}),
     "names version 3, which the `specific` policy does not serve"),
    (dict(policy="latest", version_labels={"stable": 1}),
     r"'latest' policy would not load .* \(it serves \[3\]\)"),
    (dict(version_labels={"2x": 3}), "label='2x'"),
    (dict(num_latest=0), "num_latest=0"),
])
def test_models_config_refuses_what_tf_serving_would_refuse(tmp_path, kwargs, message):
    _fake_versions(tmp_path)
    with pytest.raises(ValueError, match=message):
        models_config.model_config("aanets", str(tmp_path), **kwargs)


@pytest.mark.slow
def test_models_config_command_line(tmp_path):
    base = tmp_path / "aanets"
    _fake_versions(base, (1, 2))
    tool = os.path.join(REPO_ROOT, "export", "models_config.py")
    output = tmp_path / "models.config"
    done = subprocess.run([sys.executable, tool, f"--base_path={base}", "--policy=all",
                           "--labels=stable=1,canary=2", f"--output={output}"],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 0, done.stderr
    (config,) = _parsed(output.read_text())
    assert config.base_path == str(base)
    assert dict(config.version_labels) == {"stable": 1, "canary": 2}

    done = subprocess.run([sys.executable, tool, f"--base_path={base}", "--labels=stable"],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode != 0
    assert "label=version" in done.stderr and "'stable'" in done.stderr

    outside = tmp_path / "elsewhere"
    _fake_versions(outside, (3,))
    os.symlink(outside / "3", base / "3")
    done = subprocess.run([sys.executable, tool, f"--base_path={base}", "--policy=all"],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode != 0
    assert "Version 3" in done.stderr and "resolves outside it" in done.stderr


def test_a_workdir_file_leading_outside_is_refused(workdir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    checkpoint = copy / "checkpoints" / "phase_1.keras"
    os.unlink(checkpoint)
    os.symlink(os.path.join(workdir, "checkpoints", "phase_1.keras"), checkpoint)
    with pytest.raises(run_export.ForeignWorkdirError, match="resolves outside the workdir"):
        run_export.load_phase(str(copy))
    assert run_export.load_phase(str(copy), 0).class_ids == CLASS_ORDER[:4]
    (copy / "metrics.json").write_text(json.dumps({"class_order": ["7"], "label_names": []}))
    with pytest.raises(run_export.ForeignWorkdirError, match="list of integers"):
        run_export.load_phase(str(copy), 0)
    with pytest.raises(FileNotFoundError, match="Received: workdir="):
        run_export.load_phase(str(tmp_path / "nothing"))


@pytest.mark.slow
def test_a_checkpoint_with_a_lambda_layer_is_refused_even_with_unsafe_mode_on(tmp_path):
    """A Lambda layer carries Python bytecode that loading would run."""
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2, name="doubler")(inputs))
    path = str(tmp_path / "phase_0.keras")
    model.save(path)
    with pytest.raises(checkpointing.UnsafeCheckpointError, match=r"\['doubler'\]"):
        checkpointing.load_network(path)
    # Keras' own refusal is overridden process-wide by enable_unsafe_deserialization;
    # the config is read before Keras sees it, so the refusal stands.
    done = subprocess.run([sys.executable, "-c", (
        "import keras, sys; keras.config.enable_unsafe_deserialization(); "
        "from aanets_tf.protocol import checkpointing\n"
        "try:\n    checkpointing.load_network(sys.argv[1])\n"
        "except checkpointing.UnsafeCheckpointError as e:\n    print('refused', e)"), path],
        capture_output=True, text=True, timeout=120, env=ENV, cwd=REPO_ROOT)
    assert done.stdout.startswith("refused"), done.stderr[-2000:]


def test_nothing_turns_keras_safe_mode_off():
    """No source calls enable_unsafe_deserialization or passes safe_mode=False, and every
    load_model call passes safe_mode=True (read from the code, not from its comments)."""
    import ast
    import pathlib

    sources = [p for d in ("aanets_tf", "tools", "export", "benchmarks")
               for p in (pathlib.Path(REPO_ROOT) / d).rglob("*.py")]
    assert len(sources) > 20
    load_calls = 0
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            safe = {k.arg: k.value for k in node.keywords}.get("safe_mode")
            assert name != "enable_unsafe_deserialization", path
            assert not (isinstance(safe, ast.Constant) and safe.value is False), path
            # keras' load_model (not a tuner method of the same name, which takes a trial)
            if name == "load_model" and isinstance(node.func, ast.Attribute) and \
                    getattr(node.func.value, "attr", "") == "models":
                load_calls += 1
                assert isinstance(safe, ast.Constant) and safe.value is True, path
    assert load_calls >= 1
