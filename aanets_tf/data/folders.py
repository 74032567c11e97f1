"""Image folders as a dataset: `ROOT/train/<class>/*` and, optionally, `ROOT/test/<class>/*`.

Class names are the folder names, kept as labels everywhere (metrics,
plots, the served model's `top_k_labels`) and never used to build a path.
Images are the files with an image extension (JPEG, PNG, GIF, BMP) in a class
folder and its subfolders, in sorted path order; hidden files and folders
(`.DS_Store`, `.git`, `._x.jpg`) are ignored; any other file is skipped and
counted like a bad image. Without a test folder, `test_fraction` of each
class's images (at least one where a class has two or more) are held out,
chosen by `seed`.

The listing is written here rather than taken from
`keras.utils.image_dataset_from_directory`, whose class check refuses a
hidden folder beside the class folders and which drops other files without
a word, or from TFDS's `ImageFolder`, which reads neither GIF nor BMP.
Files are read through `tf.io.gfile`, so roots on GCS or S3 work as local ones.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from aanets_tf.data import datasets
from aanets_tf.data.sources import FileSource, SkippedRecord, index_files, refuse_bad

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


class FolderError(ValueError):
    """A folder dataset that cannot be used as it is (missing, empty, ...)."""


@dataclasses.dataclass
class ClassFolder:
    """One class's image files and its other files."""
    name: str
    images: list[str]
    others: list[str]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def class_folders(root: str) -> list[ClassFolder]:
    """The visible subfolders of `root` as classes, sorted by name."""
    if not tf.io.gfile.isdir(root):
        raise FolderError(f"{root!r} is not a directory.")
    classes = []
    for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(root)):
        path = os.path.join(root, name)
        if not _visible(name) or not tf.io.gfile.isdir(path):
            continue
        images, others = [], []
        for directory, subdirs, files in sorted(tf.io.gfile.walk(path)):
            relative = os.path.relpath(directory, path)
            if relative != "." and not all(_visible(p) for p in relative.split(os.sep)):
                continue
            for file in sorted(f for f in files if _visible(f)):
                full = os.path.join(directory, file)
                (images if file.lower().endswith(IMAGE_EXTENSIONS) else others).append(full)
        classes.append(ClassFolder(name, images, others))
    return classes


def train_root(root: str) -> str:
    """`root/train` when it exists, else `root` itself (class folders directly inside)."""
    train = os.path.join(root, "train")
    return train if tf.io.gfile.isdir(train) else root


def _holdout(files: list[str], fraction: float, rng: np.random.RandomState
             ) -> tuple[list[str], list[str]]:
    if fraction <= 0 or len(files) < 2:
        return files, []
    count = min(len(files) - 1, max(1, int(round(fraction * len(files)))))
    test = set(rng.choice(len(files), size=count, replace=False).tolist())
    return ([f for i, f in enumerate(files) if i not in test],
            [f for i, f in enumerate(files) if i in test])


def read_folders(root: str, *, names: list[str] | None = None, test_fraction: float = 0.2,
                 seed: int = 0, log=print) -> tuple[list[str], dict, dict, list[SkippedRecord]]:
    """The classes of a folder tree and their train and test files.

    Args:
        root: the tree (`root/train/<class>`, optional `root/test/<class>`, or
            class folders directly in `root`).
        names: take only these classes (all when None); an unknown name is an error.
        test_fraction: held out per class when there is no test folder.
        seed: seeds the hold-out.

    Returns:
        `(class names, train files by class, test files by class, skipped)`,
        `skipped` listing the non-image files.

    Raises:
        FolderError: no class folders, an unknown name, an empty class folder.
    """
    folders = {c.name: c for c in class_folders(train_root(root))}
    if not folders:
        raise FolderError(f"{train_root(root)!r} has no class folders (one subfolder per "
                          "class, holding its images).")
    if names is not None:
        unknown = [n for n in names if n not in folders]
        if unknown:
            raise FolderError(f"No class folder named {unknown} in {train_root(root)!r}; it "
                              f"has {sorted(folders)}.")
        folders = {n: folders[n] for n in names}
    empty = [c.name for c in folders.values() if not c.images]
    if empty:
        raise FolderError(f"Class folder(s) {empty} in {train_root(root)!r} hold no images "
                          f"({', '.join(IMAGE_EXTENSIONS)}).")
    skipped = [SkippedRecord(f, "not an image file (by its extension)")
               for c in folders.values() for f in c.others]
    test_dir = os.path.join(root, "test")
    train, test = {}, {}
    if train_root(root) != root and tf.io.gfile.isdir(test_dir):
        tests = {c.name: c for c in class_folders(test_dir)}
        for name, folder in folders.items():
            train[name] = folder.images
            test[name] = tests[name].images if name in tests else []
            skipped += [SkippedRecord(f, "not an image file (by its extension)")
                        for f in (tests[name].others if name in tests else [])]
        missing = [n for n in folders if not test[n]]
        if missing:
            log(f"No test images for class(es) {missing} in {test_dir!r}: they are trained "
                "but not evaluated.")
    else:
        rng = np.random.RandomState(seed)
        for name, folder in folders.items():
            train[name], test[name] = _holdout(folder.images, test_fraction, rng)
    return list(folders), train, test, skipped


