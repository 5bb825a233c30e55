"""training.workers > 1: an Indexed Job of workers plus a headless Service, rendered by the real helm.

The names the chart gives pods and the Service are the names leaf_train.distribute derives
TF_CONFIG from; the env the chart sets is resolved by the job's own config code here, so a
rename on either side fails a test. Generic checks (lint, OpenAPI, PSS, checkov) cover
ci/multi-worker-values.yaml through tests/charts/test_chart.py.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
from leaf_common.config import resolve
from leaf_train.config import ENV_PREFIX, TrainConfig
from leaf_train.distribute import resolve_cluster
from test_chart import CHART, IMAGES, KUBE_VERSIONS, env_of, helm, one, render

MULTI = ("-f", str(CHART / "ci" / "multi-worker-values.yaml"))


def job_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]


@pytest.fixture(scope="module")
def multi() -> list[dict[str, Any]]:
    return render(*MULTI)


def test_one_worker_keeps_the_plain_job_and_no_service():
    objs = render()
    spec = job_spec(objs)
    for field in (
        "completionMode",
        "completions",
        "parallelism",
        "backoffLimitPerIndex",
        "podReplacementPolicy",
    ):
        assert field not in spec, field
    pod = spec["template"]["spec"]
    assert "subdomain" not in pod and "ports" not in pod["containers"][0]
    assert not [e for e in env_of(pod["containers"][0]) if "WORKER" in e]
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Service"] == [
        "leaf-leaf-train-serve"
    ]


def test_several_workers_make_an_indexed_job(multi):
    spec = job_spec(multi)
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2  # every worker runs at once
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 0
    # A replacement waits for its predecessor to be gone: no two pods with one hostname.
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podFailurePolicy"]["rules"], "exit-code rules still apply per pod"


def test_workers_find_each_other_through_a_headless_service(multi):
    services = {o["metadata"]["name"]: o for o in multi if o["kind"] == "Service"}
    svc = services["leaf-leaf-train-train-workers"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod = job_spec(multi)["template"]
    assert pod["spec"]["subdomain"] == "leaf-leaf-train-train-workers"
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "collective", "containerPort": 2222, "protocol": "TCP"}]
    assert svc["spec"]["ports"] == [
        {"name": "collective", "port": 2222, "targetPort": "collective", "protocol": "TCP"}
    ]


def test_the_job_builds_tf_config_from_what_the_chart_sets(multi):
    """The chart's env + ConfigMap, resolved by the job's own config code, give the pod DNS names."""
    (container,) = job_spec(multi)["template"]["spec"]["containers"]
    configmap = one(multi, "ConfigMap", "training")["data"]
    env = {k: v for k, v in env_of(container).items() if isinstance(v, str)}
    # What Kubernetes adds: the Job name (downward API label) and the index (Indexed Job).
    environ = {
        **configmap,
        **env,
        "LEAF_TRAIN_JOB_NAME": "leaf-leaf-train-train-29390160",
        "JOB_COMPLETION_INDEX": "1",
    }
    cfg = resolve(TrainConfig, ENV_PREFIX, {}, environ)
    assert (cfg.workers, cfg.lr_scaling, cfg.export_fp16, cfg.batch_size) == (2, "linear", True, 64)
    cluster = resolve_cluster(
        cfg.workers, cfg.worker_index, cfg.worker_port, environ["LEAF_TRAIN_JOB_NAME"], cfg.worker_service,
        cfg.worker_hosts, environ,
    )  # fmt: skip
    assert cluster is not None and cluster.index == 1
    assert cluster.workers == (
        "leaf-leaf-train-train-29390160-0.leaf-leaf-train-train-workers:2222",
        "leaf-leaf-train-train-29390160-1.leaf-leaf-train-train-workers:2222",
    )
    assert env_of(container)["LEAF_TRAIN_JOB_NAME"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}
    }


def test_network_policy_lets_only_workers_reach_the_worker_port(multi):
    policies = {o["metadata"]["name"]: o["spec"] for o in multi if o["kind"] == "NetworkPolicy"}
    workers = policies["leaf-leaf-train-train-workers"]
    training_pods = {"matchLabels": workers["podSelector"]["matchLabels"]}
    assert workers["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "training"
    assert workers["ingress"] == [
        {"from": [{"podSelector": training_pods}], "ports": [{"port": 2222, "protocol": "TCP"}]}
    ]
    assert workers["egress"] == [
        {"to": [{"podSelector": training_pods}], "ports": [{"port": 2222, "protocol": "TCP"}]}
    ]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_one_off_job_at_install_is_indexed_too_and_valid(kube_version):
    objs = render(*MULTI, "--set", "training.runOnInstall=true")
    (job,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["name"].endswith("-initial")]
    assert (
        job["spec"]["completionMode"] == "Indexed" and job["spec"]["template"]["spec"]["subdomain"]
    )
    for obj in objs:
        kubernetes_validate.validate(obj, kube_version, strict=True)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "training.workers=0"], "workers"),
        (["--set", "training.workers=two"], "got string, want integer"),
        (["--set", "training.workerPort=80"], "workerPort"),
        (["--set", "training.backoffLimitPerIndex=-1"], "backoffLimitPerIndex"),
        (["--set", "training.config.lrScaling=sqrt"], "lrScaling"),
        (["--set", "training.config.jitCompile=maybe"], "jitCompile"),
        (["--set", "training.config.augment=gpu"], "augment"),
    ],
)
def test_schema_rejects_impossible_multi_worker_values(args, error):
    result = helm("template", "leaf", str(CHART), *IMAGES, *args, check=False)
    assert result.returncode != 0
    assert re.search(error, result.stderr), result.stderr


def test_notes_say_where_the_chief_logs(multi):
    out = helm(
        "install",
        "leaf",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "leaf-train",
        *IMAGES,
        *MULTI,
    ).stdout
    notes = out[out.index("NOTES:") :]
    assert "Indexed Job of 2 workers" in notes
    assert "batch.kubernetes.io/job-completion-index=0" in notes


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), ("device", "device"), ("off", "off")]
)
def test_augment_value_reaches_the_job_config(value, expected):
    """null leaves the job's default (auto: device with a GPU); a set value is the job's --augment."""
    args = ["--set", f"training.config.augment={value}"] if value else []
    configmap = one(render(*args), "ConfigMap", "training")["data"]
    assert configmap.get("LEAF_TRAIN_AUGMENT") == value
    cfg = resolve(
        TrainConfig, ENV_PREFIX, {}, {**configmap, "LEAF_TRAIN_DATA": "d", "LEAF_TRAIN_OUTPUT": "o"}
    )
    assert cfg.augment == expected


# --- GPU serving options (the accelerator half of the same issue) ---


def test_gpu_serving_options_reach_the_server_config():
    """The TensorRT value set's ConfigMap, read by the server's own config code."""
    from leaf_serve.settings import ENV_PREFIX as SERVE_PREFIX
    from leaf_serve.settings import ServeConfig

    objs = render("-f", str(CHART / "ci" / "gpu-tensorrt-values.yaml"))
    data = one(objs, "ConfigMap", "serving")["data"]
    cfg = resolve(ServeConfig, SERVE_PREFIX, {}, data)
    assert cfg.providers == ["tensorrt"] and cfg.io_binding == "auto"
    assert (cfg.prefer_fp16, cfg.trt_fp16, cfg.trt_engine_cache_path) == (
        True,
        True,
        "/tmp/trt-cache",
    )
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "/tmp" in mounts  # the cache folder is on a writable emptyDir under a read-only root
    training = one(objs, "ConfigMap", "training")["data"]
    assert resolve(TrainConfig, ENV_PREFIX, {}, training).export_fp16 is True


def test_gpu_serving_defaults_leave_the_render_unchanged():
    data = one(render(), "ConfigMap", "serving")["data"]
    assert not [k for k in data if any(s in k for s in ("IO_BINDING", "FP16", "TRT"))]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "serving.config.ioBinding=always"], "ioBinding"),
        (["--set", "serving.config.trtEngineCachePath=relative/dir"], "trtEngineCachePath"),
        (["--set-string", "serving.config.preferFp16=yes"], "preferFp16"),
    ],
)
def test_schema_rejects_bad_gpu_serving_values(args, error):
    result = helm("template", "leaf", str(CHART), *IMAGES, *args, check=False)
    assert result.returncode != 0
    assert error in result.stderr, result.stderr
