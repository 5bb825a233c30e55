"""The serving Deployment exactly as the chart renders it, with its ConfigMap and its Secret, under podman kube play.

It serves the registry the training pods published to (tests in test_training_pod.py): the pointer
``latest.json`` names the first pod's version, then an operator promotes the resumed pod's version and
the running server must pick it up by hot reload. Requests go to the pod's address on the bridge, as a
Service would send them; podman also publishes the container ports on the host (podman 4.3 kube play
publishes every containerPort), so the host's ports 8080 and 8081 must be free.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from containerkit import (
    container_of,
    create_secret,
    for_podman,
    inspect,
    logs,
    one,
    play,
    podman,
    remove_pod,
    render,
    wait_exit,
)
from PIL import Image
from scenario import (
    MODEL,
    OUTPUT,
    SERVING_SECRET_NAME,
    BridgeS3,
    FirstRun,
    Images,
    Preemption,
    chart_values,
    secret,
)
from testkit import wait_for

pytestmark = [pytest.mark.container, pytest.mark.slow]

POLL_INTERVAL = 2  # serving.config.pollInterval: seconds between checks of latest.json


@dataclass
class ServingPod:
    pod: str
    container: str
    url: str
    deployment: dict
    start_to_ready: float  # seconds from `kube play` to the first 200 on /v2/health/ready
    first_version: str
    second_version: str
    s3: BridgeS3


def promote(s3: BridgeS3, version: str) -> None:
    s3.host_cli("models", "promote", version, "--output", OUTPUT, "--model-name", MODEL)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def jpeg(size: int = 256) -> bytes:
    """A real photo-like JPEG: a smooth gradient (decoding it is real work at large sizes)."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.full((size, size), 60.0)],
        axis=-1,
    )
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def serving(
    bridge_s3: BridgeS3,
    images: Images,
    first_run: FirstRun,
    preemption: Preemption,
    tmp_path_factory,
) -> Iterator[ServingPod]:
    first, second = first_run.published, preemption.state_after.get("published_version")
    assert first and second and first != second, (
        f"expected two versions from the training pods; got {first}, {second}"
    )
    promote(bridge_s3, first)
    values = {
        **chart_values(bridge_s3, images),
        "serving.replicaCount": 1,
        "serving.config.pollInterval": POLL_INTERVAL,
    }
    objs = render(values)
    deployment, changes = for_podman(one(objs, "Deployment"))
    assert "annotation checksum/config dropped" in changes
    assert all(c.startswith("annotation ") and c.endswith(" dropped") for c in changes), changes
    config, _ = for_podman(one(objs, "ConfigMap", "serving"))
    pod = (
        f"{deployment['metadata']['name']}-pod-0"  # kube play's name for a Deployment's one replica
    )
    remove_pod(pod)
    create_secret(secret(SERVING_SECRET_NAME))
    started = time.monotonic()
    play([config, deployment], tmp_path_factory.mktemp("serving-pod"), "serving")
    try:
        container = container_of(pod, "serve")
        infra = inspect(
            podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
        )
        address = infra["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
        url = f"http://{address}:8080"
        wait_for(lambda: ready(url), f"readiness of {url} ({container})", timeout=120, interval=0.1)
        yield ServingPod(
            pod, container, url, deployment, time.monotonic() - started, first, second, bridge_s3
        )
    finally:
        remove_pod(pod)


def served_version(url: str) -> str:
    return httpx.get(f"{url}/v2/models/{MODEL}", timeout=10).json()["versions"][0]


def test_served_as_rendered_ready_and_answers_with_the_pointers_version(serving: ServingPod):
    import tritonclient.http as triton

    body = httpx.post(
        f"{serving.url}/classify",
        content=jpeg(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert body.status_code == 200, body.text
    assert body.json()["version"] == serving.first_version

    client = triton.InferenceServerClient(serving.url.removeprefix("http://"))
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["versions"] == [serving.first_version]
        shape = [1, *[int(d) for d in meta["inputs"][0]["shape"][1:]]]
        tensor = triton.InferInput(meta["inputs"][0]["name"], shape, "FP32")
        tensor.set_data_from_numpy(np.full(shape, 120.0, dtype=np.float32), binary_data=True)
        result = client.infer(MODEL, [tensor])
        assert result.get_response()["model_version"] == serving.first_version
        probs = result.as_numpy(meta["outputs"][0]["name"])
        assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1) < 1e-4
    finally:
        client.close()

    facts = inspect(serving.container)
    assert (
        facts["Config"]["User"] == "10001:10001" and facts["HostConfig"]["ReadonlyRootfs"] is True
    )


def test_promoting_a_second_version_is_picked_up_by_hot_reload(serving: ServingPod):
    promote(serving.s3, serving.second_version)
    wait_for(
        lambda: served_version(serving.url) == serving.second_version,
        "the hot reload",
        timeout=20 * POLL_INTERVAL,
        interval=0.2,
    )
    body = httpx.post(
        f"{serving.url}/classify",
        content=jpeg(),
        headers={"content-type": "image/jpeg"},
        timeout=30,
    )
    assert body.json()["version"] == serving.second_version


def slow_body(data: bytes, seconds: float, parts: int = 10) -> Iterator[bytes]:
    """A request body sent over ``seconds``, as from a slow client: the request is in flight all along."""
    step = -(-len(data) // parts)
    for start in range(0, len(data), step):
        yield data[start : start + step]
        time.sleep(seconds / parts)


def test_stopping_the_pod_drains_within_the_grace_period(serving: ServingPod):
    """Requests in flight when SIGTERM arrives are answered; the server exits 0 before the kubelet's SIGKILL."""
    grace = serving.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    photo = jpeg()
    answers: list[tuple[float, int | str]] = []

    def call() -> None:
        try:
            r = httpx.post(
                f"{serving.url}/classify",
                content=slow_body(photo, 3.0),
                headers={"content-type": "image/jpeg"},
                timeout=60,
            )
            answers.append((time.monotonic(), r.status_code))
        except httpx.TransportError as e:
            answers.append((time.monotonic(), repr(e)))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every request has started and is a third of the way through its body
    stop_sent = time.monotonic()
    # As the kubelet: SIGTERM to the app container, SIGKILL after the grace period, and the pod's network
    # (the infra container) torn down only after that (`podman pod stop` would take it down at once).
    podman("stop", "--time", str(grace), serving.container, timeout=grace + 60)
    stopped_after = time.monotonic() - stop_sent
    podman("pod", "stop", serving.pod, timeout=60)
    for t in threads:
        t.join(timeout=60)
    assert [status for _, status in answers] == [200, 200, 200], answers
    assert all(at > stop_sent + 1.0 for at, _ in answers), (
        stop_sent,
        answers,
    )  # finished well after SIGTERM
    code = wait_exit(serving.container, 30)
    assert code == 0, logs(serving.container)[
        -3000:
    ]  # 137 would mean SIGKILL after the grace period
    assert stopped_after < grace
    assert "stopped" in logs(serving.container)
