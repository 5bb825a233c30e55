"""``--processes N``: N server processes on the same ports, so a node's cores can feed one GPU.

Design: docs/serving.md#several-processes-per-pod
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from types import FrameType

from leaf_common.resources import available_cpus

log = logging.getLogger("leaf_serve.supervisor")

# Set in a worker's environment by the supervisor: names the worker in its log lines (it gets
# --reuse-port too).
WORKER_ENV = "LEAF_SERVE_WORKER_INDEX"
# How many workers share the replica: per-replica limits (capture rates) are divided by it.
WORKER_COUNT_ENV = "LEAF_SERVE_WORKER_COUNT"
# The file a worker's event loop touches every second (its mtime is the heartbeat).
HEARTBEAT_ENV = "LEAF_SERVE_HEARTBEAT_FILE"
# Restarts by reason, written by the supervisor beside the metrics files; every worker exports them.
RESTARTS_FILE = "worker_restarts.json"
# Exit statuses that mean "every worker would fail the same way": 1 the model cannot be served, 2 a
# bad option (leaf_serve.__main__.main), 3 uvicorn's start-up failure (a port it cannot bind, a
# failed startup).
FATAL_EXITS = {1, 2, 3}
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
_POLL = 0.2


def worker_index() -> int | None:
    """This process's index among the workers, or None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def heartbeat_file() -> str | None:
    """The file this worker's event loop touches, or None when no supervisor watches it."""
    return os.environ.get(HEARTBEAT_ENV) or None


def beat(path: str) -> None:
    """One heartbeat: the file's mtime becomes now (cheap: one syscall, no data written)."""
    with contextlib.suppress(OSError):  # the supervisor is shutting down and removed the folder
        os.utime(path)


