"""Kubernetes integration of the training job: Events, the published-version annotation, rollouts.

All of it is best effort: outside a cluster the reporter is disabled and says so once, and an API
error is logged and never reaches the training run. The chart grants exactly these calls
(``charts/leaf-train/templates/rbac.yaml``). What an operator sees:
docs/operations.md#start-a-run-now-and-follow-it
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leaf_common.config import option, option_error

from .config import ENV_PREFIX

log = logging.getLogger(__name__)

VERSION_ANNOTATION = "leaf-train.io/published-version"
# Why the retrain policy skipped the run (freshness.py)
SKIPPED_ANNOTATION = "leaf-train.io/skipped"
# The key `kubectl rollout restart` sets.
RESTARTED_AT_ANNOTATION = "kubectl.kubernetes.io/restartedAt"
MODEL_VERSION_ANNOTATION = "leaf-train.io/model-version"
# How the run ended: promoted, rejected (by the gate) or skipped (retrain policy). A label, not an
# annotation, so kube-state-metrics can export it (kube_job_labels, with --metric-labels-allowlist)
# and the chart's LeafTrainRetrainsNotPromoted alert can count the runs since the last promotion.
OUTCOME_LABEL = "leaf-train.io/outcome"
REPORTING_CONTROLLER = "leaf-train.io/trainer"
MERGE_PATCH = "application/merge-patch+json"
# A dead or slow API server must not stall training: every call gives up after this.
REQUEST_TIMEOUT_S = 10.0
# events.k8s.io/v1 limits (the API server rejects longer values).
_MAX_NOTE = 1024
_MAX_SHORT = 128


@dataclass
class KubeConfig:
    """Where the job runs in Kubernetes; every field is also ``LEAF_TRAIN_<FIELD>``."""

    kube_integration: str = option(
        "auto",
        "Kubernetes Events/annotations: auto (when a service-account token or kubeconfig "
        "exists), on, off",
        choices=("auto", "on", "off"),
    )
    namespace: str = option(
        "", "Namespace of the Job; empty = the service account's or the kubeconfig context's"
    )
    job_name: str = option(
        "", "This run's Job (the chart sets it via the downward API); empty = no Job to report on"
    )
    rollout_deployment: str = option(
        "", "Deployment to restart after a promotion; empty = no rollout"
    )
    kubeconfig: str = option(
        "", "kubeconfig file used outside a cluster; empty = KUBECONFIG or ~/.kube/config"
    )

    def validate(self) -> None:
        """Reject names the API would refuse, naming what was received."""
        for name in ("namespace", "job_name", "rollout_deployment"):
            value = getattr(self, name)
            if len(value) > 253 or value != value.strip():
                raise option_error(ENV_PREFIX, name, "a Kubernetes object name", repr(value))


def load_client_configuration(cfg: KubeConfig) -> tuple[Any, str] | None:
    """Credentials for the API: in-cluster service account first, then a kubeconfig.

    Returns:
        ``(kubernetes.client.Configuration, default namespace)``, or ``None`` when neither exists.
    """
    from kubernetes import client, config

    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)
        return conf, _incluster_namespace()
    except config.ConfigException:
        pass
    try:
        config.load_kube_config(config_file=cfg.kubeconfig or None, client_configuration=conf)
        _, active = config.list_kube_config_contexts(config_file=cfg.kubeconfig or None)
        return conf, (active or {}).get("context", {}).get("namespace") or "default"
    except (config.ConfigException, OSError, TypeError):
        return None


def _incluster_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _now() -> datetime:
    return datetime.now(UTC)


class KubeReporter:
    """Reports the training run to Kubernetes; every method is a no-op when disabled.

    Methods return ``True`` when the API accepted the call and ``False`` otherwise (disabled,
    nothing to report on, or an API error, which is logged as a warning).
    """

    def __init__(
        self,
        api_client: Any | None,
        namespace: str = "default",
        job_name: str = "",
        rollout_deployment: str = "",
        reporting_instance: str = "",
    ) -> None:
        """Use :meth:`from_config` in the job; this constructor is for tests and given clients.

        Args:
            api_client: a ``kubernetes.client.ApiClient``, or ``None`` for a disabled reporter.
            namespace: namespace of the Job and of the Deployment to roll.
            job_name: this run's Job; empty = Events and the annotation are skipped.
            rollout_deployment: Deployment :meth:`rollout` restarts when called without one.
            reporting_instance: who reports (the pod name); empty = this host's name.
        """
        self.api_client = api_client
        self.namespace = namespace
        self.job_name = job_name
        self.rollout_deployment = rollout_deployment
        self.reporting_instance = (reporting_instance or socket.gethostname())[:_MAX_SHORT]
        self._job_uid: str | None = None
        self._warned_no_job = False

    @classmethod
    def from_config(cls, cfg: KubeConfig) -> KubeReporter:
        """Build the reporter the training job uses.

        Raises:
            ConfigError: ``kube_integration`` is ``on`` but no credentials are found.
        """
        if cfg.kube_integration == "off":
            log.info("Kubernetes integration off (kube_integration=off)")
            return cls(None)
        loaded = load_client_configuration(cfg)
        if loaded is None:
            if cfg.kube_integration == "on":
                raise option_error(
                    ENV_PREFIX,
                    "kube_integration",
                    "auto or off where no service-account token or kubeconfig exists",
                    "on, and neither was found",
                )
            log.info("Kubernetes integration off: no service-account token and no kubeconfig")
            return cls(None)
        from kubernetes import client

        conf, default_namespace = loaded
        reporter = cls(
            client.ApiClient(conf),
            namespace=cfg.namespace or default_namespace,
            job_name=cfg.job_name,
            rollout_deployment=cfg.rollout_deployment,
        )
        log.info(
            "Kubernetes integration on: namespace %s, job %s, rollout %s",
            reporter.namespace,
            cfg.job_name or "(none)",
            cfg.rollout_deployment or "(off)",
        )
        return reporter

    @property
    def enabled(self) -> bool:
        """Whether calls reach the API at all."""
        return self.api_client is not None

    def _has_job(self) -> bool:
        if not self.enabled:
            return False
        if not self.job_name:
            if not self._warned_no_job:
                log.info(
                    "Kubernetes integration: no job name (LEAF_TRAIN_JOB_NAME), so no Events or "
                    "annotations"
                )
                self._warned_no_job = True
            return False
        return True

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any | None:
        """Run one API call; log and swallow every failure so training never dies of it."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, _request_timeout=REQUEST_TIMEOUT_S, **kwargs)
        except ApiException as e:
            log.warning("Kubernetes API: %s failed: HTTP %s %s", what, e.status, e.reason)
        except Exception as e:  # noqa: BLE001 - connection, TLS, timeout, decoding: harmless
            log.warning("Kubernetes API: %s failed: %s: %s", what, type(e).__name__, e)
        return None

    def _job_uid_or_none(self) -> str | None:
        if self._job_uid is None:
            from kubernetes import client

            job = self._call(
                f"read job {self.job_name}",
                client.BatchV1Api(self.api_client).read_namespaced_job,
                self.job_name,
                self.namespace,
            )
            if job is not None and job.metadata is not None:
                self._job_uid = job.metadata.uid
        return self._job_uid

    # ``type`` is the Event API's own word for it.
    def event(self, reason: str, message: str, type: str = "Normal") -> bool:  # noqa: A002
        """Record an events.k8s.io/v1 Event on this run's Job.

        Args:
            reason: short CamelCase reason, e.g. ``Started``, ``HeadTrained``, ``Promoted``.
            message: human-readable note (truncated to the API's 1 kB).
            type: ``Normal`` or ``Warning``.
        """
        if type not in ("Normal", "Warning"):
            raise ValueError(f"event type: expected 'Normal' or 'Warning'; received {type!r}")
        if not self._has_job():
            return False
        from kubernetes import client

        body = client.EventsV1Event.from_dict(self._event_body(reason, message, type))
        api = client.EventsV1Api(self.api_client)
        return (
            self._call(f"event {reason}", api.create_namespaced_event, self.namespace, body)
            is not None
        )

    def _event_body(self, reason: str, message: str, type: str) -> dict[str, Any]:  # noqa: A002
        """The Event as the API takes it, regarding this run's Job (with its uid when known)."""
        regarding: dict[str, Any] = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": self.job_name,
            "namespace": self.namespace,
        }
        uid = self._job_uid_or_none()
        if uid:
            regarding["uid"] = uid
        return {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{self.job_name[:200]}.",
                "namespace": self.namespace,
            },
            "eventTime": _now(),
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.reporting_instance,
            "action": "Train",
            "reason": reason[:_MAX_SHORT],
            "note": message[:_MAX_NOTE],
            "type": type,
            "regarding": regarding,
        }

    def annotate_version(
        self, version: str, promoted: bool | None = None, *, candidate: bool = False
    ) -> bool:
        """Annotate this run's Job with the version it published
        (``leaf-train.io/published-version``).

        ``promoted``: the gate's decision, also set as the ``leaf-train.io/outcome`` label when
        given; ``candidate``: it passed and became the shadow candidate instead (outcome
        ``candidate``).
        """
        label = "candidate" if candidate else "promoted" if promoted else "rejected"
        outcome = None if promoted is None and not candidate else {OUTCOME_LABEL: label}
        return self._annotate({VERSION_ANNOTATION: version}, outcome)

    def annotate_skipped(self, reason: str) -> bool:
        """Annotate the Job with why it skipped (``leaf-train.io/skipped``): Events expire."""
        return self._annotate({SKIPPED_ANNOTATION: reason}, {OUTCOME_LABEL: "skipped"})

    def _annotate(self, annotations: dict[str, str], labels: dict[str, str] | None = None) -> bool:
        if not self._has_job():
            return False
        from kubernetes import client

        patch: dict[str, Any] = {"metadata": {"annotations": annotations}}
        if labels:
            patch["metadata"]["labels"] = labels
        api = client.BatchV1Api(self.api_client)
        result = self._call(
            f"annotate job {self.job_name}",
            api.patch_namespaced_job,
            self.job_name,
            self.namespace,
            patch,
            _content_type=MERGE_PATCH,
        )
        return result is not None

    def rollout(self, deployment: str = "", version: str = "") -> bool:
        """Restart a Deployment's pods the way ``kubectl rollout restart`` does.

        Args:
            deployment: the Deployment; empty = the configured ``rollout_deployment`` (none =
                no-op).
            version: the promoted version, recorded in a pod-template annotation too.
        """
        name = deployment or self.rollout_deployment
        if not self.enabled or not name:
            return False
        from kubernetes import client

        annotations = {RESTARTED_AT_ANNOTATION: _now().strftime("%Y-%m-%dT%H:%M:%SZ")}
        if version:
            annotations[MODEL_VERSION_ANNOTATION] = version
        patch = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        api = client.AppsV1Api(self.api_client)
        result = self._call(
            f"rollout deployment {name}",
            api.patch_namespaced_deployment,
            name,
            self.namespace,
            patch,
            _content_type=MERGE_PATCH,
        )
        if result is not None:
            log.info("Kubernetes: restarted deployment %s/%s", self.namespace, name)
        return result is not None
