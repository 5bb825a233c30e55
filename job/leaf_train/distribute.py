"""Which ``tf.distribute`` strategy a run uses, and the cluster it spans.

Design: docs/scaling.md#strategies-workers-and-the-global-batch
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from leaf_common.config import option_error
from leaf_common.storage import open_store

from .config import ENV_PREFIX, TrainConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from .checkpoint import RunCheckpoints

log = logging.getLogger(__name__)

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in every pod of an Indexed Job
TF_CONFIG_ENV = "TF_CONFIG"
LR_SCALING = ("none", "linear")


@dataclass(frozen=True)
class Cluster:
    """The workers of a multi-worker run, in index order, and which one this process is."""

    workers: tuple[str, ...]  # host:port of every worker; index i is the Indexed Job's pod i
    index: int

    def __post_init__(self) -> None:
        if len(self.workers) < 2:
            raise ConfigError(f"a cluster needs at least 2 workers; received {list(self.workers)}")
        if not 0 <= self.index < len(self.workers):
            raise ConfigError(
                f"worker index: expected 0..{len(self.workers) - 1} for {len(self.workers)} "
                f"workers; received {self.index}"
            )

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def tf_config(self) -> dict[str, Any]:
        """The ``TF_CONFIG`` document TensorFlow's cluster resolvers read."""
        return {
            "cluster": {"worker": list(self.workers)},
            "task": {"type": "worker", "index": self.index},
        }


def worker_hosts(
    workers: int, port: int, job_name: str, service: str, hosts: Sequence[str] = ()
) -> tuple[str, ...]:
    """``host:port`` of every worker, in index order.

    Args:
        workers: number of workers (the Indexed Job's completions).
        port: port every worker listens on when ``hosts`` does not name one.
        job_name: the Kubernetes Job; its pods are called ``<job_name>-<index>``.
        service: the headless Service that is the pods' ``subdomain``.
        hosts: explicit hosts (or ``host:port``) instead of the Kubernetes names, e.g. for loopback
            runs.

    Raises:
        ConfigError: explicit hosts that do not match ``workers``, or no way to name the pods.
    """
    if hosts:
        if len(hosts) != workers:
            expected = f"{workers} hosts (one per worker)"
            raise option_error(ENV_PREFIX, "worker_hosts", expected, f"{len(hosts)}: {list(hosts)}")
        return tuple(h if ":" in h else f"{h}:{port}" for h in hosts)
    if not job_name or not service:
        raise option_error(
            ENV_PREFIX,
            ("job_name", "worker_service"),
            f"both set, to derive the Indexed Job's pod hostnames for --workers {workers} (or "
            "--worker-hosts)",
            f"{job_name!r} and {service!r}",
        )
    return tuple(f"{job_name}-{i}.{service}:{port}" for i in range(workers))


def worker_index(configured: int, environ: Mapping[str, str]) -> int:
    """``configured`` if set (>= 0), else Kubernetes' ``JOB_COMPLETION_INDEX``.

    Raises:
        ConfigError: neither is set, or the environment holds something that is not an index.
    """
    if configured >= 0:
        return configured
    raw = environ.get(INDEX_ENV)
    if raw is None:
        expected = f"{INDEX_ENV} (set on Indexed Job pods) or an index, with several workers"
        raise option_error(ENV_PREFIX, "worker_index", expected, "neither")
    try:
        return int(raw)
    except ValueError as e:
        raise ConfigError(f"{INDEX_ENV}: expected a non-negative integer; received {raw!r}") from e


def cluster_from_tf_config(raw: str) -> Cluster | None:
    """A ``TF_CONFIG`` written by others (e.g. Kubeflow's TFJob); ``None`` if it names one worker.

    Raises:
        ConfigError: not JSON, or a shape MultiWorkerMirroredStrategy cannot use.
    """
    try:
        doc = json.loads(raw)
        spec, task = doc["cluster"], doc.get("task", {})
        workers = list(spec.get("chief", [])) + list(spec.get("worker", []))
        task_type, task_index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f'{TF_CONFIG_ENV}: expected {{"cluster": {{"worker": [...]}}, "task": {{"type": ..., '
            f'"index": N}}}}; received {raw[:200]!r}'
        ) from e
    if len(workers) < 2:
        return None
    # A "chief" task, when present, comes first: it is worker 0 in our numbering.
    offset = len(spec.get("chief", [])) if task_type == "worker" else 0
    return Cluster(tuple(workers), task_index + offset)


