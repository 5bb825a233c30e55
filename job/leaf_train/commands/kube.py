"""``leaf-train submit`` and ``leaf-train status``: start a training run now, and see how it went.

``submit`` copies the CronJob's jobTemplate into a new Job as ``kubectl create job --from=cronjob``
does, and marks the run as manual; ``status`` prints a Job's phase, its Events and the version it
published, or why it skipped. Design: docs/operations.md#start-a-run-now-and-follow-it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from leaf_common.config import add_arguments, option, option_error, resolve

from ..config import ENV_PREFIX
from ..errors import ConfigError, LeafTrainError
from ..kube import (
    REQUEST_TIMEOUT_S,
    SKIPPED_ANNOTATION,
    VERSION_ANNOTATION,
    KubeConfig,
    load_client_configuration,
)

MANUAL_ANNOTATION = "cronjob.kubernetes.io/instantiate"


@dataclass
class SubmitConfig:
    """Options of ``leaf-train submit``."""

    cronjob: str = option(
        "", "CronJob whose jobTemplate the Job copies (the chart's <release>-leaf-train-train)"
    )
    name: str = option("", "Name of the new Job; empty = <cronjob>-manual-<unix time>")
    namespace: str = option(
        "", "Namespace; empty = the kubeconfig context's (or the service account's)"
    )
    kubeconfig: str = option(
        "", "kubeconfig file; empty = in-cluster, then KUBECONFIG or ~/.kube/config"
    )
    force: bool = option(
        False,
        "Train even if the photos, options and code are those of the served version "
        "(skip_if_unchanged=off)",
    )

    def validate(self) -> None:
        if not self.cronjob:
            raise option_error(ENV_PREFIX, "cronjob", "the name of the training CronJob", "nothing")
        if len(self.name) > 63:
            expected = "at most 63 characters (a label value)"
            raise option_error(ENV_PREFIX, "name", expected, repr(self.name))


@dataclass
class StatusConfig:
    """Options of ``leaf-train status``."""

    job: str = option("", "Job to report on; empty = the newest Job of --cronjob")
    cronjob: str = option("", "CronJob whose newest Job is reported when --job is empty")
    namespace: str = option(
        "", "Namespace; empty = the kubeconfig context's (or the service account's)"
    )
    kubeconfig: str = option(
        "", "kubeconfig file; empty = in-cluster, then KUBECONFIG or ~/.kube/config"
    )
    # Not "output": LEAF_TRAIN_OUTPUT is the registry URI in a training pod.
    format: str = option("text", "Output format", choices=("text", "json"))

    def validate(self) -> None:
        if not self.job and not self.cronjob:
            raise option_error(ENV_PREFIX, ("job", "cronjob"), "one of them", "neither")


class KubeApiError(LeafTrainError):
    """The Kubernetes API refused or failed a request of submit/status."""


def _connect(kubeconfig: str, namespace: str) -> tuple[Any, str]:
    from kubernetes import client

    loaded = load_client_configuration(KubeConfig(kube_integration="on", kubeconfig=kubeconfig))
    if loaded is None:
        raise ConfigError(
            "expected a kubeconfig (--kubeconfig, KUBECONFIG or ~/.kube/config) or an in-cluster "
            "service account; found neither"
        )
    conf, default_namespace = loaded
    return client.ApiClient(conf), namespace or default_namespace


def _api(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """One API call; failures become a one-line error naming the call and the server's answer."""
    from kubernetes.client.exceptions import ApiException

    try:
        return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
    except ApiException as e:
        detail = e.reason
        with contextlib.suppress(ValueError):  # a Status body carries the server's reason
            detail = json.loads(e.body or "{}").get("message") or detail
        raise KubeApiError(f"{what}: HTTP {e.status}: {detail}") from e
    except Exception as e:
        raise KubeApiError(f"{what}: {type(e).__name__}: {e}") from e


def job_from_cronjob(cronjob: Any, name: str, force: bool = False) -> dict[str, Any]:
    """The Job ``kubectl create job --from=cronjob/...`` would make, with its pods told so.

    Args:
        cronjob: a ``V1CronJob`` read from the API.
        name: the new Job's name.
        force: also turn the retrain policy's skip off (``LEAF_TRAIN_SKIP_IF_UNCHANGED=off``).
    """
    template = cronjob.spec.job_template
    meta = template.metadata
    labels = dict(meta.labels or {}) if meta else {}
    annotations = dict(meta.annotations or {}) if meta else {}
    annotations[MANUAL_ANNOTATION] = "manual"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cronjob.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
            # Owned by the CronJob (deleted with it, counted in its history), as kubectl does.
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cronjob.metadata.name,
                    "uid": cronjob.metadata.uid,
                    "controller": True,
                }
            ],
        },
        "spec": _with_env(_camel(template.spec), _run_env(force)),
    }


def _run_env(force: bool) -> dict[str, str]:
    """What a submitted Job's pods are told; env entries win over the chart's ConfigMap."""
    env = {f"{ENV_PREFIX}RUN_TRIGGER": "manual"}  # the CronJob's template says "scheduled"
    if force:
        env[f"{ENV_PREFIX}SKIP_IF_UNCHANGED"] = "off"
    return env


