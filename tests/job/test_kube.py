"""leaf_train.kube against a loopback endpoint that checks requests like the API server would."""

from __future__ import annotations

import logging
import socket

import pytest
from leaf_common.config import resolve
from leaf_train.config import ENV_PREFIX
from leaf_train.errors import ConfigError
from leaf_train.kube import (
    MODEL_VERSION_ANNOTATION,
    OUTCOME_LABEL,
    RESTARTED_AT_ANNOTATION,
    VERSION_ANNOTATION,
    KubeConfig,
    KubeReporter,
)
from test_kube_apiserver import TOKEN, FakeApiServer, apiserver, job_object  # noqa: F401 - fixture


def deployment_object(name: str = "leaf-train-serve", ns: str = "ml") -> dict:
    labels = {"app.kubernetes.io/component": "serving"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "serve", "image": "ghcr.io/x/serve:1"}]},
            },
        },
    }


@pytest.fixture
def reporter(apiserver: FakeApiServer) -> KubeReporter:
    apiserver.add(job_object())
    apiserver.add(deployment_object())
    return KubeReporter(
        apiserver.client(),
        namespace="ml",
        job_name="leaf-train-train-1",
        rollout_deployment="leaf-train-serve",
        reporting_instance="leaf-train-train-1-abcde",
    )


