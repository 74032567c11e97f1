"""Where a run executes: the `tf.distribute` strategy and cross-replica helpers.

One code path serves one device, several GPUs, several hosts and a TPU.
Everything that creates variables (networks, learner, optimizers) runs under
`strategy.scope()`; `fit` and the Level-2 loop split every *global* batch
across the replicas. Losses are summed per replica and divided by the global
count (`share_of_mean`), the optimizers sum the replicas' gradients, and
BatchNorm statistics are synchronised across replicas
(`synchronize_batch_norm`), so a step on R replicas computes what one device
computes on the whole batch, up to floating-point summation order.
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from aanets_tf.config import STRATEGIES

# A strategy is created once per process: MultiWorkerMirroredStrategy and
# the TPU system refuse to be initialised twice.
_CACHE: dict[tuple[str, str], tf.distribute.Strategy] = {}


class StrategyUnavailableError(RuntimeError):
    """The requested strategy cannot run on this machine."""


def build_strategy(name: str, tpu: str = "") -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` called `name` (one of `STRATEGIES`).

    - `default`: the current (single-device) strategy.
    - `mirrored`: synchronous data parallelism over every local GPU, or over
      every logical CPU device when there is no GPU.
    - `multi_worker`: `MultiWorkerMirroredStrategy`; the cluster comes from
      the `TF_CONFIG` environment variable.
    - `tpu`: `TPUStrategy` on the TPU named by `tpu` (`""`: the local or
      environment-configured TPU).

    Raises:
        ValueError: unknown name.
        StrategyUnavailableError: a TPU was requested and none can be reached.
    """
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Expected one of {STRATEGIES}. "
                         f"Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, tpu)
    if key not in _CACHE:
        _CACHE[key] = _create(name, tpu)
    return _CACHE[key]


def _create(name: str, tpu: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise StrategyUnavailableError(
                "strategy=multi_worker must be set up before TensorFlow runs its first "
                "op: build it first (`distribute.build_strategy('multi_worker')`, as "
                f"`incremental.run` does when it loads the data itself). ({e})") from e
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise StrategyUnavailableError(
            f"strategy=tpu needs a reachable TPU (TPUClusterResolver(tpu={tpu!r}) "
            f"failed: {type(e).__name__}: {str(e)[:300]}). Run on a TPU VM, or choose "
            "strategy=default, mirrored or multi_worker.") from e
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files (always, outside multi-worker runs)."""
    task_type, task_id = worker_identity(strategy)
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0
                                             and not _cluster_has_chief())


def worker_identity(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
    """`(task_type, task_id)` of this process in a multi-worker cluster, else `(None, None)`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None, None
    return resolver.task_type, resolver.task_id


def _cluster_has_chief() -> bool:
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return bool(cluster.get("chief"))


def num_replicas() -> int:
    """Replicas taking part in the current step (1 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    if context is not None:
        return context.num_replicas_in_sync
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over all replicas, from inside a replica's step."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def share_of_mean(local_sum: tf.Tensor, global_count: tf.Tensor) -> tf.Tensor:
    """This replica's share of a mean over the global batch: `local_sum / global_count`.

    The shares of all replicas sum to the mean one device computes over the
    whole batch (0 when `global_count` is 0). The optimizers sum gradients
    over replicas, so differentiating a share gives the single-device gradient.
    """
    return tf.math.divide_no_nan(tf.cast(local_sum, tf.float32),
                                 tf.cast(global_count, tf.float32))


def reducible_logs(logs: dict) -> dict:
    """A `train_step`'s scalar outputs in a form Keras can reduce across replicas.

    In a multi-worker run Keras 3 `fit` averages every step output with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for scalars; there
    they get an axis of length 1 (the mean of which is the scalar).
    """
    strategy = tf.distribute.get_strategy()
    # Keras decides by the same private test; no public API says whether a strategy
    # spans several workers.
    if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()):
        return {k: tf.reshape(v, (1,)) for k, v in logs.items()}
    return logs


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BatchNorm of `model` compute its batch statistics over all replicas.

    With several replicas this keeps training-mode BatchNorm equal to one
    device's on the global batch (otherwise each replica normalises with the
    statistics of its own slice); with one it would only add work. Inference
    mode (the teacher, Level 2, evaluation) uses the moving statistics either
    way. Returns how many BatchNorm layers were switched.
    """
    count = 0
    # Keras has no public walk over nested layers (`Model.layers` is the top level only).
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            count += 1
    return count
