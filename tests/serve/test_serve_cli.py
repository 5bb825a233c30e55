"""``leaf-serve`` as a process: options from the environment, start-up failures, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from servekit import Registry, encode_image, free_port


def serve_env(**options: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEAF_SERVE_")}
    env.update({f"LEAF_SERVE_{k.upper()}": str(v) for k, v in options.items()})
    return env


@contextmanager
def leaf_serve(**options: object) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    options = {
        "grpc_port": 0,
        **options,
    }  # each test process on its own free port; gRPC only when asked
    env = serve_env(host="127.0.0.1", port=port, providers="cpu", intra_op_threads=1, **options)
    proc = subprocess.Popen(
        [sys.executable, "-m", "leaf_serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"leaf-serve exited {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("leaf-serve not ready within 60 s")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_in_flight(url: str, timeout: float = 30.0) -> None:
    """Return once the server holds a request's body (its body budget is in use): the request has arrived
    and is waiting for the model, so a SIGTERM sent now finds it in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in httpx.get(url + "/metrics", timeout=2).text.splitlines():
            if line.startswith('leaf_serve_memory_budget_bytes{budget="request_bodies"}') and float(
                line.split()[-1]
            ):
                return
        time.sleep(0.02)
    raise AssertionError(f"no request in flight at {url} within {timeout} s")


def test_sigterm_drains_in_flight_requests_then_exits(local_registry: Registry) -> None:
    # A long queue delay keeps one request in flight while SIGTERM arrives.
    with leaf_serve(
        model=local_registry.pointer_uri, max_queue_delay_ms=1500, grace_period=20, drain_delay=0
    ) as (
        proc,
        url,
    ):
        result: dict[str, httpx.Response] = {}
        image = encode_image((20, 230, 20), "PNG")
        sender = threading.Thread(
            target=lambda: result.setdefault("r", httpx.post(url + "/classify", content=image))
        )
        sender.start()
        wait_in_flight(url)
        proc.send_signal(signal.SIGTERM)
        sender.join(timeout=30)
        # uvicorn re-raises the signal after a clean shutdown, so the status names what ended it.
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert (
            result["r"].status_code == 200
            and result["r"].json()["predictions"][0]["label"] == "rust"
        )
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/v2/health/live", timeout=2)


# How long after readiness fails this test's clients keep sending: the endpoints controller and every
# node's kube-proxy need about this long to stop routing to a terminating pod.
PROPAGATION = 1.0


