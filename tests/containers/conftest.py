"""Fixtures of the container tests: podman, the CPU images built as `make images` builds them, and an S3
endpoint the containers can reach.

A test here skips only where no podman can be had (not root, no apt): ``scripts/get-podman.sh`` installs
it everywhere else. CI sets ``LEAF_TRAIN_REQUIRE_CONTAINERS=1`` (.ci/run), which turns that skip into
a failure, so CI can never pass without having run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from containerkit import NETWORK, PODMAN_ENV, ROOT, job_pod, one, podman, remove_pod
from scenario import (
    DATA,
    FIRST_JOB,
    MODEL,
    OUTPUT,
    BridgeS3,
    FirstRun,
    Images,
    PodRun,
    Preemption,
    TrainingPods,
    bindable,
)
from testkit import free_port, moto_s3_server, wait_for


@pytest.fixture(scope="session")
def engine() -> str:
    """podman, installed by the project's own script where missing (the tests play pods: kube play)."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "get-podman.sh")],
        env={**PODMAN_ENV, "ENGINE": "podman"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        reason = f"no podman and none can be installed here: {result.stderr.strip()}"
        if os.environ.get("LEAF_TRAIN_REQUIRE_CONTAINERS") == "1":
            pytest.fail(f"LEAF_TRAIN_REQUIRE_CONTAINERS=1 (CI), but {reason}")
        pytest.skip(reason)
    return result.stdout.strip()


def build_images(flavour: str, timeout: float) -> Images:
    """Both images of ``flavour``, built by the same script as `make images`: not rebuilt when their inputs
    are unchanged, and a replaced image's layers removed (scripts/images.py)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "images.py"), "build", "--flavour", flavour],
        env={**PODMAN_ENV, "ENGINE": "podman"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    refs = {
        ref.split(":")[0]: f"localhost/{ref}" for ref in result.stdout.split()
    }  # podman's local names
    return Images(job=refs["leaf-train-job"], serve=refs["leaf-serve"])


@pytest.fixture(scope="session")
def images(engine: str) -> Images:
    """Both CPU images (``<version>-cpu``)."""
    return build_images("cpu", timeout=1800)


@pytest.fixture(scope="session")
def gpu_images(engine: str) -> Images:
    """Both GPU images (``<version>``): 9 GB together, ~15 min to build from nothing on 2 cores (BENCHMARKS
    "Containers"); seconds when up to date."""
    return build_images("gpu", timeout=3000)


@pytest.fixture(scope="session")
def bridge_s3(images: Images) -> Iterator[BridgeS3]:
    """moto bound to the bridge's gateway address: reachable from pods (host.containers.internal), not
    from other machines. netavark creates the bridge for the first container and removes it after the
    last, so a sleeping container holds it up for the session."""
    import boto3

    network = json.loads(podman("network", "inspect", NETWORK).stdout)[0]
    gateway = network["subnets"][0]["gateway"]
    anchor = "leaf-test-bridge-anchor"
    podman("rm", "--force", "--ignore", "--time", "0", anchor)
    podman(
        "run",
        "--detach",
        "--name",
        anchor,
        "--network",
        NETWORK,
        "--entrypoint",
        "sleep",
        images.serve,
        "infinity",
    )
    # The address exists once the anchor runs; bind it only then.
    wait_for(
        lambda: bindable(gateway),
        f"the bridge address {gateway} on this host",
        timeout=30,
        interval=0.2,
    )
    port = free_port(gateway)
    pod_url = f"http://host.containers.internal:{port}"
    # moto takes the first label of a dotted Host header for a bucket (virtual-hosted style) unless the
    # host is a listed custom endpoint; boto3 sends path-style requests to custom endpoints.
    saved = os.environ.get("MOTO_S3_CUSTOM_ENDPOINTS")
    os.environ["MOTO_S3_CUSTOM_ENDPOINTS"] = pod_url
    try:
        with moto_s3_server(gateway, port) as url:
            client = boto3.session.Session(
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            ).client("s3", endpoint_url=url)
            for bucket in ("leaf-data", "leaf-models"):
                client.create_bucket(Bucket=bucket)
            yield BridgeS3(url, pod_url, client)
    finally:
        if saved is None:
            os.environ.pop("MOTO_S3_CUSTOM_ENDPOINTS", None)
        else:
            os.environ["MOTO_S3_CUSTOM_ENDPOINTS"] = saved
        podman("rm", "--force", "--ignore", "--time", "0", anchor, check=False)


# --- the training pod, as the chart's CronJob makes it ---


@pytest.fixture(scope="session")
def training(
    bridge_s3: BridgeS3, images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrainingPods]:
    """The synthetic photos in S3 (written on the host) and a player for training pods; pods removed after."""
    bridge_s3.host_cli(
        "synth", "--output", DATA, "--classes", "2", "--per-class", "10", "--size", "48"
    )
    pods = TrainingPods(bridge_s3, images, tmp_path_factory.mktemp("training-pods"))
    yield pods
    for pod in pods.played:
        remove_pod(pod)


@pytest.fixture(scope="session")
def first_run(training: TrainingPods) -> FirstRun:
    """One uninterrupted training pod (Job leaf-train-manual-1) on an empty registry."""
    run = training.run(FIRST_JOB, f"{FIRST_JOB}-abcde")
    pointer = training.s3.json(f"{OUTPUT}/{MODEL}/latest.json") or {}
    published = (training.state(FIRST_JOB) or {}).get("published_version", "")
    return FirstRun(run, published, pointer.get("version", ""), training.versions())


@pytest.fixture(scope="session")
def unchanged_run(training: TrainingPods, first_run: FirstRun) -> tuple[PodRun, list[str]]:
    """A pod of the CronJob's next Job on the photos first_run trained on, and the versions after it: the
    chart tells it it is a scheduled run (LEAF_TRAIN_RUN_TRIGGER), so the retrain policy skips it."""
    run = training.run("leaf-train-scheduled-1", "leaf-train-scheduled-1-fghij", timeout=300)
    return run, training.versions()


@pytest.fixture(scope="session")
def preemption(
    training: TrainingPods, first_run: FirstRun, unchanged_run: tuple[PodRun, list[str]]
) -> Preemption:
    """Job leaf-train-scheduled-2, after new photos arrived: its pod is stopped (podman stop = the kubelet's
    SIGTERM, SIGKILL after the rendered grace period) once phase 2 has a checkpoint; a second pod of the
    same Job then runs. (Unchanged photos would have skipped it, as unchanged_run shows.)"""
    job = "leaf-train-scheduled-2"
    # New photos: the two classes drawn again with another seed over the first set's keys, plus two each.
    new_photos = ("--classes", "2", "--per-class", "12", "--size", "48", "--seed", "7")
    training.s3.host_cli("synth", "--output", DATA, *new_photos)
    before = set(training.versions())
    pod = job_pod(one(training.render(), "CronJob"), job, "unused")
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    container = training.start(job, f"{job}-aaaaa")
    seen = wait_for(
        lambda: (
            (s := training.state(job))
            and s.get("phase") == 2
            and s.get("epochs_done", 0) >= 1
            and s
        ),
        f"a phase-2 checkpoint of {job}",
        timeout=600,
        interval=0.2,
    )
    podman("stop", "--time", str(grace), container, timeout=grace + 60)
    stopped = training.finish(f"{job}-aaaaa", container, started)
    after_stop = training.state(job) or {}
    versions_after_stop = set(training.versions())
    resumed = training.run(job, f"{job}-bbbbb")
    return Preemption(
        job, before, seen, grace, stopped, after_stop, versions_after_stop,
        resumed, training.state(job) or {}, set(training.versions()),
    )  # fmt: skip
