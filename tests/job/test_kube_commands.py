"""``leaf-train submit`` / ``status`` against the loopback API endpoint, with the chart's real CronJob."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from leaf_common.config import resolve
from leaf_train.commands import kube as kube_cmd
from leaf_train.config import ENV_PREFIX
from leaf_train.errors import EXIT_CONFIG, EXIT_FAILURE
from leaf_train.kube import SKIPPED_ANNOTATION, VERSION_ANNOTATION, KubeReporter
from test_kube_apiserver import FakeApiServer, apiserver, job_object  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
NS = "leaf-train"
CRONJOB = "leaf-train-train"


def chart_cronjob() -> dict:
    """The CronJob of k8s/ (the chart's default render, kept fresh by tests/k8s)."""
    (doc,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "cronjob.yaml").read_text()) if d]
    return doc


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line as a user runs it: exit code, stdout, and the one-line error if any.

    Mirrors leaf_train.cli.main's error-to-exit-code mapping; importing the full CLI would pull
    in the training stack, and this module is tested on its own.
    """
    import argparse

    from leaf_common.errors import LeafError

    parser = argparse.ArgumentParser(prog="leaf-train")
    kube_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args), capsys.readouterr().out, ""
    except LeafError as e:
        return e.exit_code, capsys.readouterr().out, str(e)


@pytest.fixture
def cluster(apiserver: FakeApiServer, tmp_path, monkeypatch) -> FakeApiServer:  # noqa: F811
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # LEAF_TRAIN_KUBECONFIG, not KUBECONFIG: the kubernetes library reads KUBECONFIG once, at import.
    monkeypatch.setenv(
        "LEAF_TRAIN_KUBECONFIG", apiserver.kubeconfig(tmp_path / "config", namespace=NS)
    )
    apiserver.add(chart_cronjob())
    return apiserver


def test_submit_creates_a_manual_job_owned_by_the_cronjob(cluster, capsys):
    code, out, _ = run(["submit", "--cronjob", CRONJOB, "--name", "retrain-now"], capsys)
    assert code == 0
    assert "job.batch/retrain-now created in namespace leaf-train" in out
    job = cluster.get("jobs", NS, "retrain-now")
    cronjob = cluster.get("cronjobs", NS, CRONJOB)
    assert job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": CRONJOB,
            "uid": cronjob["metadata"]["uid"],
            "controller": True,
        }
    ]
    assert job["metadata"]["labels"] == cronjob["spec"]["jobTemplate"]["metadata"]["labels"]
    # The chart's whole Job spec carries over (GPU, podFailurePolicy, downward-API run id), except that the
    # pods are told they were started by hand: the retrain policy's auto skips only scheduled runs.
    template = cronjob["spec"]["jobTemplate"]["spec"]
    assert train_env(template)["LEAF_TRAIN_RUN_TRIGGER"] == "scheduled"
    assert train_env(job["spec"]) == {**train_env(template), "LEAF_TRAIN_RUN_TRIGGER": "manual"}
    assert without_env(job["spec"]) == without_env(template)


def train_env(job_spec: dict) -> dict:
    (container,) = job_spec["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"an env entry appears twice: {names}"
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def without_env(job_spec: dict) -> dict:
    spec = json.loads(json.dumps(job_spec))
    for c in spec["template"]["spec"]["containers"]:
        c.pop("env")
    return spec


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"LEAF_TRAIN_RUN_TRIGGER": "manual"}),
        (["--force"], {"LEAF_TRAIN_RUN_TRIGGER": "manual", "LEAF_TRAIN_SKIP_IF_UNCHANGED": "off"}),
        (["--force", "false"], {"LEAF_TRAIN_RUN_TRIGGER": "manual"}),
    ],
)
def test_submit_tells_the_pods_how_the_run_was_started(cluster, capsys, argv, expected):
    code, _, error = run(["submit", "--cronjob", CRONJOB, "--name", "now", *argv], capsys)
    assert code == 0, error
    env = train_env(cluster.get("jobs", NS, "now")["spec"])
    assert {
        k: v
        for k, v in env.items()
        if k in ("LEAF_TRAIN_RUN_TRIGGER", "LEAF_TRAIN_SKIP_IF_UNCHANGED")
    } == expected
    # The job reads them as the retrain policy: a forced run never skips, a manual one skips only with "on".
    from leaf_train.freshness import RetrainConfig, check_enabled

    policy = resolve(
        RetrainConfig, ENV_PREFIX, environ={k: v for k, v in env.items() if isinstance(v, str)}
    )
    assert check_enabled(policy)[0] is False


def test_submit_names_the_job_after_the_cronjob_by_default(cluster, capsys):
    code, _, _ = run(["submit", "--cronjob", CRONJOB], capsys)
    assert code == 0
    (job,) = cluster.of("jobs")
    name = job["metadata"]["name"]
    assert name.startswith(f"{CRONJOB}-manual-") and len(name) <= 63


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["submit", "--cronjob", "absent"],
            EXIT_FAILURE,
            'read cronjob leaf-train/absent: HTTP 404: cronjobs "absent"',
        ),
        (
            ["submit"],
            EXIT_CONFIG,
            "(LEAF_TRAIN_CRONJOB): expected the name of the training CronJob, received nothing",
        ),
        (
            ["submit", "--cronjob", CRONJOB, "--name", "x" * 64],
            EXIT_CONFIG,
            "expected at most 63 characters",
        ),
        (
            ["status"],
            EXIT_CONFIG,
            "and --cronjob (LEAF_TRAIN_CRONJOB): expected one of them, received neither",
        ),
        (
            ["status", "--job", "absent"],
            EXIT_FAILURE,
            'read job leaf-train/absent: HTTP 404: jobs "absent" not found',
        ),
        (
            ["status", "--job", "j", "--format", "xml"],
            EXIT_CONFIG,
            "FORMAT): expected one of text, json, received 'xml'",
        ),
    ],
)
def test_errors_name_what_failed(cluster, capsys, argv, code, message):
    got, out, error = run(argv, capsys)
    assert (got, out) == (code, "")
    assert message in error
    assert cluster.of("jobs") == []


def test_submit_forbidden_is_reported_with_the_servers_message(cluster):
    cluster.forbidden.add(("POST", "jobs"))
    with pytest.raises(
        kube_cmd.KubeApiError, match=r"create job leaf-train/x: HTTP 403: jobs is forbidden"
    ):
        kube_cmd.submit(resolve(kube_cmd.SubmitConfig, ENV_PREFIX, dict(cronjob=CRONJOB, name="x")))


def test_status_shows_phase_events_and_published_version(cluster, capsys):
    assert run(["submit", "--cronjob", CRONJOB, "--name", "run-1"], capsys)[0] == 0
    reporter = KubeReporter(
        cluster.client(), namespace=NS, job_name="run-1", reporting_instance="run-1-pod"
    )
    assert reporter.event("Started", "training started: 3 classes")
    assert reporter.event("NotPromoted", "val_accuracy 0.70 below 0.80", "Warning")
    assert reporter.annotate_version("20260101T000000Z-abc")
    job = cluster.get("jobs", NS, "run-1")
    job["status"] = {"active": 1}

    code, out, _ = run(["status", "--job", "run-1"], capsys)
    assert code == 0
    assert "phase:             Running" in out
    assert "published version: 20260101T000000Z-abc" in out
    assert "Started" in out and "training started: 3 classes" in out
    assert "Warning" in out and "NotPromoted" in out

    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    code, out, _ = run(["status", "--cronjob", CRONJOB, "--format", "json"], capsys)
    report = json.loads(out)
    assert report["job"] == "run-1"  # the newest Job the CronJob owns
    assert report["phase"] == "Succeeded"
    assert report["published_version"] == "20260101T000000Z-abc"
    assert [e["reason"] for e in report["events"]] == ["Started", "NotPromoted"]


@pytest.mark.parametrize(
    ("job_status", "phase"),
    [
        ({}, "Pending"),
        ({"active": 1}, "Running"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "Succeeded"),
        (
            {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]},
            "Failed (PodFailurePolicy)",
        ),
        ({"conditions": [{"type": "Failed", "status": "False"}], "active": 1}, "Running"),
    ],
)
def test_job_phase(job_status, phase):
    from kubernetes import client

    job = client.V1Job.from_dict({**job_object(), "status": job_status})
    assert kube_cmd.job_phase(job) == phase


def test_status_of_a_cronjob_without_jobs_says_so(cluster):
    with pytest.raises(
        kube_cmd.KubeApiError, match="expected at least one Job it owns; found none"
    ):
        kube_cmd.status(resolve(kube_cmd.StatusConfig, ENV_PREFIX, dict(cronjob=CRONJOB)))


def test_status_without_version_says_none_yet(cluster):
    cluster.add(job_object(name="run-2", ns=NS))
    report = kube_cmd.status(resolve(kube_cmd.StatusConfig, ENV_PREFIX, dict(job="run-2")))
    assert report["published_version"] == "" and report["events"] == []
    assert "published version: (none yet)" in kube_cmd.format_status(report)
    assert VERSION_ANNOTATION not in (
        cluster.get("jobs", NS, "run-2")["metadata"].get("annotations") or {}
    )


def test_status_shows_why_a_run_skipped_and_the_gate_table_under_its_event(cluster, capsys):
    assert run(["submit", "--cronjob", CRONJOB, "--name", "run-3"], capsys)[0] == 0
    reporter = KubeReporter(
        cluster.client(), namespace=NS, job_name="run-3", reporting_instance="run-3-pod"
    )
    assert reporter.event("GateDecision", "v1: passes the gate\nRULE  VERDICT\nparity  pass")
    reason = "the 120 photos, the training options and the code are those of the served version v1"
    assert reporter.event("Skipped", reason) and reporter.annotate_skipped(reason)
    assert cluster.get("jobs", NS, "run-3")["metadata"]["annotations"][SKIPPED_ANNOTATION] == reason

    code, out, _ = run(["status", "--job", "run-3"], capsys)
    assert code == 0
    assert "published version: (none: skipped)" in out
    assert f"skipped:           {reason}" in out
    lines = out.splitlines()
    gate = next(i for i, line in enumerate(lines) if "GateDecision" in line)
    assert lines[gate].endswith("v1: passes the gate")
    assert lines[gate + 1 : gate + 3] == [
        "    RULE  VERDICT",
        "    parity  pass",
    ]  # the table stays readable
    report = kube_cmd.status(resolve(kube_cmd.StatusConfig, ENV_PREFIX, dict(job="run-3")))
    assert report["skipped"] == reason
