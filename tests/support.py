"""What tests share: the repository's paths, the tiny run's settings, models, data and files.

Imported by tests as `from support import ...` (pytest puts `tests/` on the
path); fixtures live in `conftest.py`.
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Test files that also run as scripts (subprocesses of a test) import the library.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
SHARED_DATA_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "tensorflow_datasets")


# ResNet-8 on real CIFAR-10: 4 base classes + 1 phase of 2, 12 training images per class.
# The end-to-end tests' run; each takes it as it is or changes a few fields.
TINY = dict(dataset="cifar10", data_dir=SHARED_DATA_DIR, arch="resnet8", num_base_classes=4,
            classes_per_phase=2, num_phases=2, train_images_per_class=12,
            test_images_per_class=10, epochs=2, batch_size=16, exemplars_per_class=3,
            eval_batch_size=64, export=False, aggregation_lr=0.5,
            checkpoint_seconds=0.0)  # a checkpoint every epoch: the kill tests wait for one


def phase1_learner(input_shape: tuple, *, num_old: int = 2, num_new: int = 2,
                   less_forget_weight: float = 2.0, weight_decay: float = 5e-4,
                   level2_learning_rate: float | None = 0.5, learnable: bool = True,
                   learning_rate: float = 0.1, momentum: float = 0.9, jit_compile=False):
    """A phase-1 AANet learner with its phase-0 ResNet-8 teacher, built under the current
    dtype policy: `num_old` old classes, `num_new` new ones imprinted from random images."""
    import keras
    import numpy as np

    from aanets_tf.models.backbones import aanet_from_resnet, build_resnet
    from aanets_tf.hosts.lucir import LucirObjective
    from aanets_tf.training.learner import IncrementalLearner
    from aanets_tf.models.network import build_network, grow_network

    resnet = build_resnet("resnet8", input_shape, name="resnet_phase0")
    teacher = build_network(resnet, 0, num_old, name="network_phase0")
    backbone = aanet_from_resnet(resnet, learnable_aggregation=learnable, name="aanet_phase1")
    images, _ = random_batch(8, input_shape, num_old + num_new, seed=1)
    network = grow_network(teacher, backbone, num_new, to_numpy(backbone(images, training=False)),
                           np.arange(8) % num_new, name="network_phase1")
    level2 = (keras.optimizers.SGD(level2_learning_rate) if level2_learning_rate is not None
              else None)
    learner = IncrementalLearner(network, teacher, num_old_classes=num_old,
                                 objective=LucirObjective(num_old, less_forget_weight),
                                 weight_decay=weight_decay, level2_optimizer=level2)
    learner.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=momentum),
                    jit_compile=jit_compile)
    learner.build_optimizers()
    return learner


def to_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def random_batch(n: int, input_shape: tuple, num_classes: int, seed: int = 0):
    """`n` random float32 images in [0, 255) and int32 labels cycling through the classes."""
    import numpy as np

    rng = np.random.RandomState(seed)
    images = rng.uniform(0, 255, size=(n,) + tuple(input_shape)).astype("float32")
    return images, np.arange(n, dtype="int32") % num_classes


def kill_after_epoch(command: list[str], epoch_file: str, cwd: str) -> None:
    """Start `command`, SIGKILL it once it has written `epoch_file` (an epoch checkpoint)."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd=cwd)
    deadline = time.time() + 300
    # The run's own signal: the epoch checkpoint it writes at the epoch boundary.
    while not os.path.exists(epoch_file) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-phase"
    process.send_signal(signal.SIGKILL)
    process.wait()


def bomb_png(side: int = 60_000) -> bytes:
    """A valid PNG header declaring `side` x `side` RGB pixels, with a few bytes of data."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))


def write_run_workdir(workdir, cnn, nme=None, /, *, forgetting=None, num_classes=10,
                      phase_fields=(), **config) -> str:
    """A hand-written run workdir: config.json and metrics.json shaped as tools/train.py
    writes them, with the CNN (and NME) accuracy of each evaluated phase.

    `phase_fields`, a dict per phase from phase 0 on (fewer than the phases: the first
    ones), adds more of metrics.json's per-phase fields to those phases.

    `config` overrides the few settings written (the reader fills in the defaults of
    the others, as for a config.json older than a setting), `workdir` among them (the
    path the run was started with). Fewer accuracies than the phases the class split
    allows make an unfinished run.
    """
    import json

    settings = {"dataset": "cifar10", "seed": 1993, "num_base_classes": 4,
                "classes_per_phase": 2, "num_phases": 0, "branch_mode": "dual",
                "aggregation": "learned", "aggregation_bound": 0.05, "level2_images": "seen",
                "epochs": 20, "exemplars_per_class": 20, "memory_budget": 0,
                "workdir": str(workdir), **config}
    nme = list(cnn) if nme is None else list(nme)
    base, step = settings["num_base_classes"], settings["classes_per_phase"]
    phases = [{"phase": i, "num_seen_classes": base + i * step, "cnn_accuracy": c,
               "nme_accuracy": n, "train_seconds": 1.0} for i, (c, n) in enumerate(zip(cnn, nme))]
    for phase, fields in zip(phases, phase_fields):
        phase.update(fields)
    metrics = {"dataset": settings["dataset"], "class_order": list(range(num_classes)),
               "branch_mode": settings["branch_mode"], "aggregation": settings["aggregation"],
               "phases": phases,
               "average_incremental_accuracy": {"cnn": sum(cnn) / len(cnn),
                                                "nme": sum(nme) / len(nme)} if phases else None,
               "forgetting": forgetting}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(settings, f)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    return str(workdir)


def bomb_image(fmt: str, side: int = 30_000) -> bytes:
    """A file of at most a few hundred bytes whose `fmt` header declares `side` x `side`
    pixels.

    `fmt` is one of jpeg, png, gif, bmp, webp, or jpeg_frame_only (a JPEG frame
    header without tables or scan). Only the header is right: a decoder that trusts
    it allocates `3 * side**2` bytes before finding the data missing; one that reads
    the header first refuses it at once.
    """
    import struct

    if fmt == "png":
        return bomb_png(side)
    if fmt == "jpeg":
        # A whole 8 x 8 baseline JPEG (tables, scan) whose frame header claims `side`.
        import tensorflow as tf

        data = bytearray(tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy())
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
        return bytes(data)
    if fmt == "gif":
        screen = struct.pack("<HHBBB", side, side, 0, 0, 0)  # no global colour table
        descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0)
        return b"GIF89a" + screen + descriptor + b"\x02\x02\x4c\x01\x00" + b"\x3b"
    if fmt == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
        pixels = b"\0" * 16
        header = b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
        return header + info + pixels
    if fmt == "webp":
        # An extended (VP8X) file: the canvas size is stored minus one, in 24 bits.
        vp8x = b"\0\0\0\0" + (side - 1).to_bytes(3, "little") + (side - 1).to_bytes(3, "little")
        chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
        return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
    if fmt == "jpeg_frame_only":
        # SOI, a baseline SOF0 segment (8-bit, 3 components), EOI: no tables, no scan.
        sof = struct.pack(">BHHB", 8, side, side, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
        return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", 2 + len(sof)) + sof + b"\xff\xd9"
    raise ValueError(f"Unknown format. Expected jpeg, png, gif, bmp or webp. Received: fmt={fmt!r}")
