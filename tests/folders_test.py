"""Tests for aanets_tf.data.folders: image folder trees as datasets, and what they may hold."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from aanets_tf.data import datasets, folders
from support import bomb_png


def _png(value, size=(9, 7), mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size, value).save(out, format="PNG")
    return out.getvalue()


def _tree(root, classes, per_class=3, test=True):
    for name, value in classes.items():
        for split, count in (("train", per_class), ("test", 2 if test else 0)):
            directory = root / split / name
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (directory / f"{i:02d}.png").write_bytes(_png((value, i * 10, 0)))
    return root


def test_classes_files_and_labels(tmp_path):
    root = _tree(tmp_path / "data", {"b cat": 10, "a dog": 50, "żółw": 90})
    data = folders.load_folder_dataset(str(root), log=lambda _: None)
    # Labels follow sorted folder names; names with spaces and unicode stay labels.
    assert data.label_names == ["a dog", "b cat", "żółw"] and data.num_classes == 3
    np.testing.assert_array_equal(np.bincount(data.train.labels), [3, 3, 3])
    np.testing.assert_array_equal(np.bincount(data.test.labels), [2, 2, 2])
    images = datasets.decoded_images(data.train)
    assert images.shape == (9, 7, 9, 3)
    np.testing.assert_array_equal(images[data.train.labels == 2][:, 0, 0, 0], [90] * 3)
    assert data.image_shape is None and data.skipped == []


def test_hidden_entries_are_ignored_other_files_skipped_and_counted(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 10, "dog": 50})
    (root / "train" / ".git").mkdir()
    (root / "train" / ".git" / "x.png").write_bytes(_png(1))
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "cat" / "._00.png").write_bytes(b"AppleDouble")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "truncated.png").write_bytes(_png(3, (64, 64))[:60])
    (root / "train" / "dog" / "bomb.png").write_bytes(bomb_png())
    lines = []
    data = folders.load_folder_dataset(str(root), log=lines.append)
    assert data.label_names == ["cat", "dog"]
    np.testing.assert_array_equal(np.bincount(data.train.labels), [3, 3])
    reasons = {os.path.basename(s.name): s.reason for s in data.skipped}
    assert set(reasons) == {"notes.txt", "empty.jpg", "truncated.png", "bomb.png"}
    assert "not an image file" in reasons["notes.txt"]
    assert "max_image_pixels" in reasons["bomb.png"]
    assert any("Skipped 4 file(s)" in line for line in lines)
    with pytest.raises(datasets.BadImageError, match="notes.txt"):
        folders.load_folder_dataset(str(root), strict_images=True, log=lambda _: None)
    (root / "train" / "cat" / "notes.txt").unlink()
    with pytest.raises(datasets.BadImageError, match=r"3 bad image\(s\).*empty.jpg"):
        folders.load_folder_dataset(str(root), strict_images=True, log=lambda _: None)


def test_empty_or_missing_folders_are_named(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 10})
    (root / "train" / "dog").mkdir()
    with pytest.raises(folders.FolderError, match=r"\['dog'\].*hold no images"):
        folders.load_folder_dataset(str(root), log=lambda _: None)
    with pytest.raises(folders.FolderError, match="is not a directory"):
        folders.load_folder_dataset(str(tmp_path / "nowhere"), log=lambda _: None)
    (tmp_path / "flat").mkdir()
    with pytest.raises(folders.FolderError, match="no class folders"):
        folders.load_folder_dataset(str(tmp_path / "flat"), log=lambda _: None)
    bad = _tree(tmp_path / "bad", {"cat": 10})
    (bad / "train" / "cat" / "00.png").write_bytes(b"")
    (bad / "train" / "cat" / "01.png").write_bytes(b"")
    (bad / "train" / "cat" / "02.png").write_bytes(b"")
    with pytest.raises(folders.FolderError, match="'cat'.*no usable image"):
        folders.load_folder_dataset(str(bad), log=lambda _: None)


def test_hold_out_without_a_test_folder_is_stratified_and_seeded(tmp_path):
    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(10):
            (root / name / f"{i}.png").write_bytes(_png((i, 0, 0)))
    data = folders.load_folder_dataset(str(root), test_fraction=0.3, seed=1, log=lambda _: None)
    np.testing.assert_array_equal(np.bincount(data.train.labels), [7, 7])
    np.testing.assert_array_equal(np.bincount(data.test.labels), [3, 3])
    test_files = set(data.test.source.paths[data.test.positions])
    assert not test_files & set(data.train.source.paths[data.train.positions])
    again = folders.load_folder_dataset(str(root), test_fraction=0.3, seed=1, log=lambda _: None)
    assert set(again.test.source.paths[again.test.positions]) == test_files
    other = folders.load_folder_dataset(str(root), test_fraction=0.3, seed=2, log=lambda _: None)
    assert set(other.test.source.paths[other.test.positions]) != test_files


def test_growing_labels_refuse_a_learned_class_and_unknown_names(tmp_path):
    root = _tree(tmp_path / "data", {"cat": 10, "fox": 50})
    data = folders.load_folder_dataset(str(root), label_names=["ant", "bee"], names=["fox"],
                                       log=lambda _: None)
    assert data.label_names == ["ant", "bee", "fox"]
    np.testing.assert_array_equal(np.unique(data.train.labels), [2])
    with pytest.raises(folders.FolderError, match=r"already learned class\(es\) \['cat'\]"):
        folders.load_folder_dataset(str(root), label_names=["cat"], log=lambda _: None)
    with pytest.raises(folders.FolderError, match=r"No class folder named \['owl'\]"):
        folders.load_folder_dataset(str(root), names=["owl"], log=lambda _: None)


def test_a_class_name_holding_a_comma_can_be_chosen(tmp_path):
    from absl import flags

    from aanets_tf.protocol import growth

    root = _tree(tmp_path / "data", {"dog, small": 10, "cat": 50, "dog": 90})
    # `--classes` is an absl list: a name holding a comma goes in double quotes.
    values = flags.FlagValues()
    flags.DEFINE_list("classes", None, "", flag_values=values)
    values(["train.py", '--classes="dog, small",cat'])
    assert values.classes == ["dog, small", "cat"]
    data = folders.load_folder_dataset(str(root), names=values.classes, log=lambda _: None)
    assert data.label_names == ["dog, small", "cat"]
    np.testing.assert_array_equal(datasets.decoded_images(data.train)[:3, 0, 0, 0], [10] * 3)
    # The form the tools print for a list of names parses back to the same names.
    names = ["dog, small", 'say "hi"', "x"]
    values(["train.py", "--classes=" + growth.flag_list(names)])
    assert values.classes == names