@pytest.fixture
def no_cluster(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a service-account token (no KUBERNETES_SERVICE_HOST) nor any kubeconfig."""
    for var in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    # The kubernetes library reads KUBECONFIG (default ~/.kube/config) once, at import: patch both.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent-kubeconfig"))
    monkeypatch.setattr(
        "kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "absent")
    )
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.mark.parametrize(
    ("reason", "message", "type_"),
    [
        ("Started", "training started: 40 classes, 1600 images", "Normal"),
        ("HeadTrained", "phase 1 done: val_accuracy=0.912 val_loss=0.301 epochs=30", "Normal"),
        ("NotPromoted", "val_accuracy 0.71 below min_accuracy 0.80", "Warning"),
        ("Exported", "x" * 5000, "Normal"),  # longer than the API's 1 kB: truncated, not rejected
    ],
)
def test_event_is_recorded_on_the_job(apiserver, reporter, reason, message, type_):
    assert reporter.event(reason, message, type_) is True
    (event,) = apiserver.of("events")
    job = apiserver.get("jobs", "ml", "leaf-train-train-1")
    assert event["regarding"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "leaf-train-train-1",
        "namespace": "ml",
        "uid": job["metadata"]["uid"],
    }
    assert (event["reason"], event["type"]) == (reason, type_)
    assert event["note"] == message[:1024]
    assert event["reportingController"] == "leaf-train.io/trainer"
    assert event["reportingInstance"] == "leaf-train-train-1-abcde"
    assert event["metadata"]["name"].startswith("leaf-train-train-1.")


def test_event_rejects_an_unknown_type(reporter):
    with pytest.raises(ValueError, match=r"expected 'Normal' or 'Warning'; received 'Info'"):
        reporter.event("Started", "x", "Info")


def test_job_uid_is_read_once_for_many_events(apiserver, reporter):
    for i in range(3):
        assert reporter.event("Epoch", f"epoch {i}")
    reads = [
        r for r in apiserver.requests if r[0] == "GET" and r[1].endswith("/jobs/leaf-train-train-1")
    ]
    assert len(reads) == 1
    assert len(apiserver.of("events")) == 3


def test_annotate_version_patches_the_job(apiserver, reporter):
    assert reporter.annotate_version("20260101T000000Z-abc123") is True
    job = apiserver.get("jobs", "ml", "leaf-train-train-1")
    assert job["metadata"]["annotations"] == {VERSION_ANNOTATION: "20260101T000000Z-abc123"}
    assert job["metadata"]["labels"] == {
        "app.kubernetes.io/component": "training"
    }  # merge, not replace


@pytest.mark.parametrize(
    ("call", "outcome"),
    [
        (lambda r: r.annotate_version("v1", promoted=True), "promoted"),
        (lambda r: r.annotate_version("v1", promoted=False), "rejected"),
        (lambda r: r.annotate_version("v1", promoted=False, candidate=True), "candidate"),
        (lambda r: r.annotate_skipped("nothing new"), "skipped"),
    ],
)
def test_the_run_outcome_is_a_label_kube_state_metrics_can_export(
    apiserver, reporter, call, outcome
):
    assert call(reporter) is True
    labels = apiserver.get("jobs", "ml", "leaf-train-train-1")["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/component": "training", OUTCOME_LABEL: outcome}


def test_rollout_patches_the_pod_template_like_kubectl_rollout_restart(apiserver, reporter):
    before = apiserver.get("deployments", "ml", "leaf-train-serve")["spec"]["template"]
    assert reporter.rollout(version="v7") is True
    after = apiserver.get("deployments", "ml", "leaf-train-serve")["spec"]["template"]
    annotations = after["metadata"]["annotations"]
    assert set(annotations) == {RESTARTED_AT_ANNOTATION, MODEL_VERSION_ANNOTATION}
    assert annotations[MODEL_VERSION_ANNOTATION] == "v7"
    assert after["spec"] == before["spec"]
    (patch,) = [r for r in apiserver.requests if r[0] == "PATCH"]
    assert patch[1] == "/apis/apps/v1/namespaces/ml/deployments/leaf-train-serve"


def test_rollout_without_a_deployment_does_nothing(apiserver):
    reporter = KubeReporter(apiserver.client(), namespace="ml", job_name="j")
    assert reporter.rollout() is False
    assert apiserver.requests == []


@pytest.mark.parametrize(
    ("forbidden", "call"),
    [
        (("POST", "events"), lambda r: r.event("Started", "x")),
        (("PATCH", "jobs"), lambda r: r.annotate_version("v1")),
        (("PATCH", "deployments"), lambda r: r.rollout()),
    ],
)
def test_api_errors_are_logged_never_raised(apiserver, reporter, caplog, forbidden, call):
    apiserver.forbidden.add(forbidden)
    with caplog.at_level(logging.WARNING, logger="leaf_train.kube"):
        assert call(reporter) is False
    assert "HTTP 403 Forbidden" in caplog.text


def test_event_without_job_uid_still_recorded_when_job_read_is_forbidden(apiserver, reporter):
    apiserver.forbidden.add(("GET", "jobs"))
    assert reporter.event("Started", "x") is True
    (event,) = apiserver.of("events")
    assert "uid" not in event["regarding"]


def test_unreachable_api_server_never_raises(caplog):
    from kubernetes import client

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = client.Configuration(host=f"http://127.0.0.1:{port}")
    conf.retries = 0
    reporter = KubeReporter(
        client.ApiClient(conf), namespace="ml", job_name="j", rollout_deployment="d"
    )
    with caplog.at_level(logging.WARNING, logger="leaf_train.kube"):
        assert reporter.event("Started", "x") is False
        assert reporter.annotate_version("v1") is False
        assert reporter.rollout() is False
    assert caplog.text.count("Kubernetes API:") >= 3


@pytest.mark.usefixtures("no_cluster")
def test_disabled_outside_a_cluster_logs_once(caplog):
    with caplog.at_level(logging.INFO, logger="leaf_train.kube"):
        reporter = KubeReporter.from_config(KubeConfig(job_name="j", rollout_deployment="d"))
        assert reporter.enabled is False
        assert (
            reporter.event("Started", "x"),
            reporter.annotate_version("v"),
            reporter.rollout(),
        ) == (
            False,
            False,
            False,
        )
    off = [r for r in caplog.records if "integration off" in r.getMessage()]
    assert len(off) == 1
    assert "no service-account token and no kubeconfig" in off[0].getMessage()


@pytest.mark.usefixtures("no_cluster")
def test_required_integration_without_credentials_is_a_configuration_error():
    with pytest.raises(
        ConfigError,
        match=r"--kube-integration \(LEAF_TRAIN_KUBE_INTEGRATION\): expected auto or off",
    ):
        KubeReporter.from_config(KubeConfig(kube_integration="on"))


def test_off_means_no_api_calls_even_with_a_kubeconfig(apiserver, tmp_path):
    path = apiserver.kubeconfig(tmp_path / "config")
    reporter = KubeReporter.from_config(
        KubeConfig(kube_integration="off", kubeconfig=path, job_name="j")
    )
    assert reporter.enabled is False
    assert reporter.event("Started", "x") is False
    assert apiserver.requests == []


def test_from_config_uses_the_kubeconfig_and_its_namespace(apiserver, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    apiserver.add(job_object(ns="team-a"))
    env = {
        "LEAF_TRAIN_KUBECONFIG": apiserver.kubeconfig(tmp_path / "config", namespace="team-a"),
        "LEAF_TRAIN_JOB_NAME": "leaf-train-train-1",
    }
    cfg = resolve(KubeConfig, ENV_PREFIX, environ=env)
    reporter = KubeReporter.from_config(cfg)
    assert (reporter.enabled, reporter.namespace) == (True, "team-a")
    assert reporter.annotate_version("v2") is True
    job = apiserver.get("jobs", "team-a", "leaf-train-train-1")
    assert job["metadata"]["annotations"][VERSION_ANNOTATION] == "v2"


def test_no_job_name_skips_job_calls_and_says_so_once(apiserver, caplog):
    reporter = KubeReporter(apiserver.client(), namespace="ml", job_name="")
    with caplog.at_level(logging.INFO, logger="leaf_train.kube"):
        assert reporter.event("Started", "x") is False
        assert reporter.annotate_version("v") is False
    assert caplog.text.count("no job name") == 1
    assert apiserver.requests == []


@pytest.mark.parametrize(
    ("value", "message"), [("maybe", "expected one of auto, on, off, received 'maybe'")]
)
def test_config_rejects_bad_values(value, message):
    from leaf_common.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve(KubeConfig, ENV_PREFIX, environ={"LEAF_TRAIN_KUBE_INTEGRATION": value})
