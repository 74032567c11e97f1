r"""The data layout lever: a ResNet-32 training step in NHWC (`channels_last`, this
project's layout) against NCHW (`channels_first`, the authors' PyTorch layout and the
one oneDNN's own examples use), on the same machine, interleaved.

    python -m benchmarks.layout --output_dir=benchmarks/results/layout

The project's networks are channels-last throughout (their BatchNorm axes, pooling and
the POD taps); this benchmark builds the plain CIFAR ResNet-32 (3 stages of 5 blocks,
16/32/64 filters, BatchNorm, a dense head) from Keras layers in either layout and
times one SGD step of batch `--batch_size` on random images, float32, `--steps` steps
per repeat, every layout once a repeat. Writes `layout.json` and `layout.md` (images
per second, NCHW / NHWC within each repeat, the machine).
"""

from __future__ import annotations

import time

from absl import flags

from benchmarks import harness

FLAGS = flags.FLAGS
LAYOUTS = ("channels_last", "channels_first")


def define_flags() -> None:
    harness.define_output_dir("benchmarks/results/layout")
    harness.define_timing_flags()
    flags.DEFINE_integer("batch_size", 128, "Images per step.", lower_bound=1)


def resnet32(layout: str, image_size: int = 32, num_classes: int = 10):
    """The CIFAR ResNet-32 in `layout`, from Keras layers."""
    import keras

    axis = 1 if layout == "channels_first" else -1
    shape = (3, image_size, image_size) if axis == 1 else (image_size, image_size, 3)

    def conv_bn(x, filters, stride=1, relu=True):
        x = keras.layers.Conv2D(filters, 3, stride, padding="same", use_bias=False,
                                data_format=layout)(x)
        x = keras.layers.BatchNormalization(axis=axis)(x)
        return keras.layers.ReLU()(x) if relu else x

    inputs = keras.Input(shape)
    x = conv_bn(inputs, 16)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(5):
            s = stride if block == 0 else 1
            y = conv_bn(conv_bn(x, filters, s), filters, relu=False)
            if s != 1 or x.shape[axis] != filters:
                x = keras.layers.Conv2D(filters, 1, s, use_bias=False, data_format=layout)(x)
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D(data_format=layout)(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name=f"resnet32_{layout}")


def training_step(layout: str, batch_size: int, seed: int = 0):
    """A traced SGD step of `resnet32(layout)` on one random batch; returns the callable."""
    import keras
    import tensorflow as tf

    model = resnet32(layout)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    shape = (batch_size, 3, 32, 32) if layout == "channels_first" else (batch_size, 32, 32, 3)
    images = tf.random.stateless_uniform(shape, (seed, 1), maxval=255.0)
    labels = tf.random.stateless_uniform((batch_size,), (seed, 2), maxval=10, dtype=tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(labels, model(images, training=True))
        optimizer.apply(tape.gradient(value, model.trainable_variables),
                        model.trainable_variables)
        return value

    return step


def table(summary: dict, machine: str, batch_size: int) -> str:
    rows = [[layout, f"{summary['images_per_second'][layout]:.1f}"] for layout in LAYOUTS]
    return (f"Machine: {machine}; float32, batch {batch_size}.\n\n"
            + harness.markdown_table(["layout", "img/s (median)"], rows)
            + f"\nNCHW / NHWC, median of the per-repeat ratios: "
              f"{summary['channels_first / channels_last']:.2f}\n")


def main(argv):
    del argv
    import statistics

    steps = {layout: training_step(layout, FLAGS.batch_size) for layout in LAYOUTS}
    for layout, step in steps.items():
        for _ in range(FLAGS.warmup):
            float(step())

    def images_per_second(layout: str, _: str) -> float:
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            value = steps[layout]()
        float(value)
        return FLAGS.batch_size * FLAGS.steps / (time.perf_counter() - start)

    samples = harness.interleaved([(layout, "step") for layout in LAYOUTS], FLAGS.repeats,
                                  images_per_second)
    per_layout = {layout: samples[layout]["step"] for layout in LAYOUTS}
    summary = {"images_per_second": {k: statistics.median(v) for k, v in per_layout.items()},
               "channels_first / channels_last": harness.paired_ratio(
                   per_layout["channels_first"], per_layout["channels_last"])}
    described = harness.describe()
    report = {"machine": described, "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
              "repeats": FLAGS.repeats, "samples_images_per_second": per_layout,
              "summary": summary}
    markdown = table(summary, harness.summary_line(described), FLAGS.batch_size)
    harness.write_report(FLAGS.output_dir, "layout", report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    define_flags()
    harness.run_main(main)
