"""Shadow before promotion, end to end: the server mirrors traffic to the candidate, the CLI decides.

Registry on S3 over HTTP (moto), the app in-process (on a loopback port where 40 clients arrive at
once), the verdict through ``leaf-train models verdict`` in its own process. The tiny models answer
by colour (servekit): an equal candidate agrees everywhere; a candidate that "lost" blight answers
rust for blue photos.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from leaf_common.shadow import read_stats
from leaf_common.storage import open_store
from leaf_train.registry import ModelRegistry
from servekit import (
    MODEL_NAME,
    V1,
    AppClient,
    Registry,
    RunningServer,
    encode_image,
    in_process,
    start_server,
    wait_for,
)

COLOURS = {"healthy": (230, 20, 20), "rust": (20, 230, 20), "blight": (20, 20, 230)}
LOST_BLIGHT = {
    "labels": V1["labels"],
    "weights": np.array([[8, 0, 0], [0, 8, 0], [0, 8, 0]], dtype=np.float32),
}
VERDICT_ARGS = [
    "--shadow-min-requests",
    "60",
    "--shadow-min-class-requests",
    "15",
    "--kube-integration",
    "off",
]


@pytest.fixture
def registry(s3) -> Registry:  # noqa: ANN001 - the shared moto fixture
    reg = Registry(f"s3://{s3.make_bucket('leaf-models')}/prod")
    reg.publish("v1", V1)
    reg.promote("v1")
    return reg


def job_registry(reg: Registry) -> ModelRegistry:
    return ModelRegistry(open_store(reg.root), MODEL_NAME)


@pytest.fixture
def serve(registry: Registry) -> Iterator:
    """Starts the app over ``registry`` in-process, or on a socket where a test needs many clients."""
    with contextlib.ExitStack() as stack:

        def start(socket: bool = False, **overrides: object) -> AppClient | RunningServer:
            options = {
                "poll_interval": 0.1,
                "shadow_fraction": 1.0,
                "shadow_flush_interval": 1.0,
            } | overrides
            if not socket:
                return stack.enter_context(in_process(registry.pointer_uri, **options))
            running = start_server(registry.pointer_uri, **options)
            stack.callback(running.stop)
            return running

        yield start


def classify_each(server: AppClient, per_colour: int) -> None:
    for _ in range(per_colour):
        for rgb in COLOURS.values():
            r = server.post("/classify", content=encode_image(rgb, "PNG"))
            assert r.status_code == 200, r.text


def saved_mirrored(reg: Registry, candidate: str) -> int:
    return read_stats(reg.store, candidate, "v1")[0].mirrored


def leaf_train(*argv: str) -> subprocess.CompletedProcess[str]:
    """``leaf-train ARGV`` in its own process, as an operator or the verdict CronJob runs it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "leaf_train.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def verdict(reg: Registry, *extra: str) -> tuple[int, str]:
    done = leaf_train(
        "models", "verdict", "--output", reg.root, "--model-name", MODEL_NAME, *VERDICT_ARGS, *extra
    )
    return done.returncode, done.stdout + done.stderr


def propose(reg: Registry, version: str, spec: dict) -> None:
    reg.publish(version, spec)
    job_registry(reg).propose(version)


def test_equal_candidate_is_promoted_after_the_minimum(registry: Registry, serve) -> None:
    server = serve()
    propose(registry, "v2", V1)
    wait_for(
        lambda: server.app.state.api.plane.shadow.candidate is not None,
        "the server loads the candidate",
    )
    classify_each(server, 10)  # 30 requests: not enough yet
    wait_for(
        lambda: saved_mirrored(registry, "v2") == 30, "30 mirrored requests saved to the registry"
    )
    rc, out = verdict(registry)
    assert rc == 0 and "v2 against v1: WAIT" in out and "30 of 60 mirrored" in out, out

    classify_each(server, 10)
    wait_for(lambda: saved_mirrored(registry, "v2") == 60, "60 mirrored requests saved")
    stats = read_stats(registry.store, "v2", "v1")[0]
    assert (stats.agreed, stats.per_class) == (60, {label: [20, 20] for label in COLOURS})
    rc, out = verdict(registry)
    assert rc == 0 and "v2 against v1: PROMOTE" in out, out
    assert job_registry(registry).pointer().version == "v2"
    # The server follows: v2 becomes the champion by hot reload, and the candidate is retired.
    wait_for(lambda: server.repo.current.version == "v2", "the server serves v2")
    wait_for(lambda: server.app.state.api.plane.shadow.candidate is None, "the candidate retired")
    assert server.repo.metrics.shadow.labels("agreed")._value.get() == 60


