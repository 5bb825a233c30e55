"""Two real workers on loopback: MultiWorkerMirroredStrategy on CPU, the same entrypoint as the Indexed Job.

Each process is ``leaf-train train`` configured as a pod of the chart's Indexed Job is:
``LEAF_TRAIN_WORKERS=2``, ``JOB_COMPLETION_INDEX`` set per process (Kubernetes sets it), and
``LEAF_TRAIN_WORKER_HOSTS`` standing in for the pod hostnames (two ports on 127.0.0.1 instead
of ``<job>-<i>.<service>:2222``). TF_CONFIG is built by the job's own code from those.
Two attempts of the same Job (same run id): the first trains and then fails before publishing,
the retry resumes both workers from the chief's checkpoint and publishes once. The workers augment
on the device (uint8 batches, each replica its own draws), the mode a multi-GPU Job runs in, so the
same run shows the replicas stay in sync with augmentation in the train step.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from leaf_common.registry import Pointer
from leaf_common.storage import open_store
from leaf_train.synth import write

pytestmark = pytest.mark.slow

DIGEST = re.compile(r"final weights sha256 ([0-9a-f]{64}) \(worker (\d)\)")
RUN_ID = "mw-run"
DEVICE = ("--augment", "device")  # after launch()'s "--augment false": the later flag wins


def free_ports(n: int) -> list[int]:
    """Ports the kernel hands out now; held together so they differ, released just before use."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def launch(data: Path, out: Path, *extra: str) -> list[subprocess.Popen]:
    """Both workers of one attempt of the Job, on two fresh loopback ports."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in free_ports(2))
    args = [
        sys.executable, "-m", "leaf_train.cli", "train",
        "--data", str(data), "--output", str(out), "--run-id", RUN_ID,
        "--image-size", "32", "--weights", "none", "--batch-size", "8", "--dense-units", "16",
        "--head-epochs", "1", "--finetune-epochs", "1", "--head-lr", "1e-3", "--lr-scaling", "linear",
        "--early-stopping-patience", "0", "--augment", "false", "--kube-integration", "off", "--progress", "off",
        "--export-fp16", "true", *extra,
    ]  # fmt: skip
    procs = []
    for index in range(2):
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "LEAF_TRAIN_WORKERS": "2",
            "LEAF_TRAIN_WORKER_HOSTS": hosts,
            "JOB_COMPLETION_INDEX": str(index),
        }
        procs.append(
            subprocess.Popen(
                args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    return procs


def finish(
    procs: list[subprocess.Popen], expected: tuple[int, int] = (0, 0), timeout: float = 300
) -> list[str]:
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == expected[i], (
            f"worker {i} exited {p.returncode}, expected {expected[i]}:\n{log[-6000:]}"
        )
    return logs


def digests(*logs: str) -> dict[int, str]:
    found = {int(m.group(2)): m.group(1) for log in logs for m in DIGEST.finditer(log)}
    assert sorted(found) == [0, 1], [log[-3000:] for log in logs]
    return found


def test_two_workers_train_in_sync_resume_from_the_chiefs_checkpoint_and_only_the_chief_publishes(
    tmp_path,
):
    data, out = tmp_path / "photos", tmp_path / "registry"
    write(open_store(str(data)), per_class=8, classes=2, size=48)
    model_dir = out / "leaf-classifier"

    # Attempt 1: both workers train; then the chief fails before publishing, as a pod lost after training
    # would: latest.json names a served version whose files are gone, so re-scoring the champion fails
    # (exit 1). A parity failure no longer fails the job (the gate rejects it). The other worker's part ends
    # with training.
    model_dir.mkdir(parents=True)
    (model_dir / "latest.json").write_bytes(
        Pointer(version="gone", name="leaf-classifier").to_json()
    )
    chief, worker = finish(launch(data, out, *DEVICE), expected=(1, 0))
    for index, log in enumerate((chief, worker)):
        assert (
            f'"task": {{"type": "worker", "index": {index}}}' in log
        )  # TF_CONFIG built from JOB_COMPLETION_INDEX
        assert "MultiWorkerMirroredStrategy: 2 replica(s) on 2 worker(s)" in log
        assert "global batch 8 = 4 per replica" in log
        assert "learning rates 0.002 / 2e-05 (lr_scaling linear)" in log  # x2 replicas
        assert "augmentation device (option device)" in log
    trained = digests(chief, worker)
    assert trained[0] == trained[1]  # all-reduced gradients kept both replicas' weights identical
    assert (
        "IncompleteVersionError: served version" in chief and "versions/gone is unusable" in chief
    )
    assert "worker 1: trained version" in worker
    assert not (model_dir / "versions").exists()
    state = json.loads((model_dir / "runs" / RUN_ID / "state.json").read_text())
    assert (state["phase"], state["published_version"]) == (
        3,
        "",
    )  # the chief's checkpoint: training done

    # Attempt 2 (the Job's retry): every worker loads the chief's checkpoint, so both hold exactly the
    # weights attempt 1 trained, train nothing more, and only the chief exports and publishes.
    (model_dir / "latest.json").unlink()
    chief, worker = finish(launch(data, out, *DEVICE))
    for log in (chief, worker):
        assert f"resuming run {model_dir / 'runs' / RUN_ID} at phase 3 after 0 epochs" in log
        assert "phase 1 compiled" not in log and "phase 2 compiled" not in log
    assert digests(chief, worker) == trained
    versions = list((model_dir / "versions").iterdir())
    assert len(versions) == 1
    assert "promoted:       yes" in chief
    assert "worker 1: trained version" in worker
    assert (
        "exported ONNX" not in worker
        and "leaf_train.registry" not in worker
        and "promoted" not in worker
    )

    report = json.loads((versions[0] / "report.json").read_text())
    assert report["distribution"] == {
        "strategy": "MultiWorkerMirroredStrategy",
        "replicas": 2,
        "workers": 2,
    }
    assert report["history"]["phase"] == [1.0, 2.0]
    assert report["augment"] == "device"
    assert report["jit_compile"] is False  # auto: XLA only with a GPU
    contract = json.loads((versions[0] / "model.json").read_text())
    fp16 = contract["parity"]["fp16"]
    assert fp16["passed"] and fp16["tolerance"] == 1e-2 and fp16["file"] == "model.fp16.onnx"
    assert (
        fp16["sha256"] == hashlib.sha256((versions[0] / "model.fp16.onnx").read_bytes()).hexdigest()
    )
    assert contract["training"]["workers"] == 2 and contract["training"]["lr_scaling"] == "linear"
    manifest = json.loads((versions[0] / "manifest.json").read_text())
    assert "model.fp16.onnx" in json.dumps(manifest["files"])
    state = json.loads((model_dir / "runs" / RUN_ID / "state.json").read_text())
    assert state["published_version"] == versions[0].name
