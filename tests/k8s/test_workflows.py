"""The CI workflows: `make test` everywhere, and the real-cluster check for runners with Docker."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def steps(name: str) -> str:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    return "\n".join(
        s.get("run", "") + s.get("uses", "") for job in wf["jobs"].values() for s in job["steps"]
    )


def test_ci_runs_make_test():
    assert "make test" in steps("ci.yaml")


def test_kind_workflow_builds_installs_trains_and_tests():
    run = steps("kind.yaml")
    for needed in (
        "docker build -f job/Dockerfile",
        "docker build -f serve/Dockerfile",
        "helm/kind-action",
        "kind load docker-image",
        "helm install",
        "cpu-only-values.yaml",
        "s3.existingSecret=minio-credentials",
        "serving.s3.existingSecret=minio-read-credentials",
        "mc admin policy attach local leaf-serve-read",
        "create job --from=cronjob/",
        "--for=condition=complete",
        "helm test",
    ):
        assert needed in run, needed
