"""charts/leaf-train/values/*-production.yaml: the value sets for real use render, lint and say what they claim."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_chart import CHART, IMAGES, KUBE_VERSIONS, NAMESPACE, env_of, helm, one, render

PRODUCTION = sorted(p.name for p in (CHART / "values").glob("*.yaml"))
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


def rendered(name: str) -> list[dict[str, Any]]:
    return render("-f", str(CHART / "values" / name))


def test_the_production_sets_are_there():
    assert PRODUCTION == ["cpu-production.yaml", "gpu-production.yaml"]


@pytest.mark.parametrize("name", PRODUCTION)
def test_lint_strict_and_openapi(name):
    result = helm(
        "lint",
        str(CHART),
        "--strict",
        "-n",
        NAMESPACE,
        "-f",
        str(CHART / "values" / name),
        *IMAGES,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for obj in rendered(name):
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("name", PRODUCTION)
def test_the_seeds_training_not_the_ci_smoke(name):
    cm = one(rendered(name), "ConfigMap", "training")["data"]
    seed = {"IMAGE_SIZE": "150", "BATCH_SIZE": "20", "HEAD_EPOCHS": "30", "FINETUNE_EPOCHS": "100"}
    assert {k: cm[f"LEAF_TRAIN_{k}"] for k in seed} == seed
    assert cm["LEAF_TRAIN_WEIGHTS"] == "imagenet"


def _containers(objs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    kind = "CronJob" if component == "training" else "Deployment"
    obj = one(objs, kind, component)
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    return spec["template"]["spec"]["containers"]


def test_cpu_production_runs_the_cpu_images_without_gpus():
    objs = rendered("cpu-production.yaml")
    for component in ("training", "serving"):
        (container,) = _containers(objs, component)
        assert container["image"].endswith(f":{APP_VERSION}-cpu"), container["image"]
        assert "nvidia.com/gpu" not in str(container["resources"])
    assert one(objs, "ConfigMap", "serving")["data"]["LEAF_SERVE_PREFER_INT8"] == "true"
    assert one(objs, "ConfigMap", "training")["data"]["LEAF_TRAIN_EXPORT_INT8"] == "true"


def test_gpu_production_asks_for_gpus_on_both_sides():
    objs = rendered("gpu-production.yaml")
    for component in ("training", "serving"):
        (container,) = _containers(objs, component)
        assert container["image"].endswith(f":{APP_VERSION}")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    serving = one(objs, "ConfigMap", "serving")["data"]
    assert serving["LEAF_SERVE_REQUIRE_GPU"] == "true" and serving[
        "LEAF_SERVE_PROVIDERS"
    ].startswith("CUDA")
    assert "LEAF_TRAIN_RUN_TRIGGER" in env_of(_containers(objs, "training")[0])
