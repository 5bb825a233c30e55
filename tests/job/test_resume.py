"""Preemption: SIGTERM in the middle of phase 2 -> exit 75 -> the retried pod resumes and publishes once.

The preempted pod is a process of its own (the signal is real); the retries run ``leaf-train`` in this
process, which starts from the files alone just as a new pod would, without paying for another
TensorFlow start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.errors import EXIT_PREEMPTED
from leaf_train.synth import write

pytestmark = pytest.mark.slow

HEAD, FINETUNE = 2, 6


def train_argv(data: Path, out: Path, augment: str = "false") -> list[str]:
    return [
        "train",
        "--data", str(data), "--output", str(out), "--run-id", "nightly-123",
        "--image-size", "32", "--weights", "none", "--batch-size", "8",
        "--head-epochs", str(HEAD), "--finetune-epochs", str(FINETUNE), "--head-lr", "1e-3",
        "--early-stopping-patience", "0", "--augment", augment, "--kube-integration", "off", "--progress", "off",
    ]  # fmt: skip


def wait_for_phase2_epoch(state_file: Path, proc: subprocess.Popen, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it reached phase 2"
        try:
            state = json.loads(state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        if state.get("phase") == 2 and state.get("epochs_done", 0) >= 1:
            return state
        time.sleep(0.05)
    raise AssertionError("no phase-2 checkpoint appeared in time")


# device: the resumed process loads the checkpoint into a new model object, which must get the
# augmenting train step again (train.run_phases attaches it per phase).
@pytest.mark.parametrize("augment", ["false", "device"])
def test_sigterm_in_phase2_then_resume_completes_and_publishes_once(tmp_path, augment, caplog):
    data, out = tmp_path / "photos", tmp_path / "registry"
    write(open_store(str(data)), per_class=8, classes=2, size=64)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run_dir = out / "leaf-classifier" / "runs" / "nightly-123"

    cmd = [sys.executable, "-m", "leaf_train.cli", *train_argv(data, out, augment)]
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = wait_for_phase2_epoch(run_dir / "state.json", first)
    first.send_signal(signal.SIGTERM)
    log1, _ = first.communicate(timeout=120)
    assert first.returncode == EXIT_PREEMPTED, log1
    assert "checkpoint saved" in log1
    saved = json.loads((run_dir / "state.json").read_text())
    assert (
        saved["phase"] == 2
        and saved["epochs_done"] >= seen["epochs_done"]
        and not saved["published_version"]
    )
    assert not (
        out / "leaf-classifier" / "versions"
    ).exists()  # nothing published by the preempted pod

    caplog.clear()
    assert main(train_argv(data, out, augment)) == 0, caplog.text[-3000:]
    assert f"resuming run {run_dir}" in caplog.text and "at phase 2 after" in caplog.text

    versions = list((out / "leaf-classifier" / "versions").iterdir())
    assert len(versions) == 1
    report = json.loads((versions[0] / "report.json").read_text())
    assert report["epochs_run"] == HEAD + FINETUNE  # the same total as an uninterrupted run
    assert report["augment"] == {"false": "off"}.get(augment, augment)
    assert report["history"]["phase"] == [1.0] * HEAD + [2.0] * FINETUNE
    final = json.loads((run_dir / "state.json").read_text())
    assert final["published_version"] == versions[0].name == final["version"]

    # A third attempt of the same Job (e.g. the pod died after publishing) publishes nothing new.
    caplog.clear()
    assert main(train_argv(data, out, augment)) == 0, caplog.text[-3000:]
    assert f"this run already published {versions[0].name}" in caplog.text
    assert len(list((out / "leaf-classifier" / "versions").iterdir())) == 1
