"""TF Serving's `models.config`: which versions of a model are served, and their labels.

`export_versions` is the one listing of the versions under a base path (the
exporter, the client and the tools all use it; it refuses versions linked from
outside the base path). A label (`stable`, `canary`) names one version; TF
Serving accepts a label only for a version it has loaded, so labels must name
served versions. When the base path exists on this machine its versions are
checked too; a container path such as `/models/aanets` is taken as given.
"""

from __future__ import annotations

import os
import re
import warnings

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

POLICIES = ("latest", "all", "specific")
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


class ForeignExportError(ValueError):
    """An export directory holds something `export_phase` would not have written there."""


def version_number(name: str) -> int | None:
    """`name` as a version number, or None: positive, in decimal, without leading zeros."""
    if name.isascii() and name.isdigit() and name == str(int(name)) and int(name) >= 1:
        return int(name)
    return None


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(directory)]) == \
        os.path.realpath(directory)


def export_versions(base_dir: str) -> list[int]:
    """Versions present under a model's base path, ascending (as TF Serving sees them).

    A version is a directory named by a positive number that holds `saved_model.pb`
    (TF Serving loads exactly those). Hidden entries (the staging directories of
    `export_phase`) are skipped; other names that are not numbers (`v2`, `01`, `latest`)
    are skipped with a warning, as TF Serving skips them. A version that resolves
    outside `base_dir` (a symlink to another tree) raises `ForeignExportError`: the
    project never writes one, and serving it would serve files nobody exported here.
    """
    if not os.path.isdir(base_dir):
        return []
    versions = []
    for name in sorted(os.listdir(base_dir)):
        path = os.path.join(base_dir, name)
        if name.startswith("."):
            continue
        version = version_number(name)
        if version is None:
            warnings.warn(f"{path} is not a version directory (a version is named by a "
                          "positive number without leading zeros); ignored.", stacklevel=2)
            continue
        if not _inside(path, base_dir):
            raise ForeignExportError(
                f"Version {version} of {base_dir} resolves outside it, to "
                f"{os.path.realpath(path)}: not an export of this model. Remove the link or "
                f"copy the version into {base_dir}. Received: {path}")
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            versions.append(version)
    return sorted(versions)


def _versions_on_disk(base_path: str) -> list[int] | None:
    """`export_versions` of a local base path, or None if it is not local."""
    if "://" in base_path or not os.path.isdir(base_path):
        return None
    return export_versions(base_path)


def model_config(name: str, base_path: str, *, policy: str = "latest", num_latest: int = 1,
                 versions: list[int] | tuple[int, ...] = (),
                 version_labels: dict[str, int] | None = None
                 ) -> model_server_config_pb2.ModelConfig:
    """One model's entry of `models.config`, validated against TF Serving's rules.

    Args:
        name: the model name clients ask for (`/v1/models/<name>`).
        base_path: the directory holding the numeric version directories, as
            the server sees it.
        policy: `latest`, `all` or `specific`.
        num_latest: versions served under `latest`.
        versions: versions served under `specific`.
        version_labels: label -> version, e.g. `{"stable": 4, "canary": 5}`.
    """
    version_labels = dict(version_labels or {})
    if not name or "/" in name:
        raise ValueError(f"`name` must be a non-empty name without '/'. Received: name={name!r}")
    if not base_path:
        raise ValueError("`base_path` must name the model's export directory. "
                         f"Received: base_path={base_path!r}")
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES}. Received: policy={policy!r}")
    if policy == "latest" and num_latest < 1:
        raise ValueError(f"`num_latest` must be >= 1. Received: num_latest={num_latest}")
    if policy == "specific" and not versions:
        raise ValueError("The `specific` policy needs at least one version. "
                         f"Received: versions={list(versions)}")
    if policy != "specific" and versions:
        raise ValueError(f"`versions` applies to the `specific` policy only. Received: "
                         f"policy={policy!r}, versions={list(versions)}")
    bad = [v for v in versions if v < 1]
    if bad:
        raise ValueError(f"Versions must be positive integers. Received: versions={list(versions)}")
    for label, version in version_labels.items():
        if not _LABEL.match(label):
            raise ValueError("A version label must start with a letter and hold letters, digits, "
                             f"'_' or '-'. Received: label={label!r}")
        if policy == "specific" and version not in versions:
            raise ValueError(f"Label {label!r} names version {version}, which the `specific` "
                             f"policy does not serve (versions {sorted(versions)}); TF Serving "
                             "only labels loaded versions.")

    on_disk = _versions_on_disk(base_path)
    if on_disk is not None:
        missing = sorted(set(versions) - set(on_disk))
        if missing:
            raise ValueError(f"Versions {missing} do not exist under {base_path} "
                             f"(found {on_disk}).")
        served = {"latest": on_disk[-num_latest:], "all": on_disk,
                  "specific": sorted(versions)}[policy]
        for label, version in version_labels.items():
            if version not in served:
                raise ValueError(f"Label {label!r} names version {version}, which the "
                                 f"{policy!r} policy would not load from {base_path} "
                                 f"(it serves {served}); TF Serving only labels loaded "
                                 "versions.")

    config = model_server_config_pb2.ModelConfig(name=name, base_path=base_path,
                                                 model_platform="tensorflow")
    choice = config.model_version_policy
    if policy == "latest":
        choice.latest.num_versions = num_latest
    elif policy == "all":
        choice.all.SetInParent()
    else:
        choice.specific.versions.extend(sorted(versions))
    for label in sorted(version_labels):
        config.version_labels[label] = version_labels[label]
    return config


def models_config_text(configs: list[model_server_config_pb2.ModelConfig]) -> str:
    """`models.config` text (a `ModelServerConfig` text proto) serving `configs`."""
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"Model names must be distinct. Received: names={names}")
    server_config = model_server_config_pb2.ModelServerConfig()
    server_config.model_config_list.config.extend(configs)
    return text_format.MessageToString(server_config)


def parse_models_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse `models.config` text with TF Serving's own proto."""
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def parse_labels(items: list[str]) -> dict[str, int]:
    """`["stable=4", "canary=5"]` -> `{"stable": 4, "canary": 5}`."""
    labels = {}
    for item in items:
        label, sep, version = item.partition("=")
        if not sep or not version.strip().isdigit():
            raise ValueError(f"A label is written label=version, e.g. stable=3. Received: {item!r}")
        if label in labels:
            raise ValueError(f"Label {label!r} is given twice.")
        labels[label.strip()] = int(version)
    return labels
