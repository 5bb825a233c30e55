"""Helpers for the container tests: podman, the chart's real render, and pods as Kubernetes would make them.

What is played comes from ``helm template`` of charts/leaf-train and is never retyped. Podman 4.3
(Debian bookworm's) cannot take three things of a valid render as they are; :func:`for_podman` makes
exactly these changes and reports them, so a test can check that nothing else was touched:

* annotations whose value is longer than 63 characters (the chart's ``checksum/config``) are dropped:
  ``kube play`` < 5.0 applies the *label* length limit to annotation values (containers/podman#21663);
  annotations have no effect on a container.
* ``fieldRef: metadata.namespace`` becomes the literal namespace: podman pods have no namespace, and
  the kubelet would inject exactly that string.
* a Secret is created with ``podman secret create`` in the form podman 4.3's ``secretKeyRef`` reads
  (a JSON object of base64 values); its ``kube play`` stores Secrets in a form it cannot read back.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from testkit import load_manifests

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "leaf-train"
RELEASE = "leaf"
NAMESPACE = "leaf-train"
NETWORK = (
    "podman"  # the default bridge: pods reach the host at its gateway, host.containers.internal
)
ANNOTATION_VALUE_MAX = 63  # podman < 5.0's (wrong) limit, containers/podman#21663
PODMAN_ENV = {
    **os.environ,
    "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(ROOT / "scripts/containers.conf")),
}


def podman(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's containers.conf; raises with podman's stderr on failure."""
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=PODMAN_ENV
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


# As the chart runs a container: read-only root, no capabilities, no privilege escalation, /tmp writable.
LOCKED_DOWN = (
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
)


def run_locked_down(
    image: str, *args: str, entrypoint: str | None = None, timeout: float = 120
) -> str:
    """stdout of ``podman run`` of ``image`` as the chart runs it (``LOCKED_DOWN``), removed afterwards."""
    cmd = [
        "run",
        "--rm",
        *LOCKED_DOWN,
        *(["--entrypoint", entrypoint] if entrypoint else []),
        image,
        *args,
    ]
    return podman(*cmd, timeout=timeout).stdout


# Inside an image: every installed distribution as name==version (names normalised as PEP 503 does) and the
# sha256 of the lock the venv records (leaf_train.provenance reads it as sys.prefix/leaf-train.lock).
VENV_PROBE = (
    "import hashlib, importlib.metadata as m, json, re, sys; "
    "names = sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() + '==' + d.version "
    "for d in m.distributions()}); "
    "lock = open(sys.prefix + '/leaf-train.lock', 'rb').read(); "
    "print(json.dumps({'installed': names, 'lock_sha256': hashlib.sha256(lock).hexdigest()}))"
)


def venv_facts(image: str) -> dict[str, Any]:
    """``VENV_PROBE`` run in ``image``: what its venv holds and which lock it records."""
    return json.loads(run_locked_down(image, "-c", VENV_PROBE, entrypoint="python"))


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values`` (dotted keys, as --set-json) -> its objects."""
    args = [
        str(HELM),
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.31.0",
    ]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout
    return load_manifests(out)


def one(objs: Iterable[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objs
        if o["kind"] == kind
        and (
            component is None
            or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        )
    ]
    assert len(found) == 1, f"expected one {kind} ({component}); found {len(found)}"
    return found[0]


def job_pod(cronjob: dict[str, Any], job_name: str, pod_name: str) -> dict[str, Any]:
    """The Pod the Job controller makes for Job ``job_name`` created from ``cronjob``: its template, verbatim,
    plus the labels the controller adds (the training pod reads its run id from ``batch.kubernetes.io/job-name``)."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"])
    metadata = template["metadata"]
    metadata["labels"] = {
        **metadata.get("labels", {}),
        "batch.kubernetes.io/job-name": job_name,
        "job-name": job_name,
    }
    metadata.update(name=pod_name, namespace=cronjob["metadata"]["namespace"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


def for_podman(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A copy of a Pod/Deployment/ConfigMap podman 4.3 can play, and the list of changes made (see module doc)."""
    obj = copy.deepcopy(obj)
    changes: list[str] = []
    metas = [obj["metadata"]]
    spec = obj.get("spec", {})
    if obj["kind"] == "Deployment":
        metas.append(spec["template"]["metadata"])
        spec = spec["template"]["spec"]
    for meta in metas:
        for key, value in list(meta.get("annotations", {}).items()):
            if len(str(value)) > ANNOTATION_VALUE_MAX:
                del meta["annotations"][key]
                changes.append(f"annotation {key} dropped")
    namespace = obj["metadata"].get("namespace", NAMESPACE)
    for container in spec.get("containers", []):
        for env in container.get("env", []):
            ref = (env.get("valueFrom") or {}).get("fieldRef", {})
            if ref.get("fieldPath") == "metadata.namespace":
                del env["valueFrom"]
                env["value"] = namespace
                changes.append(f"env {env['name']}: fieldRef metadata.namespace -> {namespace!r}")
    return obj, changes


def create_secret(secret: dict[str, Any]) -> None:
    """A Kubernetes Secret as the podman secret that ``secretKeyRef`` reads (replacing one of that name)."""
    data = dict(secret.get("data", {}))
    data.update(
        {k: base64.b64encode(v.encode()).decode() for k, v in secret.get("stringData", {}).items()}
    )
    name = secret["metadata"]["name"]
    podman("secret", "rm", name, check=False)
    subprocess.run(
        ["podman", "secret", "create", name, "-"],
        input=json.dumps(data),
        text=True,
        capture_output=True,
        check=True,
        env=PODMAN_ENV,
    )


def play(objs: list[dict[str, Any]], folder: Path, name: str) -> Path:
    """``podman kube play`` of ``objs`` (written to ``folder/name.yaml``, kept for a failing test's reader).

    On podman's default bridge (``NETWORK``), where the tests' S3 endpoint listens: kube play would
    otherwise use a network of its own that exists only while a played pod runs.
    """
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    podman("kube", "play", "--network", NETWORK, str(path))
    return path


def container_of(pod_name: str, container: str) -> str:
    return f"{pod_name}-{container}"  # how kube play names a pod's containers


def wait_exit(container: str, timeout: float) -> int:
    """The container's exit code once it has exited (``podman wait``)."""
    out = podman("wait", container, timeout=timeout).stdout.strip()
    return int(out.splitlines()[-1])


def inspect(container: str) -> dict[str, Any]:
    return json.loads(podman("inspect", container).stdout)[0]


def logs(container: str) -> str:
    result = podman("logs", container, check=False)
    return result.stdout + result.stderr


def remove_pod(pod_name: str) -> None:
    podman("pod", "rm", "--force", "--ignore", pod_name, check=False)