@pytest.mark.parametrize(("drain_delay", "loses_requests"), [(2.0, False), (0.0, True)])
def test_a_rollout_loses_no_request(
    local_registry: Registry, drain_delay: float, loses_requests: bool
) -> None:
    """SIGTERM under load: readiness fails at once, every request is still answered until clients move on.

    With ``drain_delay=0`` (the behaviour before) the listener closes at SIGTERM, before any client can
    know, and requests fail: the same test shows that it can fail.
    """
    image = encode_image((20, 230, 20), "PNG")
    with leaf_serve(model=local_registry.pointer_uri, drain_delay=drain_delay, grace_period=5) as (
        proc,
        url,
    ):
        failures: list[str] = []
        answered = [0]
        not_ready_at: list[float] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(
                timeout=10
            ) as c:  # a pool with keep-alive connections, like a real client
                while not stop.is_set():
                    try:
                        r = c.post(url + "/classify", content=image)
                        if r.status_code == 200:
                            answered[0] += 1
                        else:
                            failures.append(f"HTTP {r.status_code}")
                    except httpx.TransportError as e:
                        failures.append(type(e).__name__)

        def kubelet() -> None:  # readiness probe every 50 ms
            while not not_ready_at and not stop.is_set():
                try:
                    if httpx.get(url + "/v2/health/ready", timeout=1).status_code == 503:
                        not_ready_at.append(time.monotonic())
                except httpx.TransportError:
                    not_ready_at.append(time.monotonic())
                time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(4)] + [
            threading.Thread(target=kubelet)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while answered[0] < 8:  # the pool is up and being served before the signal
            assert time.monotonic() < deadline and not failures, failures
            time.sleep(0.05)
        before = answered[0]
        sigterm_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not not_ready_at and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(PROPAGATION)  # the Service still routes here meanwhile
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    assert before > 0 and not_ready_at and not_ready_at[0] - sigterm_at < 0.5
    if loses_requests:
        assert failures, "closing the listener at SIGTERM should have refused requests"
    else:
        assert (
            failures == [] and answered[0] > before
        )  # served through the window, nothing refused or cut


def test_sigterm_gives_up_after_the_grace_period(local_registry: Registry) -> None:
    with leaf_serve(
        model=local_registry.pointer_uri, max_queue_delay_ms=60_000, grace_period=1, drain_delay=0
    ) as (
        proc,
        url,
    ):
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(
                    httpx.post(
                        url + "/classify", content=encode_image((1, 2, 3), "PNG"), timeout=90
                    )
                )
            except httpx.TransportError as e:
                outcome.append(e)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_in_flight(
            url
        )  # without a request in flight the server would exit at once, and prove nothing
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # Far less than the 60 s the queued request would need: the grace period bounds shutdown...
        assert proc.wait(timeout=30) == -signal.SIGTERM
        # ...and the server did wait that long for the request, then cut it off without an answer: uvicorn
        # cancels the task and answers 500 itself (or the connection closes first).
        assert time.monotonic() - signalled >= 1.0
        sender.join(timeout=30)
        (cut,) = outcome
        assert isinstance(cut, httpx.TransportError) or cut.status_code == 500, cut


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"require_gpu": "true"}, 1, "require_gpu: expected CUDAExecutionProvider"),
        ({"port": "eighty"}, 2, "--port (LEAF_SERVE_PORT): expected an integer, received 'eighty'"),
        (
            {"max_batch_size": "0"},
            2,
            "(LEAF_SERVE_MAX_BATCH_SIZE): expected an integer >= 1, received 0",
        ),
        ({"log_level": "loud"}, 2, "expected one of debug, info"),
        (
            {"log_format": "xml"},
            2,
            "--log-format (LEAF_SERVE_LOG_FORMAT): expected one of text, json, received 'xml'",
        ),
        ({"providers": "quantum"}, 1, "providers: expected auto, tensorrt, cuda, cpu"),
        (
            {"model": "/nonexistent/leaf/latest.json"},
            1,
            "no pointer; nothing has been promoted yet",
        ),
        (
            {"admin_port": "70000"},
            2,
            "(LEAF_SERVE_ADMIN_PORT): expected an integer from 0 to 65535, received 70000",
        ),
    ],
)
def test_start_up_fails_loudly(
    local_registry: Registry, options: dict, status: int, message: str
) -> None:
    options = {"model": local_registry.pointer_uri, "port": free_port(), "grpc_port": 0, **options}
    proc = subprocess.run(
        [sys.executable, "-m", "leaf_serve"],
        env=serve_env(**options),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr


def test_flags_override_environment(local_registry: Registry) -> None:
    from leaf_serve.__main__ import parse_config

    os.environ["LEAF_SERVE_TOP_K"] = "2"
    try:
        config = parse_config(
            ["--model", local_registry.pointer_uri, "--top-k", "4", "--providers", "tensorrt,cpu"]
        )
    finally:
        del os.environ["LEAF_SERVE_TOP_K"]
    assert (config.top_k, config.providers, config.port) == (4, ["tensorrt", "cpu"], 8080)


@pytest.mark.parametrize("processes", [1, 2])
def test_the_admin_port_keeps_metrics_and_review_off_the_public_port(
    local_registry: Registry, processes
) -> None:
    """NetworkPolicy sees ports: with --admin-port the operators' routes answer only there (one app, two sockets)."""
    admin = free_port()
    with leaf_serve(
        model=local_registry.pointer_uri, admin_port=admin, processes=processes, drain_delay=0
    ) as (_, url):
        public_metrics = httpx.get(url + "/metrics")
        assert (
            public_metrics.status_code == 404
            and "admin port only" in public_metrics.json()["error"]
        )
        assert httpx.get(url + "/review").status_code == 404
        assert (
            httpx.get(url + "/metricsz").status_code == 404
        )  # not a prefix match of another route
        assert (
            httpx.get(url + "/v2/health/ready").status_code == 200
        )  # probes and the public API stay
        assert (
            httpx.post(url + "/classify", content=encode_image((230, 20, 20), "PNG")).status_code
            == 200
        )
        admin_url = f"http://127.0.0.1:{admin}"
        text = httpx.get(admin_url + "/metrics").text
        assert 'leaf_serve_requests_total{endpoint="classify",outcome="success"}' in text
        assert (
            httpx.get(admin_url + "/review").status_code == 404
        )  # review off here: its own 404, not ours
        assert "review is off" in httpx.get(admin_url + "/review").json()["error"]
