"""export/export_saved_model.py (exports from a run's checkpoints) and export/models_config.py.

The tools' flags are only parsed in subprocesses: they share names
(--workdir, --model_name, ...) with tools/train.py's flags defined by other
test files in this process.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from aanets_tf import checkpointing, serving
from aanets_tf.config import TrainConfig
from conftest import REPO_ROOT
from export import export_saved_model, models_config
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


def test_exports_the_last_completed_phase_by_default(workdir, networks):
    path = export_saved_model.export_from_workdir(workdir)
    assert path == os.path.join(workdir, "export", "cifar_aanets", "2")
    assert serving.read_classes(path)["class_ids"] == CLASS_ORDER[:6]
    pixels = images(3, seed=9)
    logits = tf.saved_model.load(path).signatures["serving_default"](images=pixels)["logits"]
    np.testing.assert_allclose(logits.numpy(), keras_outputs(networks[1], pixels)["logits"],
                               rtol=0, atol=1e-5)
    with pytest.raises(FileExistsError, match="already exists"):
        export_saved_model.export_from_workdir(workdir)


def test_phase_export_dir_and_model_name_override_the_run(workdir, tmp_path):
    path = export_saved_model.export_from_workdir(workdir, 0, export_dir=str(tmp_path),
                                                  model_name="other", top_k=3)
    assert path == str(tmp_path / "other" / "1")
    classes = serving.read_classes(path)
    assert classes["class_ids"] == CLASS_ORDER[:4] and classes["top_k"] == 3


def test_workdir_problems_are_explained(workdir, tmp_path):
    with pytest.raises(ValueError, match=r"Phase 5 has no checkpoint.*Completed phases: \[0, 1\]"):
        export_saved_model.export_from_workdir(workdir, 5, export_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        export_saved_model.export_from_workdir(str(tmp_path))

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "checkpoints"):
        os.symlink(os.path.join(workdir, name), broken / name)
    (broken / "metrics.json").write_text(json.dumps(
        {"class_order": CLASS_ORDER, "label_names": LABEL_NAMES,
         "phases": [{"num_seen_classes": 4}, {"num_seen_classes": 8}]}))
    with pytest.raises(ValueError, match="says phase 1 saw 8 classes but its checkpoint has 6"):
        export_saved_model.export_from_workdir(str(broken), export_dir=str(tmp_path))


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


def test_models_config_policies_and_labels_parse_with_tf_serving_protos(tmp_path):
    base = tmp_path / "aanets"
    for v in (1, 2, 3):
        (base / str(v)).mkdir(parents=True)
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
    for v in (1, 2, 3):
        (tmp_path / str(v)).mkdir()
    with pytest.raises(ValueError, match=message):
        models_config.model_config("aanets", str(tmp_path), **kwargs)


def test_models_config_command_line(tmp_path):
    base = tmp_path / "aanets"
    for v in (1, 2):
        (base / str(v)).mkdir(parents=True)
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