def file_split(files_by_class: dict, label_of: dict, per_class: int, *, max_pixels: int,
               strict: bool, num_classes: int) -> tuple[datasets.Split, list[SkippedRecord]]:
    """Index the files of each class (labelled by `label_of`); the first `per_class` good ones."""
    paths, labels = [], []
    for name, files in files_by_class.items():
        paths += files
        labels += [label_of[name]] * len(files)
    labels = np.asarray(labels, np.int64)
    index = index_files(paths, labels, num_classes, max_pixels=max_pixels, strict=strict)
    good = np.flatnonzero(index.good)
    good = good[datasets.first_per_class(labels[good], per_class, num_classes)]
    return datasets.Split(FileSource(paths, labels), good), index.skipped


def load_folder_dataset(root: str, *, label_names: list[str] | None = None,
                        names: list[str] | None = None, test_fraction: float = 0.2,
                        seed: int = 0, train_images_per_class: int = 0,
                        test_images_per_class: int = 0,
                        max_image_pixels: int = datasets.DEFAULT_MAX_IMAGE_PIXELS,
                        strict_images: bool = False, log=print) -> datasets.ClassIncrementalData:
    """A folder tree as a dataset whose images are checked once and then streamed.

    Args:
        root: the tree (see `read_folders`).
        label_names: classes already known, in label order (a growing run):
            the tree's classes are labelled after them. Names already in it
            are refused.
        names, test_fraction, seed: see `read_folders`.
        train_images_per_class, test_images_per_class: the first N good
            images of each class in path order (0: all).
        max_image_pixels, strict_images: see `datasets.load_dataset`.

    Raises:
        FolderError: see `read_folders`; a class the run already learned.
        BadImageError: a bad image, with `strict_images`.
    """
    known = list(label_names or [])
    classes, train, test, skipped = read_folders(root, names=names, test_fraction=test_fraction,
                                                 seed=seed, log=log)
    learned = [c for c in classes if c in known]
    if learned:
        raise FolderError(f"The run already learned class(es) {learned}; a class is learned "
                          f"once. Remove or rename their folders in {root!r}, or pick the "
                          "new ones with `classes`.")
    all_names = known + classes
    label_of = {name: i for i, name in enumerate(all_names)}
    check = dict(max_pixels=max_image_pixels, strict=strict_images, num_classes=len(all_names))
    if strict_images:
        refuse_bad(skipped)  # non-image files, before any image is read
    train_split, bad_train = file_split(train, label_of, train_images_per_class, **check)
    test_split, bad_test = file_split(test, label_of, test_images_per_class, **check)
    skipped += bad_train + bad_test
    for name in classes:
        if not np.any(train_split.labels == label_of[name]):
            raise FolderError(f"Class folder {name!r} in {root!r} has no usable image (all "
                              "skipped as bad).")
    if skipped:
        log(f"Skipped {len(skipped)} file(s) of {root}, e.g. "
            + "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3]))
    return datasets.ClassIncrementalData(
        name=f"folder:{root}", train=train_split, test=test_split, num_classes=len(all_names),
        label_names=all_names, image_shape=None, skipped=skipped)
