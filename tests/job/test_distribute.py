"""Strategy choice and TF_CONFIG from an Indexed Job: pod hostnames, JOB_COMPLETION_INDEX, TF_CONFIG, errors."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from leaf_train.config import TrainConfig
from leaf_train.distribute import (
    Cluster,
    Distribution,
    create,
    resolve_cluster,
    weights_digest,
    worker_hosts,
    worker_index,
)
from leaf_train.errors import ConfigError


def test_indexed_job_pods_are_named_job_index_dot_service():
    hosts = worker_hosts(3, 2222, "leaf-train-train-29123", "leaf-train-workers")
    assert hosts == (
        "leaf-train-train-29123-0.leaf-train-workers:2222",
        "leaf-train-train-29123-1.leaf-train-workers:2222",
        "leaf-train-train-29123-2.leaf-train-workers:2222",
    )


def test_explicit_hosts_get_the_port_unless_they_name_one():
    assert worker_hosts(2, 2222, "", "", ["10.0.0.1", "10.0.0.2:3333"]) == (
        "10.0.0.1:2222",
        "10.0.0.2:3333",
    )


@pytest.mark.parametrize(
    ("job", "service", "hosts", "message"),
    [
        (
            "",
            "svc",
            (),
            "--job-name (LEAF_TRAIN_JOB_NAME) and --worker-service (LEAF_TRAIN_WORKER_SERVICE)",
        ),
        ("job", "", (), "received 'job' and ''"),
        ("job", "svc", ("a", "b", "c"), "expected 2 hosts (one per worker), received 3"),
    ],
)
def test_hosts_that_cannot_be_named_are_refused(job, service, hosts, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        worker_hosts(2, 2222, job, service, hosts)


def test_index_comes_from_job_completion_index_unless_configured():
    assert worker_index(-1, {"JOB_COMPLETION_INDEX": "3"}) == 3
    assert worker_index(1, {"JOB_COMPLETION_INDEX": "3"}) == 1


@pytest.mark.parametrize(
    ("environ", "message"),
    [({}, "expected JOB_COMPLETION_INDEX"), ({"JOB_COMPLETION_INDEX": "one"}, "received 'one'")],
)
def test_missing_or_bad_index_is_refused(environ, message):
    with pytest.raises(ConfigError, match=message):
        worker_index(-1, environ)


def test_indexed_job_pod_gets_its_tf_config():
    environ = {"JOB_COMPLETION_INDEX": "1"}
    cluster = resolve_cluster(2, -1, 2222, "train-abc", "workers", environ=environ)
    assert cluster is not None and not cluster.is_chief
    assert cluster.tf_config() == {
        "cluster": {"worker": ["train-abc-0.workers:2222", "train-abc-1.workers:2222"]},
        "task": {"type": "worker", "index": 1},
    }


def test_one_worker_and_no_tf_config_is_a_single_worker_run():
    assert (
        resolve_cluster(1, -1, 2222, "train-abc", "workers", environ={"JOB_COMPLETION_INDEX": "0"})
        is None
    )


@pytest.mark.parametrize(
    ("tf_config", "workers", "index"),
    [
        (
            {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}},
            ["a:1", "b:1"],
            1,
        ),
        # An operator's chief task comes first: it is our worker 0, and its workers follow.
        (
            {
                "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                "task": {"type": "worker", "index": 0},
            },
            ["c:1", "a:1"],
            1,
        ),
        (
            {
                "cluster": {"chief": ["c:1"], "worker": ["a:1"]},
                "task": {"type": "chief", "index": 0},
            },
            ["c:1", "a:1"],
            0,
        ),
    ],
)
def test_a_tf_config_set_by_another_operator_is_honoured(tf_config, workers, index):
    cluster = resolve_cluster(1, -1, 2222, "", "", environ={"TF_CONFIG": json.dumps(tf_config)})
    assert cluster == Cluster(tuple(workers), index)


def test_a_tf_config_with_one_worker_is_a_single_worker_run():
    tf_config = {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}
    assert (
        resolve_cluster(1, -1, 2222, "", "", environ={"TF_CONFIG": json.dumps(tf_config)}) is None
    )


@pytest.mark.parametrize("raw", ["not json", '{"task": {}}', '{"cluster": [1, 2]}'])
def test_an_unusable_tf_config_is_refused(raw):
    with pytest.raises(ConfigError, match="TF_CONFIG: expected"):
        resolve_cluster(1, -1, 2222, "", "", environ={"TF_CONFIG": raw})


@pytest.mark.parametrize(
    ("workers", "index", "message"),
    [
        (("a:1",), 0, "at least 2 workers"),
        (("a:1", "b:1"), 2, "expected 0..1 for 2 workers; received 2"),
    ],
)
def test_impossible_clusters_are_refused(workers, index, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Cluster(workers, index)


def test_without_a_cluster_or_several_gpus_the_default_strategy_is_used():
    import tensorflow as tf

    dist = create(None)
    assert dist.strategy is tf.distribute.get_strategy() and dist.name == "default"
    assert (dist.is_chief, dist.workers, dist.index, dist.replicas) == (True, 1, 0, 1)
    assert dist.learning_rate(1e-3, "linear") == 1e-3


@pytest.mark.parametrize(
    ("replicas", "scaling", "global_batch", "lr", "per_replica"),
    [(4, "none", 32, 1e-3, 8), (4, "linear", 32, 4e-3, 8), (8, "linear", 20, 8e-3, 2)],
)
def test_batch_is_global_and_lr_scales_linearly_only_when_asked(
    replicas, scaling, global_batch, lr, per_replica
):
    dist = Distribution(SimpleNamespace(num_replicas_in_sync=replicas), None, "MirroredStrategy")
    assert dist.learning_rate(1e-3, scaling) == pytest.approx(lr)
    assert dist.per_replica_batch(global_batch) == per_replica
    assert f"global batch {global_batch} = {per_replica} per replica" in dist.describe(global_batch)


def test_unknown_lr_scaling_is_refused():
    dist = Distribution(SimpleNamespace(num_replicas_in_sync=2), None)
    with pytest.raises(ConfigError, match="expected one of none, linear, received 'sqrt'"):
        dist.learning_rate(1e-3, "sqrt")


def test_weights_digest_sees_values_shapes_and_dtypes():
    base = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    same = [w.copy() for w in base]
    changed = [base[0], np.array([1, 1, 1.0001], np.float32)]
    reshaped = [base[0].reshape(3, 2), base[1]]
    retyped = [base[0].astype(np.float64), base[1]]
    assert weights_digest(base) == weights_digest(same)
    assert len({weights_digest(w) for w in (base, changed, reshaped, retyped)}) == 4


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workers", 0, "--workers (LEAF_TRAIN_WORKERS): expected an integer >= 1, received 0"),
        ("worker_port", 70000, "PORT): expected an integer from 1 to 65535, received 70000"),
        (
            "fp16_tolerance",
            0.0,
            "--fp16-tolerance (LEAF_TRAIN_FP16_TOLERANCE): expected a number > 0, received 0.0",
        ),
    ],
)
def test_config_refuses_impossible_distribution_values(field, value, message):
    cfg = TrainConfig(data="s3://d/p", output="s3://o/r", **{field: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfg.validate()


@pytest.mark.parametrize(
    ("mode", "gpus", "expected"),
    [("on", [], True), ("off", [], False), ("auto", [], False), ("on", ["GPU:0"], True), ("off", ["GPU:0"], False),
     ("auto", ["GPU:0"], True)],
)  # fmt: skip
def test_jit_compile_auto_follows_the_visible_gpus(monkeypatch, mode, gpus, expected):
    import tensorflow as tf
    from leaf_train.train import gpus_visible, use_jit_compile

    # What TensorFlow lists, not what this machine has: the same answers with and without a GPU here.
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: list(gpus) if kind == "GPU" else []
    )
    assert gpus_visible() is bool(gpus)
    assert use_jit_compile(mode) is expected


def test_compile_for_phase_passes_jit_compile_to_keras():
    from leaf_train.model import build_model
    from leaf_train.train import PhasePlan, compile_for_phase
    from tensorflow.python.framework import config as tf_config

    # Keras compiles without XLA while op determinism is on, and an earlier test's training run may have
    # turned it on for this process (it cannot be undone through the public API): off for this test.
    was_on = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        model = build_model(2, 32, None, 8)
        compile_for_phase(model, PhasePlan(1, 1, 1e-3), "block5_conv1", jit_compile=True)
        assert model.jit_compile is True
        compile_for_phase(model, PhasePlan(2, 1, 1e-4), "block5_conv1", jit_compile=False)
        assert model.jit_compile is False
    finally:
        if was_on:
            tf_config.enable_op_determinism()
