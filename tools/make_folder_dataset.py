r"""Write a TFDS image dataset's classes as an image folder tree (a demo of your own data).

    python tools/make_folder_dataset.py --out=demo/base \
        --classes=airplane,automobile,bird,cat,deer,dog
    python tools/make_folder_dataset.py --out=demo/new --classes=frog,horse

Writes `<out>/train/<class>/<n>.png` and `<out>/test/<class>/<n>.png`: the
first `--train_images_per_class` and `--test_images_per_class` images of each
class in TFDS order, as the encoded bytes the dataset stores (for CIFAR-10,
PNG: the pixels are exactly the dataset's). File names are the images'
positions in their split, so sorted file order is TFDS order.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
SHARED_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "tensorflow_datasets")


def define_flags() -> None:
    flags.DEFINE_string("dataset", "cifar10", "TFDS dataset to copy from.")
    flags.DEFINE_string("data_dir", SHARED_DATA_DIR, "TFDS data directory.")
    flags.DEFINE_string("out", None, "Folder tree to write (must not exist yet).")
    flags.DEFINE_list("classes", [], "Class names to copy (default: all).")
    flags.DEFINE_integer("train_images_per_class", 500, "Training images per class.")
    flags.DEFINE_integer("test_images_per_class", 100, "Test images per class (0: no test "
                                                       "folder; the trainer then holds out "
                                                       "--test_fraction).")


def write_tree(dataset: str, data_dir: str, out: str, classes: list[str],
               train_per_class: int, test_per_class: int) -> dict[str, int]:
    """Write the tree; returns the number of files written per split."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(dataset, data_dir=data_dir)
    names = builder.info.features["label"].names
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ValueError(f"--classes: {unknown} are not classes of {dataset} ({names}).")
    wanted = [names.index(c) for c in (classes or names)]
    written = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        if per_class <= 0:
            continue
        counts = dict.fromkeys(wanted, 0)
        records = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True,
                                     decoders={"image": tfds.decode.SkipDecoding()},
                                     read_config=tfds.ReadConfig(try_autocache=False))
        for position, (encoded, label) in enumerate(tfds.as_numpy(records)):
            label = int(label)
            if label in counts and counts[label] < per_class:
                directory = os.path.join(out, split, names[label])
                os.makedirs(directory, exist_ok=True)
                with open(os.path.join(directory, f"{position:06d}.png"), "wb") as f:
                    f.write(encoded)
                counts[label] += 1
                if min(counts.values()) >= per_class:
                    break
        written[split] = sum(counts.values())
    return written


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if os.path.exists(FLAGS.out):
        raise app.UsageError(f"--out={FLAGS.out} exists already; name a new directory.")
    try:
        written = write_tree(FLAGS.dataset, FLAGS.data_dir, FLAGS.out, FLAGS.classes,
                             FLAGS.train_images_per_class, FLAGS.test_images_per_class)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(f"Wrote {written} images to {FLAGS.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    flags.mark_flag_as_required("out")
    app.run(main)
