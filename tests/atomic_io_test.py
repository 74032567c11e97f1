"""Tests for aanets_tf.atomic_io."""

import json
import math
import os
import stat

import pytest

from aanets_tf import atomic_io


def _leftovers(directory):
    return [name for name in os.listdir(directory) if name.startswith(".tmp-")]


def test_write_text_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "dir" / "a.txt"
    atomic_io.write_text(str(path), "first")
    assert path.read_text() == "first"
    atomic_io.write_text(str(path), "second\n")
    assert path.read_text() == "second\n"
    assert _leftovers(path.parent) == []


def test_written_file_has_the_permissions_of_a_plain_write(tmp_path):
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    atomic = tmp_path / "atomic.json"
    atomic_io.write_json(str(atomic), {"x": 1})
    assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_failed_write_mid_way_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old content")

    def broken_fsync(fd):
        raise OSError("disk full")

    # The new text is already written to the temporary file when fsync fails.
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_io.write_text(str(path), "new content " * 1000)
    assert path.read_text() == "old content"
    assert _leftovers(tmp_path) == []


def test_failed_rename_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        atomic_io.write_text(str(path), "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_unencodable_text_keeps_old_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_io.write_text(str(path), "ok so far \ud800 broken")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_write_json_round_trip_and_rejects_nan(tmp_path):
    path = tmp_path / "m.json"
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    atomic_io.write_json(str(path), obj)
    assert json.loads(path.read_text()) == obj
    assert path.read_text().endswith("\n")
    with pytest.raises(ValueError):
        atomic_io.write_json(str(path), {"x": math.nan})
    assert json.loads(path.read_text()) == obj
    assert _leftovers(tmp_path) == []


def test_staged_path_file_success(tmp_path):
    path = tmp_path / "model.keras"
    path.write_text("old")
    with atomic_io.staged_path(str(path)) as tmp:
        assert os.path.dirname(os.path.dirname(tmp)) == str(tmp_path)
        assert os.path.basename(tmp) == "model.keras"
        assert not os.path.exists(tmp)
        with open(tmp, "w") as f:
            f.write("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_staged_path_suffix(tmp_path):
    path = tmp_path / "weights"
    with atomic_io.staged_path(str(path), suffix=".npz") as tmp:
        assert tmp.endswith("weights.npz")
        with open(tmp, "w") as f:
            f.write("x")
    assert path.read_text() == "x"


def test_staged_path_replaces_directory(tmp_path):
    path = tmp_path / "export"
    path.mkdir()
    (path / "stale.pb").write_text("stale")
    with atomic_io.staged_path(str(path)) as tmp:
        os.makedirs(os.path.join(tmp, "variables"))
        with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
            f.write("fresh")
    assert sorted(os.listdir(path)) == ["saved_model.pb", "variables"]
    assert (path / "saved_model.pb").read_text() == "fresh"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", ["file", "directory", None])
def test_staged_path_failure_changes_nothing(tmp_path, existing):
    path = tmp_path / "target"
    if existing == "file":
        path.write_text("old")
    elif existing == "directory":
        path.mkdir()
        (path / "keep.txt").write_text("keep")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_io.staged_path(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise RuntimeError("boom")
    if existing == "file":
        assert path.read_text() == "old"
    elif existing == "directory":
        assert os.listdir(path) == ["keep.txt"]
    else:
        assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_staged_path_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "c.txt"
    with atomic_io.staged_path(str(path)) as tmp:
        with open(tmp, "w") as f:
            f.write("deep")
    assert path.read_text() == "deep"