def resolve_cluster(
    workers: int,
    configured_index: int,
    port: int,
    job_name: str,
    service: str,
    hosts: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Cluster | None:
    """The cluster this process belongs to, or ``None`` for a single-worker run.

    ``workers > 1`` (the chart's ``training.workers``) wins; otherwise a ``TF_CONFIG`` in the
    environment naming several workers is honoured.
    """
    environ = os.environ if environ is None else environ
    if workers < 1:
        raise option_error(ENV_PREFIX, "workers", "an integer >= 1", workers)
    if workers == 1:
        raw = environ.get(TF_CONFIG_ENV, "").strip()
        return cluster_from_tf_config(raw) if raw else None
    index = worker_index(configured_index, environ)
    return Cluster(worker_hosts(workers, port, job_name, service, hosts), index)


@dataclass
class Distribution:
    """The strategy in use and this process's place in it."""

    strategy: Any  # tf.distribute.Strategy
    cluster: Cluster | None
    # as the tf.distribute API calls it (MultiWorkerMirroredStrategy's class has another name)
    name: str = "default"

    @property
    def is_chief(self) -> bool:
        return self.cluster is None or self.cluster.is_chief

    @property
    def workers(self) -> int:
        return len(self.cluster.workers) if self.cluster else 1

    @property
    def index(self) -> int:
        return self.cluster.index if self.cluster else 0

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def learning_rate(self, base: float, scaling: str) -> float:
        """``base`` as configured, or ``base * replicas`` with ``linear`` scaling."""
        if scaling not in LR_SCALING:
            raise option_error(
                ENV_PREFIX, "lr_scaling", f"one of {', '.join(LR_SCALING)}", repr(scaling)
            )
        return base * self.replicas if scaling == "linear" else base

    def per_replica_batch(self, global_batch: int) -> int:
        """Images each replica sees per step; the last ones get fewer when it does not divide."""
        if global_batch % self.replicas:
            log.warning(
                "batch size %d is not a multiple of %d replicas: replicas get uneven shares",
                global_batch,
                self.replicas,
            )
        return max(1, global_batch // self.replicas)

    def prepare_model(self, model: Any, element_spec: Any) -> None:
        """Let Keras ``fit``/``evaluate`` run under MultiWorkerMirroredStrategy.

        Keras 3.15's TensorFlow trainer learns the batch's shapes by ``strategy.reduce``-ing the
        first distributed batch, a nest of ``PerReplica`` values, which
        MultiWorkerMirroredStrategy's cross-device reduce rejects ("unsupported type PerReplica";
        keras-team/keras#20585). Only shapes and dtypes are needed, and the dataset's
        ``element_spec`` has them: build from it. Other strategies keep Keras's own path.
        """
        import tensorflow as tf

        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return

        def symbolic_build(iterator: Any = None, data_batch: Any = None) -> None:
            with self.strategy.scope():
                model._symbolic_build(data_batch=element_spec)

        model._maybe_symbolic_build = symbolic_build

    def shard(self, ds: Any) -> Any:
        """``ds`` split by example across workers: the arrays are in memory, no files to split."""
        if self.workers == 1:
            return ds
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return ds.with_options(options)

    def checkpoint_writer(
        self, ckpts: RunCheckpoints | None, cache_dir: Path
    ) -> RunCheckpoints | None:
        """Where this worker saves checkpoints: the run's folder on the chief, else a local one.

        Only the chief's checkpoint is real (the others would race it on the same keys), yet every
        worker must save: saving a mirrored model runs collective ops, and a worker that skipped
        them would pair its next collective with the chief's save and abort both (TensorFlow's
        multi-worker rule).
        """
        if ckpts is None or self.is_chief:
            return ckpts
        from .checkpoint import RunCheckpoints

        return RunCheckpoints(open_store(str(cache_dir / f"worker-{self.index}-checkpoints")))

    def describe(self, global_batch: int) -> str:
        role = "chief" if self.is_chief else "worker"
        return (
            f"{self.name}: {self.replicas} replica(s) on {self.workers} worker(s), this is {role} "
            f"{self.index}; global batch {global_batch} = {self.per_replica_batch(global_batch)} "
            "per replica"
        )


def from_config(cfg: TrainConfig, job_name: str) -> Distribution:
    """The run's strategy from its options (``job_name`` names the worker pods); see ``create``."""
    cluster = resolve_cluster(
        cfg.workers,
        cfg.worker_index,
        cfg.worker_port,
        job_name,
        cfg.worker_service,
        cfg.worker_hosts,
    )
    return create(cluster)


def create(cluster: Cluster | None) -> Distribution:
    """Make the strategy; call before any other TensorFlow op (collectives are set up on creation).

    Raises:
        ConfigError: TensorFlow refused the cluster (e.g. a host that does not resolve).
    """
    import tensorflow as tf

    if cluster is not None:
        from tensorflow.python.distribute.cluster_resolver import SimpleClusterResolver

        log.info("%s=%s", TF_CONFIG_ENV, json.dumps(cluster.tf_config()))
        resolver = SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(cluster.workers)}),
            task_type="worker",
            task_id=cluster.index,
            rpc_layer="grpc",
        )
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        except (ValueError, RuntimeError, tf.errors.OpError) as e:
            raise ConfigError(
                f"MultiWorkerMirroredStrategy over {list(cluster.workers)}: {e}"
            ) from e
        _fix_keras_multi_worker_step_reduce()
        return Distribution(strategy, cluster, "MultiWorkerMirroredStrategy")
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return Distribution(tf.distribute.MirroredStrategy(), None, "MirroredStrategy")
    return Distribution(tf.distribute.get_strategy(), None, "default")


def _fix_keras_multi_worker_step_reduce() -> None:
    """Make Keras 3.15's per-step log reduction work under MultiWorkerMirroredStrategy.

    Keras reduces each step's scalar logs (loss, metrics) with ``strategy.reduce("MEAN", v,
    axis=0)`` when the strategy spans several workers; a scalar has no axis 0, so the first step
    fails ("Invalid reduction dimension 0 for input with 0 dimensions"; keras-team/keras#20585). The
    mean over all replicas is what was meant: reduce with ``axis=None``. Weights are unaffected
    (gradients are all-reduced by the optimizer) and epoch logs come from the synchronised metric
    variables; this only fixes the step's reduction. Applied once, only in multi-worker processes.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    original = trainer.reduce_per_replica
    if getattr(original, "_leaf_train_fixed", False):
        return

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._leaf_train_fixed = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = reduce_per_replica


def weights_digest(weights: Sequence[Any]) -> str:
    """sha256 over every weight array in order: equal on all workers when they are in sync."""
    import numpy as np

    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