def test_candidate_that_lost_a_class_is_rejected_and_the_champion_keeps_serving(
    registry: Registry, serve
) -> None:
    server = serve()
    propose(registry, "v2", LOST_BLIGHT)
    wait_for(
        lambda: server.app.state.api.plane.shadow.candidate is not None,
        "the server loads the candidate",
    )
    classify_each(server, 30)  # 90 requests; agreement 60/90 overall, 0 on blight
    wait_for(lambda: saved_mirrored(registry, "v2") == 90, "90 mirrored requests saved")
    # Overall agreement alone would pass a lenient bound; the per-class rule is what rejects it.
    rc, out = verdict(registry, "--shadow-min-agreement", "0.5")
    assert (
        rc == 0
        and "v2 against v1: REJECT" in out
        and "v1 calls 'blight' the candidate agrees 0.0000" in out
    ), out
    assert job_registry(registry).pointer().version == "v1"
    assert json.loads(registry.store.get("shadow/v2/verdict.json"))["decision"] == "reject"
    wait_for(
        lambda: server.app.state.api.plane.shadow.candidate is None,
        "the rejected candidate is unloaded",
    )
    r = server.post("/classify", content=encode_image(COLOURS["blight"], "PNG")).json()
    assert (r["version"], r["predictions"][0]["label"]) == ("v1", "blight")


def test_too_little_traffic_waits_then_expires(registry: Registry, serve) -> None:
    server = serve()
    propose(registry, "v2", V1)
    wait_for(
        lambda: server.app.state.api.plane.shadow.candidate is not None,
        "the server loads the candidate",
    )
    classify_each(server, 2)
    wait_for(lambda: saved_mirrored(registry, "v2") == 6, "6 mirrored requests saved")
    rc, out = verdict(registry)
    assert rc == 0 and "WAIT" in out and "6 of 60 mirrored" in out, out
    rc, out = verdict(registry, "--shadow-max-age-hours", "0.00001")  # 36 ms: long gone
    assert rc == 0 and "REJECT" in out and "expired: 6 of 60 mirrored" in out, out
    assert (
        job_registry(registry).pointer().version == "v1"
        and job_registry(registry).candidate().candidate.version is None
    )


def test_mirrored_work_is_dropped_not_queued_and_clients_never_see_it(
    registry: Registry, serve
) -> None:
    server = serve(socket=True, shadow_max_in_flight=1)  # 40 clients at once
    propose(registry, "v2", V1)
    shadow = server.app.state.api.plane.shadow
    wait_for(lambda: shadow.candidate is not None, "the server loads the candidate")

    async def burst() -> list[int]:
        import asyncio

        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            body = encode_image(COLOURS["rust"], "PNG")
            responses = await asyncio.gather(
                *(client.post("/classify", content=body) for _ in range(40))
            )
        return [r.status_code for r in responses]

    import asyncio

    assert asyncio.run(burst()) == [200] * 40
    wait_for(
        lambda: shadow.stats.mirrored + shadow.stats.dropped == 40,
        "every request mirrored or dropped",
    )
    assert shadow.stats.dropped > 0 and shadow.stats.mirrored > 0
    assert server.repo.metrics.shadow.labels("dropped")._value.get() == shadow.stats.dropped


def test_shadow_off_loads_nothing(registry: Registry, serve) -> None:
    server = serve(shadow_fraction=0.0)
    propose(registry, "v2", V1)
    classify_each(server, 1)
    assert server.app.state.api.plane.shadow is None
    assert list(registry.store.list("shadow")) == []


def test_reviewed_photo_scores_both_models(registry: Registry, serve, tmp_path) -> None:
    data = tmp_path / "data"
    (data / "blight").mkdir(parents=True)
    (data / "blight" / "a.png").write_bytes(encode_image(COLOURS["blight"], "PNG"))
    server = serve(
        capture=True, confidence_threshold=0.999
    )  # every answer is "not sure": all captured
    propose(registry, "v2", LOST_BLIGHT)
    wait_for(
        lambda: server.app.state.api.plane.shadow.candidate is not None,
        "the server loads the candidate",
    )
    r = server.post("/classify", content=encode_image(COLOURS["blight"], "PNG")).json()
    capture_id = r["captured"]
    assert capture_id
    wait_for(
        lambda: list(registry.store.list("shadow/v2/answers")), "the candidate's answer is kept"
    )
    from leaf_common.inbox import Inbox

    inbox = Inbox(registry.store.child("inbox"))
    wait_for(lambda: inbox.list(), "the capture reaches the inbox")
    assert inbox.get(capture_id).extra == {"shadow_candidate": "v2"}
    accept = (
        "inbox",
        "accept",
        "--output",
        registry.root,
        "--model-name",
        MODEL_NAME,
        "--data",
        str(data),
    )
    done = leaf_train(*accept, capture_id, "blight")
    assert done.returncode == 0, done.stderr
    reviewed = json.loads(registry.store.get(f"shadow/v2/reviewed/{capture_id}.json"))
    assert (reviewed["label"], reviewed["champion_label"], reviewed["candidate_label"]) == (
        "blight",
        "blight",
        "rust",
    )