def worker_count() -> int:
    """How many server processes share this replica (1 when not supervised)."""
    value = os.environ.get(WORKER_COUNT_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def reuse_port_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A bound, not yet listening TCP socket other workers can bind too; uvicorn listens."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Supervisor:
    """Starts ``processes`` workers running ``command`` and keeps them running until stopped."""

    def __init__(self, command: list[str], processes: int, worker_timeout: float = 15.0):
        self._command, self._processes, self._timeout = command, processes, worker_timeout
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._restarts: deque[float] = deque()
        self._stopping = False
        self._metrics_dir = tempfile.mkdtemp(prefix="leaf-serve-metrics-")
        self._beats: dict[int, str] = {}  # worker index -> its heartbeat file
        self._started: dict[
            int, float
        ] = {}  # worker index -> wall-clock start (heartbeats are mtimes)
        self._hung: set[int] = set()  # killed for silence: their exit is a hang, not a crash
        self._restart_counts = {"hung": 0, "crashed": 0}

    def _start(self, index: int) -> None:
        beat_file = self._beats.setdefault(
            index, os.path.join(self._metrics_dir, f"heartbeat-{index}")
        )
        with open(beat_file, "wb"):
            pass
        os.utime(beat_file, (0, 0))  # no beat yet: the worker is loading its model
        env = {**os.environ, WORKER_ENV: str(index), "PROMETHEUS_MULTIPROC_DIR": self._metrics_dir}
        env |= {WORKER_COUNT_ENV: str(self._processes), HEARTBEAT_ENV: beat_file}
        proc = subprocess.Popen(self._command, env=env, preexec_fn=_die_with_parent)
        self._workers[index] = proc
        self._started[index] = time.time()
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _check_heartbeat(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL a worker whose loop was silent for worker_timeout (after its first beat)."""
        if index in self._hung or self._stopping:
            return
        try:
            last = os.stat(self._beats[index]).st_mtime
        except OSError:
            return
        if last < self._started[index]:
            return  # still loading: the clock starts at the first beat
        silent = time.time() - last
        if silent > self._timeout:
            log.error(
                "worker %d (pid %d) silent for %.1f s (worker_timeout %g s): killing it "
                "(SIGKILL) to restart it",
                index,
                proc.pid,
                silent,
                self._timeout,
            )
            self._hung.add(index)
            proc.kill()  # SIGKILL ends a stopped (SIGSTOP) or deadlocked process too

    def _count_restart(self, reason: str) -> None:
        """Add one to the restart counts the workers export
        (``leaf_serve_worker_restarts_total``)."""
        self._restart_counts[reason] += 1
        path = os.path.join(self._metrics_dir, RESTARTS_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(self._restart_counts, f)
        os.replace(path + ".tmp", path)  # a scrape reads the old counts or the new, never half

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True
        for proc in self._workers.values():
            if proc.poll() is None:
                proc.send_signal(sig)

    def _dead(self, pid: int) -> None:
        from prometheus_client import multiprocess  # the supervisor itself exports nothing

        multiprocess.mark_process_dead(pid, self._metrics_dir)

    def run(self) -> int:
        """Supervise until every worker has exited; returns the server's exit status."""
        signal.signal(signal.SIGTERM, self._forward)
        signal.signal(signal.SIGINT, self._forward)
        status = 0
        try:
            for index in range(self._processes):
                self._start(index)
            while self._workers:
                time.sleep(_POLL)
                for index, proc in list(self._workers.items()):
                    code = proc.poll()
                    if code is None:
                        self._check_heartbeat(index, proc)
                        continue
                    del self._workers[index]
                    self._dead(proc.pid)
                    if self._stopping:
                        status = status or _exit_status(code)
                        continue
                    status = self._on_unexpected_exit(index, proc.pid, code) or status
        finally:
            self._forward(signal.SIGTERM, None)
            for proc in self._workers.values():
                proc.wait()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return status

    def _on_unexpected_exit(self, index: int, pid: int, code: int) -> int:
        """Restart a crashed worker, or stop everything for a fault a restart cannot cure."""
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW:
            self._restarts.popleft()
        if (code in FATAL_EXITS and index not in self._hung) or len(self._restarts) >= MAX_RESTARTS:
            why = (
                "as every worker would"
                if code in FATAL_EXITS
                else f"{MAX_RESTARTS} restarts in {RESTART_WINDOW:g} s"
            )
            log.error(
                "worker %d (pid %d) exited with %d: %s; stopping the server", index, pid, code, why
            )
            self._forward(signal.SIGTERM, None)
            return _exit_status(code) or 1
        self._restarts.append(now)
        hung = index in self._hung
        self._hung.discard(index)
        self._count_restart("hung" if hung else "crashed")
        why = "killed for not answering its heartbeat" if hung else f"exited with {code}"
        log.warning("worker %d (pid %d) %s; restarting it", index, pid, why)
        self._start(index)
        return 0


def _die_with_parent() -> None:
    """In the worker, before exec: the supervisor's SIGKILL (an OOM kill) is its SIGTERM.

    Without it a killed supervisor leaves workers holding the ports, and the restarted container
    cannot serve on them.
    """
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _exit_status(code: int) -> int:
    """A worker's status as the server's: one ended by the forwarded SIGTERM stopped cleanly."""
    return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else (code if code > 0 else 1)


def supervise(
    argv: list[str],
    processes: int,
    intra_op_threads: int,
    decode_threads: int,
    worker_timeout: float = 15.0,
) -> int:
    """Run ``leaf-serve`` with ``argv`` as ``processes`` workers; see the module's docstring."""
    # The workers' own option wins over LEAF_SERVE_PROCESSES: a flag beats the environment.
    command = [
        sys.executable,
        "-m",
        "leaf_serve",
        *argv,
        "--processes",
        "1",
        "--reuse-port",
        "true",
    ]
    # "0 = the CPU quota" is the pod's quota: split between the workers, or N of them oversubscribe
    # it.
    share = str(max(1, available_cpus() // processes))
    if not intra_op_threads:
        command += ["--intra-op-threads", share]
    if not decode_threads:
        command += ["--decode-threads", share]
    log.info("starting %d worker processes on the same ports (SO_REUSEPORT)", processes)
    return Supervisor(command, processes, worker_timeout).run()
