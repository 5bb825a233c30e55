"""The container tests' scenario: the S3 endpoint pods reach, the chart values, and training pods.

Fixtures (conftest.py) build these; the test modules read them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from containerkit import (
    container_of,
    create_secret,
    for_podman,
    inspect,
    job_pod,
    logs,
    one,
    play,
    remove_pod,
    render,
    wait_exit,
)
from testkit import free_port

SECRET_NAME = "leaf-s3"  # training's keys (s3.existingSecret)
SERVING_SECRET_NAME = (
    "leaf-s3-read"  # the server's own, read-only in a real store (serving.s3.existingSecret)
)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DATA, OUTPUT, MODEL = "s3://leaf-data/leaves", "s3://leaf-models/registry", "leaf-classifier"


@dataclass(frozen=True)
class Images:
    job: str  # localhost/leaf-train-job:<version>-cpu
    serve: str


@dataclass(frozen=True)
class BridgeS3:
    """moto's S3 server on the podman bridge's gateway: the host reaches it at ``host_url``, pods at ``pod_url``."""

    host_url: str
    pod_url: str
    client: Any

    def env(self) -> dict[str, str]:
        """Environment for leaf-train commands run on the host against this endpoint."""
        return {
            **os.environ,
            "AWS_ENDPOINT_URL": self.host_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            **CREDENTIALS,
        }

    def host_cli(self, *args: str, timeout: float = 300) -> str:
        """``leaf-train ARGS`` on the host (an operator's command); its stdout."""
        cmd = [sys.executable, "-m", "leaf_train.cli", *args]
        result = subprocess.run(
            cmd, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, (
            f"leaf-train {' '.join(args)}: exit {result.returncode}\n{result.stderr}"
        )
        return result.stdout

    def json(self, uri: str) -> dict[str, Any] | None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            return json.loads(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None


def bindable(address: str) -> bool:
    try:
        free_port(address)
    except OSError:
        return False
    return True


def chart_values(s3: BridgeS3, images: Images) -> dict[str, Any]:
    """The chart's defaults plus what this machine needs: the S3 endpoint, a Secret, the CPU images."""
    job_repo, job_tag = images.job.rsplit(":", 1)
    serve_repo, serve_tag = images.serve.rsplit(":", 1)
    return {
        "s3.endpoint": s3.pod_url,
        "s3.existingSecret": SECRET_NAME,
        "serving.s3.existingSecret": SERVING_SECRET_NAME,
        "s3.data": DATA,
        "s3.output": OUTPUT,
        "modelName": MODEL,
        "training.image.registry": "",
        "training.image.repository": job_repo,
        "training.image.tag": job_tag,
        "serving.image.registry": "",
        "serving.image.repository": serve_repo,
        "serving.image.tag": serve_tag,
    }


def secret(name: str = SECRET_NAME) -> dict[str, Any]:
    """A Secret with the access key pair (moto accepts any; each component gets its own, as in a cluster)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "leaf-train"},
        "type": "Opaque",
        "stringData": CREDENTIALS,
    }


HEAD_EPOCHS, FINETUNE_EPOCHS = 2, 6
FIRST_JOB = "leaf-train-manual-1"
# The tiny synthetic set: two clearly different classes, 32-pixel inputs, no pretrained weights (nothing is
# downloaded), a phase 2 long enough to be stopped in: the stop comes once epoch 1 is checkpointed and
# lands in epoch 2, four epochs (~7 s here) before the end. All of it through the chart's own values.
TRAINING_VALUES: dict[str, Any] = {
    "training.config.imageSize": 32,
    "training.config.weights": "none",
    "training.config.batchSize": 8,
    "training.config.headEpochs": HEAD_EPOCHS,
    "training.config.finetuneEpochs": FINETUNE_EPOCHS,
    "training.config.earlyStoppingPatience": 0,
    "training.extraEnv": [
        {"name": "LEAF_TRAIN_AUGMENT", "value": "false"},
        {"name": "LEAF_TRAIN_HEAD_LR", "value": "0.001"},
    ],
}


@dataclass
class PodRun:
    pod: str
    container: str
    exit_code: int
    logs: str
    inspect: dict[str, Any]
    seconds: float


@dataclass
class TrainingPods:
    """Plays Pods of the rendered CronJob's template against :class:`BridgeS3`."""

    s3: BridgeS3
    images: Images
    folder: Path
    changes: list[list[str]] = field(
        default_factory=list
    )  # for_podman's report of every pod played
    played: list[str] = field(default_factory=list)

    def render(self, **extra: Any) -> list[dict[str, Any]]:
        return render({**chart_values(self.s3, self.images), **TRAINING_VALUES, **extra})

    def start(self, job_name: str, pod_name: str, **extra: Any) -> str:
        """Create and start the Job's pod; returns its train container's name."""
        objs = self.render(**extra)
        pod, pod_changes = for_podman(job_pod(one(objs, "CronJob"), job_name, pod_name))
        config, config_changes = for_podman(one(objs, "ConfigMap", "training"))
        self.changes.append(pod_changes + config_changes)
        self.played.append(pod_name)
        remove_pod(pod_name)
        create_secret(secret())
        play([config, pod], self.folder, pod_name)
        return container_of(pod_name, "train")

    def finish(self, pod_name: str, container: str, started: float, timeout: float = 900) -> PodRun:
        code = wait_exit(container, timeout)
        return PodRun(
            pod_name,
            container,
            code,
            logs(container),
            inspect(container),
            time.monotonic() - started,
        )

    def run(self, job_name: str, pod_name: str, timeout: float = 900, **extra: Any) -> PodRun:
        started = time.monotonic()
        return self.finish(pod_name, self.start(job_name, pod_name, **extra), started, timeout)

    def state(self, job_name: str) -> dict[str, Any] | None:
        return self.s3.json(f"{OUTPUT}/{MODEL}/runs/{job_name}/state.json")

    def versions(self) -> list[str]:
        bucket, _, prefix = f"{OUTPUT}/{MODEL}/versions/".removeprefix("s3://").partition("/")
        pages = self.s3.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/"
        )
        return sorted(
            p["Prefix"][len(prefix) :].rstrip("/")
            for page in pages
            for p in page.get("CommonPrefixes", [])
        )


@dataclass
class FirstRun:
    """An uninterrupted training pod, and the registry as it left it (read before any other pod ran)."""

    run: PodRun
    published: str  # the run's state.json: published_version
    pointer: str  # latest.json's version
    versions: list[str]


@dataclass
class Preemption:
    """What was seen around a training pod stopped in phase 2 and the pod that retried its Job."""

    job: str
    versions_before: set[str]
    phase2_state: dict[str, Any]  # the checkpoint state that triggered the stop
    grace_seconds: int  # the rendered terminationGracePeriodSeconds, podman stop's --time
    stopped: PodRun
    state_after_stop: dict[str, Any]
    versions_after_stop: set[str]
    resumed: PodRun
    state_after: dict[str, Any]
    versions_after: set[str]