def _with_env(spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """``spec`` with ``env`` set in every container of its pod template (same names replaced)."""
    for container in spec.get("template", {}).get("spec", {}).get("containers", []):
        kept = [e for e in container.get("env") or [] if e.get("name") not in env]
        container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
    return spec


def _camel(obj: Any) -> Any:
    """Model ``to_dict()`` output uses snake_case keys; manifests use the API's camelCase."""
    from kubernetes import client

    return client.ApiClient().sanitize_for_serialization(obj)


def submit(cfg: SubmitConfig) -> dict[str, Any]:
    """Create a Job from the CronJob's template now; returns the created Job as a manifest."""
    from kubernetes import client

    api_client, namespace = _connect(cfg.kubeconfig, cfg.namespace)
    batch = client.BatchV1Api(api_client)
    cronjob = _api(
        f"read cronjob {namespace}/{cfg.cronjob}",
        batch.read_namespaced_cron_job,
        cfg.cronjob,
        namespace,
    )
    # 40 + len("-manual-") + 10 digits stays within the 63-character label limit of job-name.
    name = cfg.name or f"{cfg.cronjob[:40].rstrip('-')}-manual-{int(time.time())}"
    body = client.V1Job.from_dict(job_from_cronjob(cronjob, name, force=cfg.force))
    created = _api(f"create job {namespace}/{name}", batch.create_namespaced_job, namespace, body)
    return _camel(created)


def job_phase(job: Any) -> str:
    """Succeeded / Failed (reason) / Running / Pending, from the Job's status."""
    st = job.status
    for cond in (st.conditions or []) if st else []:
        if cond.status == "True" and cond.type == "Complete":
            return "Succeeded"
        if cond.status == "True" and cond.type == "Failed":
            return f"Failed ({cond.reason})" if cond.reason else "Failed"
    if st and st.active:
        return "Running"
    return "Pending"


def status(cfg: StatusConfig) -> dict[str, Any]:
    """Phase, Events and published version of a training Job."""
    from kubernetes import client

    api_client, namespace = _connect(cfg.kubeconfig, cfg.namespace)
    batch = client.BatchV1Api(api_client)
    if cfg.job:
        job = _api(f"read job {namespace}/{cfg.job}", batch.read_namespaced_job, cfg.job, namespace)
    else:
        job = _newest_job_of(batch, namespace, cfg.cronjob)
    name = job.metadata.name
    core = client.CoreV1Api(api_client)
    events = _api(
        f"list events of job {namespace}/{name}",
        core.list_namespaced_event,
        namespace,
        field_selector=f"involvedObject.kind=Job,involvedObject.name={name}",
    )
    annotations = job.metadata.annotations or {}
    return {
        "job": name,
        "namespace": namespace,
        "phase": job_phase(job),
        "published_version": annotations.get(VERSION_ANNOTATION, ""),
        "skipped": annotations.get(SKIPPED_ANNOTATION, ""),
        "events": [
            {
                "time": _event_time(ev),
                "type": ev.type or "",
                "reason": ev.reason or "",
                "message": ev.message or "",
            }
            for ev in sorted(events.items, key=_event_time)
        ],
    }


def _event_time(ev: Any) -> str:
    when = (
        ev.event_time or ev.last_timestamp or ev.first_timestamp or ev.metadata.creation_timestamp
    )
    return when.isoformat() if when else ""


def _newest_job_of(batch: Any, namespace: str, cronjob_name: str) -> Any:
    cronjob = _api(
        f"read cronjob {namespace}/{cronjob_name}",
        batch.read_namespaced_cron_job,
        cronjob_name,
        namespace,
    )
    jobs = _api(f"list jobs in {namespace}", batch.list_namespaced_job, namespace)
    owned = [
        j
        for j in jobs.items
        if any(ref.uid == cronjob.metadata.uid for ref in (j.metadata.owner_references or []))
    ]
    if not owned:
        raise KubeApiError(
            f"cronjob {namespace}/{cronjob_name}: expected at least one Job it owns; found none"
        )
    return max(owned, key=lambda j: j.metadata.creation_timestamp)


def format_status(report: dict[str, Any]) -> str:
    """The text form of :func:`status`."""
    published = report["published_version"] or (
        "(none: skipped)" if report.get("skipped") else "(none yet)"
    )
    lines = [
        f"job:               {report['namespace']}/{report['job']}",
        f"phase:             {report['phase']}",
        f"published version: {published}",
    ]
    if report.get("skipped"):
        lines.append(f"skipped:           {report['skipped']}")
    lines.append("events:" if report["events"] else "events:            (none)")
    for e in report["events"]:
        # Multi-line notes (the gate's decision table) continue under the message column.
        first, *rest = (e["message"] or "").splitlines() or [""]
        lines.append(f"  {e['time']}  {e['type']:<7} {e['reason']:<16} {first}")
        lines += [f"    {line}" for line in rest]
    return "\n".join(lines)


def _run_submit(args: argparse.Namespace) -> int:
    created = submit(resolve(SubmitConfig, ENV_PREFIX, args))
    meta = created["metadata"]
    print(f"job.batch/{meta['name']} created in namespace {meta['namespace']}")
    print(f"follow it: leaf-train status --namespace {meta['namespace']} --job {meta['name']}")
    return 0


def _run_status(args: argparse.Namespace) -> int:
    cfg = resolve(StatusConfig, ENV_PREFIX, args)
    report = status(cfg)
    print(json.dumps(report, indent=2) if cfg.format == "json" else format_status(report))
    return 0


def register(subparsers: Any) -> None:
    """Add ``submit`` and ``status`` to the ``leaf-train`` command line."""
    p = subparsers.add_parser("submit", help="start a training Job now from the CronJob's template")
    add_arguments(p, SubmitConfig, ENV_PREFIX)
    p.set_defaults(func=_run_submit)
    p = subparsers.add_parser(
        "status", help="phase, Events and published version of a training Job"
    )
    add_arguments(p, StatusConfig, ENV_PREFIX)
    p.set_defaults(func=_run_status)
