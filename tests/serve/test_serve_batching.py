"""Dynamic batching through the running server: identical results, real batches, bounded queue (503)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from servekit import (
    INPUT_NAME,
    MODEL_NAME,
    V1,
    AppClient,
    Registry,
    RunningServer,
    colour_image,
    expected_probs,
    start_server,
)

INFER = f"/v2/models/{MODEL_NAME}/infer"


def request_for(batch: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples whose line starts with ``name`` (labels included in ``name`` if given)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", re.M)
    return sum(float(v) for v in pattern.findall(text))


@pytest.fixture
def batching_server(local_registry: Registry) -> Iterator[RunningServer]:
    # A long queue delay makes concurrent requests meet in one batch even on a busy 2-core machine.
    running = start_server(
        local_registry.pointer_uri, max_batch_size=8, max_queue_delay_ms=300, poll_interval=0
    )
    yield running
    running.stop()


async def _concurrent(url: str, batches: list[np.ndarray]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(INFER, json=request_for(b)) for b in batches))


def test_concurrent_requests_are_batched_with_identical_results(
    batching_server: RunningServer,
) -> None:
    rng = np.random.default_rng(0)
    batches = [
        rng.uniform(0, 255, size=(1 + i % 2, 32, 32, 3)).astype(np.float32) for i in range(6)
    ]
    unbatched = [
        np.reshape(r.json()["outputs"][0]["data"], (len(b), 3))
        for b, r in zip(batches, _serial(batching_server, batches), strict=True)
    ]
    before = httpx.get(batching_server.url + "/metrics").text
    responses = asyncio.run(_concurrent(batching_server.url, batches))
    after = httpx.get(batching_server.url + "/metrics").text
    for batch, alone, r in zip(batches, unbatched, responses, strict=True):
        together = np.reshape(r.json()["outputs"][0]["data"], (len(batch), 3))
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
        np.testing.assert_allclose(together, expected_probs(batch, V1), atol=1e-5)
    runs = metric(after, "leaf_serve_batch_size_count") - metric(
        before, "leaf_serve_batch_size_count"
    )
    rows = metric(after, "leaf_serve_batch_size_sum") - metric(before, "leaf_serve_batch_size_sum")
    assert rows == sum(len(b) for b in batches)  # 9 images
    assert runs < len(batches)  # fewer session runs than requests: they were grouped


def _serial(server: RunningServer, batches: list[np.ndarray]) -> list[httpx.Response]:
    return [httpx.post(server.url + INFER, json=request_for(b), timeout=30) for b in batches]


def test_overload_gets_503_at_once_while_queued_requests_finish(local_registry: Registry) -> None:
    # The batch waits 1.5 s for company, so two requests fill the queue deterministically.
    running = start_server(
        local_registry.pointer_uri,
        max_batch_size=64,
        max_queue_delay_ms=1500,
        max_queue_size=2,
        poll_interval=0,
    )
    try:
        statuses = asyncio.run(_overload(running.url))
    finally:
        running.stop()
    # Order of completion: the rejected one answered before the queued ones left the queue.
    assert statuses == [("rejected", 503), ("queued", 200), ("queued", 200)]


async def _overload(url: str) -> list[tuple[str, int]]:
    done: list[tuple[str, int]] = []
    body = request_for(colour_image((200, 10, 10)))
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def send(tag: str) -> None:
            r = await client.post(INFER, json=body)
            done.append((tag, r.status_code))
            if r.status_code == 503:
                assert "overloaded" in r.json()["error"]

        queued = [asyncio.create_task(send("queued")) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are in the batcher's queue now
        await send("rejected")
        await asyncio.gather(*queued)
    return done


def test_metrics_count_requests_latency_and_model(client: AppClient) -> None:
    client.post(INFER, json=request_for(colour_image((1, 2, 3))))
    client.post("/v2/models/nope/infer", json={})
    text = client.get("/metrics").text
    assert metric(text, 'leaf_serve_requests_total{endpoint="infer",outcome="success"}') >= 1
    assert metric(text, 'leaf_serve_requests_total{endpoint="infer",outcome="client_error"}') >= 1
    assert metric(text, 'leaf_serve_request_seconds_count{endpoint="infer"}') >= 2
    assert metric(text, "leaf_serve_queue_wait_seconds_count") >= 1
    assert metric(text, "leaf_serve_inference_seconds_count") >= 1
    assert (
        metric(
            text, 'leaf_serve_model_info{model="leaf",provider="CPUExecutionProvider",version="v1"}'
        )
        == 1
    )
