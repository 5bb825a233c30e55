"""``leaf-serve --processes N``: workers on one port (SO_REUSEPORT), pod-wide metrics, restarts, one SIGTERM.

Real processes and sockets: the supervisor runs as ``python -m leaf_serve``, its workers are its
children (``/proc/<pid>/task/<pid>/children``), and every request opens a new connection so the kernel
spreads them over the workers.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from servekit import Registry, colour_image, free_port, wait_for
from test_serve_cli import leaf_serve, serve_env

GREEN = colour_image((20, 230, 20)).ravel().tolist()
BODY = {"inputs": [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "FP32", "data": GREEN}]}


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return sorted(int(p) for p in text.split())


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def infer_on_new_connections(url: str, count: int) -> None:
    # No keep-alive: one connection per request, so the kernel picks a worker for each. One client,
    # because building a client (its TLS context included) costs more than the request.
    with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(count):
            response = client.post(url + "/v2/models/leaf/infer", json=BODY)
            assert response.status_code == 200, response.text
            assert np.argmax(response.json()["outputs"][0]["data"]) == 1  # green -> rust


def requests_counted(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.search(
        r'^leaf_serve_requests_total\{endpoint="infer",outcome="success"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_workers_share_the_port_and_the_metrics(local_registry: Registry) -> None:
    with leaf_serve(model=local_registry.pointer_uri, processes=2, drain_delay=0) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        # Both must be ready, not only the one that answered the fixture's probe: each has its model.
        wait_for(
            lambda: all(f'pid="{w}"' in httpx.get(url + "/metrics").text for w in workers),
            "both models",
        )
        before = {w: cpu_ticks(w) for w in workers}
        infer_on_new_connections(url, 300)
        used = {w: cpu_ticks(w) - before[w] for w in workers}
        # Every worker answered a share of the connections (each request costs ~1-2 ms of CPU).
        assert all(ticks >= 0.15 * sum(used.values()) for ticks in used.values()), used
        assert children(proc.pid) == workers  # nobody was restarted meanwhile
        # Counters are summed over the workers, so any one worker's /metrics sees all 300.
        assert requests_counted(url) >= 300
        info = httpx.get(url + "/metrics").text
        assert len(re.findall(r'^leaf_serve_model_info\{.*version="v1".*\} 1\.0$', info, re.M)) == 2


def test_a_crashed_worker_is_restarted_and_service_goes_on(local_registry: Registry) -> None:
    with leaf_serve(model=local_registry.pointer_uri, processes=2, drain_delay=0) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        # Both serving before one is killed: a worker still loading its model is not yet listening,
        # and killing the only one that is would refuse the next connections (a loaded machine
        # made that race visible).
        wait_for(
            lambda: all(f'pid="{w}"' in httpx.get(url + "/metrics").text for w in workers),
            "both workers' models",
        )
        os.kill(workers[0], signal.SIGKILL)
        # Connections queued at the killed worker are reset, as at any crashed server; once it is gone
        # the kernel sends every new connection to the live one, before the replacement is up.
        wait_for(lambda: not Path(f"/proc/{workers[0]}").exists(), "the killed worker gone")
        infer_on_new_connections(url, 20)
        restarted = wait_for(
            lambda: len(now := children(proc.pid)) == 2 and workers[0] not in now and now,
            "a replacement worker",
        )
        assert workers[1] in restarted
        replacement = next(w for w in restarted if w != workers[0] and w != workers[1])
        # The replacement loaded the model: its own series appears in the pod-wide model_info.
        wait_for(
            lambda: f'pid="{replacement}"' in httpx.get(url + "/metrics").text,
            "the replacement's model",
        )
        infer_on_new_connections(url, 20)
        assert (
            requests_counted(url) >= 40
        )  # a dead worker's counts still count, as Prometheus expects
        assert proc.poll() is None


def test_sigterm_stops_every_worker_and_the_server_exits_0(local_registry: Registry) -> None:
    with leaf_serve(
        model=local_registry.pointer_uri, processes=2, drain_delay=0, grace_period=5
    ) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        for worker in workers:
            assert (
                not Path(f"/proc/{worker}").exists()
                or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
            )
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/v2/health/live", timeout=2)


def test_workers_end_with_a_killed_supervisor(local_registry: Registry) -> None:
    with leaf_serve(
        model=local_registry.pointer_uri, processes=2, drain_delay=0, grace_period=2
    ) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        proc.kill()  # as the kernel's OOM killer would
        proc.wait()
        wait_for(
            lambda: not any(Path(f"/proc/{w}").exists() for w in workers), "the workers to exit", 20
        )


def test_a_model_that_cannot_be_served_ends_the_server_with_1(tmp_path: Path) -> None:
    env = serve_env(
        model=str(tmp_path / "nothing" / "latest.json"), processes=2, grpc_port=0, providers="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-m", "leaf_serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "as every worker would" in done.stderr


def test_workers_share_the_grpc_port_too(local_registry: Registry) -> None:
    import tritonclient.grpc as grpcclient

    grpc_port = free_port()
    with leaf_serve(
        model=local_registry.pointer_uri, processes=2, grpc_port=grpc_port, drain_delay=0
    ) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        wait_for(
            lambda: all(f'pid="{w}"' in httpx.get(url + "/metrics").text for w in workers),
            "both models",
        )
        assert (
            proc.poll() is None
        )  # a worker that could not bind the gRPC port would have ended the server
        for _ in range(
            20
        ):  # a new channel (connection) each time: the kernel picks a worker for each
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            image = grpcclient.InferInput("image", [1, 32, 32, 3], "FP32")
            image.set_data_from_numpy(colour_image((20, 230, 20)).astype(np.float32))
            result = client.infer("leaf", [image])
            assert np.argmax(result.as_numpy("probabilities")[0]) == 1
            client.close()
        # Still the same two workers: none failed to bind the gRPC port and was restarted.
        assert children(proc.pid) == workers


def test_a_port_no_worker_can_bind_ends_the_server_at_once(local_registry: Registry) -> None:
    import socket

    with socket.socket() as taken:  # another program holds the gRPC port (no SO_REUSEPORT)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = serve_env(
            model=local_registry.pointer_uri, processes=2, host="127.0.0.1", port=free_port(),
            grpc_port=taken.getsockname()[1], providers="cpu", drain_delay=0,
        )  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "leaf_serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 3, done.stderr[
        -3000:
    ]  # uvicorn's start-up failure, not a restart loop
    assert "as every worker would" in done.stderr and "restarting it" not in done.stderr


def live_on_new_connections(url: str, count: int) -> int:
    """How many of ``count`` liveness requests, each on a new connection, were answered within 2 s."""
    answered = 0
    for _ in range(count):
        with contextlib.suppress(
            httpx.TransportError
        ):  # a connection the hung worker holds: not answered
            answered += httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
    return answered


def test_a_hung_worker_is_killed_and_restarted(local_registry: Registry) -> None:
    options = {
        "model": local_registry.pointer_uri,
        "processes": 2,
        "drain_delay": 0,
        "grace_period": 1,
    }
    with leaf_serve(**options, worker_timeout=2) as (proc, url):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        wait_for(
            lambda: all(f'pid="{w}"' in httpx.get(url + "/metrics").text for w in workers),
            "both models",
        )
        os.kill(
            workers[0], signal.SIGSTOP
        )  # issue 20: hung for good, nothing logged, 7 of 20 probes timed out
        # Killed (SIGKILL works on a stopped process) within worker_timeout plus a poll; a replacement started.
        replaced = wait_for(
            lambda: workers[0] not in (now := children(proc.pid)) and len(now) == 2 and now,
            "restart",
        )
        replacement = next(w for w in replaced if w != workers[1])
        wait_for(
            lambda: f'pid="{replacement}"' in httpx.get(url + "/metrics").text,
            "the replacement's model",
        )
        assert live_on_new_connections(url, 20) == 20
        text = httpx.get(url + "/metrics").text
        assert re.search(r'^leaf_serve_worker_restarts_total\{reason="hung"\} 1\.0$', text, re.M), (
            text
        )
        assert re.search(r'^leaf_serve_worker_restarts_total\{reason="crashed"\} 0\.0$', text, re.M)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    log = proc.stdout.read()
    assert (
        f"worker 0 (pid {workers[0]}) silent for" in log
        and "worker_timeout 2 s): killing it (SIGKILL)" in log
    )
    assert "killed for not answering its heartbeat; restarting it" in log


def test_a_worker_loading_its_model_is_not_a_hang(local_registry: Registry) -> None:
    """The heartbeat clock starts at the first beat: a worker slower to load than worker_timeout is left alone."""
    from leaf_serve.supervisor import Supervisor

    # Never beats; after 3 s exits with 2 (a bad option), which ends the server: the status says it was not killed.
    slow = [sys.executable, "-c", "import sys, time; time.sleep(3); sys.exit(2)"]
    supervisor = Supervisor(slow, 1, worker_timeout=1)
    assert supervisor.run() == 2  # a worker killed as hung would have been restarted, then counted
    assert supervisor._restart_counts == {"hung": 0, "crashed": 0}


def test_the_capture_rate_is_per_replica_not_per_process(local_registry: Registry) -> None:
    from servekit import encode_image

    grey = encode_image(
        (128, 128, 128), "JPEG"
    )  # under the confidence threshold: offered to capture
    options = {
        "model": local_registry.pointer_uri,
        "processes": 2,
        "drain_delay": 0,
        "capture": "true",
    }
    with leaf_serve(**options, capture_per_minute=4, capture_per_client_per_minute=100) as (
        proc,
        url,
    ):
        workers = wait_for(
            lambda: len(children(proc.pid)) == 2 and children(proc.pid), "two workers"
        )
        wait_for(
            lambda: all(f'pid="{w}"' in httpx.get(url + "/metrics").text for w in workers),
            "both models",
        )
        captured = []
        for _ in range(24):  # new connections: both workers get a share
            with httpx.Client() as client:
                captured.append(client.post(url + "/classify", content=grey).json()["captured"])
        # issue 20: each process had the whole rate (62 of 64 kept at 30 a minute with 2 processes).
        assert sum(c is not None for c in captured) <= 4
