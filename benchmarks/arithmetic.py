"""How close a step runs to the machine's arithmetic limit: floating-point operations per
image, and the rate a large matrix product reaches on the same machine in the same run.

`benchmarks.throughput` (`--arithmetic`, on by default) reports, for the steps whose
arithmetic is known, their GFLOP/s and that rate's share of the matrix product's: the
product (float32, 2048 x 2048, TensorFlow's own kernel) is the practical peak of the
CPU's vector units, which no convolution of the same precision can pass by much.

Operations per image are counted by TensorFlow's profiler on the network's forward
graph (convolutions and matrix products; 2 per multiply-add). A training step is
counted as 3 forward passes (forward, and the gradients with respect to the inputs and
to the weights, each about a forward's cost) plus the teacher's forward where there is
one; inference is one forward pass.
"""

from __future__ import annotations

import statistics
import time

from benchmarks import harness

# A training step's cost in forward passes of the network it trains.
TRAINING_PASSES = 3


def forward_flops(model, image_shape: tuple[int, int, int]) -> int:
    """Floating-point operations of one image's forward pass through `model` (inference)."""
    import tensorflow as tf

    function = tf.function(lambda images: model(images, training=False))
    graph = function.get_concrete_function(
        tf.TensorSpec((1, *image_shape), tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops)


def matmul_gflops(size: int = 2048, repeats: int = 5, products: int = 10,
                  dtype: str = "float32") -> float:
    """GFLOP/s of `size` x `size` matrix products: the median of `repeats` timings of
    `products` products each, after one warm-up."""
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(1, 2), dtype=dtype)
    # Scaled so that a chain of products keeps its magnitude.
    b = tf.random.stateless_normal((size, size), seed=(3, 4), dtype=dtype) / size ** 0.5

    @tf.function
    def run():
        # A chain, each product the next one's input: the graph optimiser cannot merge
        # them as it merges identical products.
        x = a
        for _ in range(products):
            x = tf.linalg.matmul(x, b)
        return x[0, 0]

    float(run())
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(run())
        rates.append(2 * size ** 3 * products / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def step_flops(plain: int, aanet: int) -> dict[str, int]:
    """Operations per image of the throughput steps, from the forward passes of the plain
    ResNet (`plain`) and of the phase-1 AANet (`aanet`)."""
    return {"phase0": TRAINING_PASSES * plain,
            "level1_single": TRAINING_PASSES * plain + plain,  # the teacher: plain
            "level1_aanet": TRAINING_PASSES * aanet + plain,
            "level1_aanet_teacher": TRAINING_PASSES * aanet + aanet,
            "eval_plain": plain, "eval_aanet": aanet}


def shares(images_per_second: dict[str, float], flops: dict[str, int],
           peak_gflops: float) -> dict[str, dict[str, float]]:
    """Per step with a known count: its GFLOP/s and their share of `peak_gflops`."""
    out = {}
    for step, rate in images_per_second.items():
        if step in flops:
            gflops = rate * flops[step] / 1e9
            out[step] = {"gflop_per_image": flops[step] / 1e9, "gflops": gflops,
                         "share_of_matmul": gflops / peak_gflops}
    return out


def table(rows: dict[str, dict[str, float]], peak_gflops: float, variant: str) -> str:
    lines = [f"Against the arithmetic limit ({variant}): a 2048 x 2048 matrix product ran "
             f"at {peak_gflops:.1f} GFLOP/s in this run.", "",
             harness.markdown_table(
                 ["step", "GFLOP per image", "GFLOP/s", "share of the product's"],
                 [[step, f"{r['gflop_per_image']:.3f}", f"{r['gflops']:.1f}",
                   f"{r['share_of_matmul']:.0%}"] for step, r in rows.items()])]
    return "\n".join(lines) + "\n"
