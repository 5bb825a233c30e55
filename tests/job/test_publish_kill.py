"""Real processes, real signals: SIGTERM during export, SIGKILL mid-publish, SIGTERM mid-publish, then done.

One Job's pods in turn, all with the same run id (the chart passes the Job name): the first is
stopped by SIGTERM while it exports (exit 75, nothing published), the second is SIGKILLed (as
by the OOM killer) half-way through uploading the version, the third gets SIGTERM while
publishing (it finishes the second's upload up to the manifest, then stops with exit 75), and the
fourth completes the run: exactly one complete version, verified and served. Signals are sent by
``fault_driver.py`` from inside the job at the named step, so each lands where the test says. The
pods that get no signal run ``leaf-train`` in this process: they start from the files alone, as a new
pod would, without another TensorFlow start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from leaf_common.registry import MANIFEST_FILE
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.errors import EXIT_PREEMPTED
from leaf_train.registry import CLAIM_FILE, ModelRegistry
from leaf_train.synth import write

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("fault_driver.py")
RUN_ID = "nightly-42"


def train_argv(data: Path, out: Path) -> list[str]:
    return [
        "train", "--data", str(data), "--output", str(out), "--run-id", RUN_ID,
        "--image-size", "32", "--weights", "none", "--batch-size", "8",
        "--head-epochs", "1", "--finetune-epochs", "1", "--early-stopping-patience", "0",
        "--augment", "false", "--kube-integration", "off", "--progress", "off",
    ]  # fmt: skip


def train(data: Path, out: Path, *fault: str) -> subprocess.CompletedProcess[str]:
    """One pod in a process of its own, with ``fault`` (fault_driver.py's options) delivering its signal."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(DRIVER), *fault, "--", *train_argv(data, out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_signals_during_export_and_publication_then_the_retry_publishes_once(tmp_path, caplog):
    data, out = tmp_path / "photos", tmp_path / "registry"
    write(open_store(str(data)), per_class=8, classes=2, size=48)
    versions = out / "leaf-classifier" / "versions"
    state_file = out / "leaf-classifier" / "runs" / RUN_ID / "state.json"

    first = train(data, out, "--term-in-export")
    assert first.returncode == EXIT_PREEMPTED, first.stderr[-3000:]
    assert "SIGTERM: stopped after the ONNX export, before its parity check" in first.stderr
    assert not versions.exists()
    state = json.loads(state_file.read_text())
    assert (state["phase"], state["published_version"]) == (3, "")  # training done and checkpointed
    version = state["version"]

    second = train(data, out, "--kill-at", "put */versions/*/model.onnx")
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "resuming run" in second.stderr and "at phase 3" in second.stderr  # no retraining
    left = {o.key for o in open_store(str(versions / version)).list()}
    assert (
        CLAIM_FILE in left
        and "model.json" in left
        and "model.onnx" not in left
        and MANIFEST_FILE not in left
    )

    third = train(data, out, "--term-at", "put */versions/*/report.json")
    assert third.returncode == EXIT_PREEMPTED, third.stderr[-3000:]
    assert (
        "finishing the publication an earlier attempt of run/nightly-42 left incomplete"
        in third.stderr
    )
    assert (
        f"SIGTERM: stopped while publishing {version}, before writing {MANIFEST_FILE}"
        in third.stderr
    )
    assert not (versions / version / MANIFEST_FILE).exists()

    assert main(train_argv(data, out)) == 0, caplog.text[-3000:]  # the fourth pod
    assert [p.name for p in versions.iterdir()] == [version]
    registry = ModelRegistry(open_store(str(out)), "leaf-classifier")
    manifest = registry.verify(version)
    listed = {o.key for o in registry.store.child(f"versions/{version}").list()}
    assert listed == {e.name for e in manifest.files} | {MANIFEST_FILE, CLAIM_FILE}
    assert registry.pointer()[0].version == version
    assert json.loads(state_file.read_text())["published_version"] == version

    # A fifth pod (the fourth died after finishing, say) finds the run done and changes nothing.
    caplog.clear()
    assert main(train_argv(data, out)) == 0, caplog.text[-3000:]
    assert f"this run already published {version}" in caplog.text
    assert [p.name for p in versions.iterdir()] == [version] and registry.pointer()[
        0
    ].version == version
