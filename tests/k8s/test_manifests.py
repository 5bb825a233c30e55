"""k8s/: the chart's default render for users without Helm; it must not drift from the chart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render-k8s.sh"


def helm_available() -> None:
    if not (ROOT / ".tools" / "bin" / "helm").exists() and not shutil.which("helm"):
        pytest.fail(
            "expected helm in .tools/bin (run scripts/get-helm.sh or make test) or on PATH; found none"
        )


def manifests() -> list[dict]:
    return [
        d
        for p in sorted((ROOT / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d
    ]


def test_k8s_matches_a_fresh_render_of_the_chart():
    helm_available()
    result = subprocess.run([str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_drift_is_detected(tmp_path):
    """The check can fail: a copy of the repo with one edited manifest is reported stale."""
    helm_available()
    for part in ("charts", "k8s", "scripts"):
        shutil.copytree(ROOT / part, tmp_path / part)
    (tmp_path / ".tools" / "bin").mkdir(parents=True)
    helm = ROOT / ".tools" / "bin" / "helm"
    (tmp_path / ".tools" / "bin" / "helm").symlink_to(
        helm if helm.exists() else shutil.which("helm")
    )
    cronjob = tmp_path / "k8s" / "cronjob.yaml"
    cronjob.write_text(
        cronjob.read_text().replace('schedule: "0 3 * * 0"', 'schedule: "0 4 * * 0"')
    )
    result = subprocess.run(
        [str(tmp_path / "scripts" / "render-k8s.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "k8s/ is stale" in result.stderr and "cronjob.yaml" in result.stderr


def test_manifests_are_valid_kubernetes_objects():
    objs = manifests()
    kinds = {o["kind"] for o in objs}
    assert {
        "CronJob",
        "Deployment",
        "Service",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "PodDisruptionBudget",
    } <= kinds
    for obj in objs:
        kubernetes_validate.validate(obj, "1.31", strict=True)


def test_manifests_carry_no_helm_hooks_or_test_pods():
    """`kubectl apply -f k8s/` must not create `helm test` pods or hook-only objects."""
    for obj in manifests():
        annotations = obj["metadata"].get("annotations", {})
        assert not any(k.startswith("helm.sh/hook") for k in annotations), obj["metadata"]["name"]
        assert obj["kind"] != "Pod"
        assert obj["metadata"]["namespace"] == "leaf-train"
