"""The training pod exactly as the chart's CronJob renders it, played by podman against S3 on the host.

Each pod is the Job template of ``helm template`` (chart defaults plus an S3 endpoint, a Secret, the CPU
image and the tiny set's training values), with the labels the Job controller adds. It runs the CPU job
image with the chart's security context: uid 10001, read-only root, no capabilities, emptyDir mounts.
"""

from __future__ import annotations

import hashlib

import pytest
from containerkit import ROOT
from leaf_common.storage import open_store
from leaf_serve.repository import fetch_version
from leaf_train.errors import EXIT_CONFIG, EXIT_PREEMPTED
from scenario import (
    FINETUNE_EPOCHS,
    HEAD_EPOCHS,
    MODEL,
    OUTPUT,
    FirstRun,
    PodRun,
    Preemption,
    TrainingPods,
)

pytestmark = [pytest.mark.container, pytest.mark.slow]

# What for_podman may change in a rendered training pod, and nothing else (see containerkit).
EXPECTED_CHANGES = [
    "annotation checksum/config dropped",
    "env LEAF_TRAIN_NAMESPACE: fieldRef metadata.namespace -> 'leaf-train'",
]


def pod_security(run: PodRun) -> dict:
    cfg, host = run.inspect["Config"], run.inspect["HostConfig"]
    return {
        "user": cfg["User"],
        "read_only_root": host["ReadonlyRootfs"],
        "capabilities": run.inspect.get("EffectiveCaps") or [],
        "no_new_privileges": "no-new-privileges" in " ".join(host.get("SecurityOpt") or []),
    }


def test_training_pod_trains_and_publishes_a_version_that_verifies(
    first_run: FirstRun, training: TrainingPods
):
    run = first_run.run
    assert run.exit_code == 0, run.logs[-3000:]
    assert training.changes[0] == EXPECTED_CHANGES
    assert pod_security(run) == {
        "user": "10001:10001",
        "read_only_root": True,
        "capabilities": [],
        "no_new_privileges": True,
    }
    # One version, promoted by the job's own gate (the registry was empty), read back before other pods ran.
    version = first_run.published
    assert version and first_run.versions == [version] and first_run.pointer == version
    # Complete and intact by the server's own checks.
    store = open_store(f"{OUTPUT}/{MODEL}/versions/{version}", client=training.s3.client)
    contract, model_bytes = fetch_version(store)
    assert (
        contract.version == version and contract.parity["passed"] and len(model_bytes) > 1_000_000
    )
    assert contract.gate["promote"] is True
    # The image was installed from its lock, and the run says so.
    lock = contract.provenance["lock"]
    expected_sha = hashlib.sha256((ROOT / "locks" / "train-cpu.txt").read_bytes()).hexdigest()
    assert (lock["profile"], lock["sha256"], lock["environment_matches"]) == (
        "train-cpu",
        expected_sha,
        True,
    )


def test_a_scheduled_pod_on_unchanged_photos_skips_and_publishes_nothing(
    unchanged_run: tuple[PodRun, list[str]], first_run: FirstRun
):
    run, versions_after = unchanged_run
    assert run.exit_code == 0, run.logs[-3000:]
    assert "skipped:" in run.logs, run.logs[-3000:]
    assert "phase 1" not in run.logs  # it ended before any training
    assert versions_after == first_run.versions  # and published nothing


def test_bad_configuration_exits_2_from_the_container(training: TrainingPods):
    """A value the job rejects (through the chart's extraEnv) fails the pod with exit 2: FailJob in the chart."""
    bad = [{"name": "LEAF_TRAIN_VAL_FRACTION", "value": "1.5"}]
    run = training.run(
        "leaf-train-bad", "leaf-train-bad-xyz12", timeout=300, **{"training.extraEnv": bad}
    )
    assert run.exit_code == EXIT_CONFIG, run.logs[-3000:]
    assert (
        "--val-fraction (LEAF_TRAIN_VAL_FRACTION): expected a number > 0 and < 1, received 1.5"
        in run.logs
    )


def test_stop_in_phase2_exits_75_and_the_next_pod_resumes_and_publishes_once(
    preemption: Preemption, training: TrainingPods
):
    p = preemption
    assert p.stopped.exit_code == EXIT_PREEMPTED, p.stopped.logs[-3000:]
    assert "checkpoint saved" in p.stopped.logs
    assert (
        p.state_after_stop["phase"] == 2
        and p.state_after_stop["epochs_done"] >= p.phase2_state["epochs_done"]
    )
    assert (
        not p.state_after_stop["published_version"] and p.versions_after_stop == p.versions_before
    )

    assert p.resumed.exit_code == 0, p.resumed.logs[-3000:]
    assert f"resuming run {OUTPUT}/{MODEL}/runs/{p.job} at phase 2 after" in p.resumed.logs
    new = p.versions_after - p.versions_before
    assert len(new) == 1, f"expected exactly one new version; found {sorted(new)}"
    (version,) = new
    assert p.state_after["published_version"] == version
    report = training.s3.json(f"{OUTPUT}/{MODEL}/versions/{version}/report.json")
    assert (
        report["epochs_run"] == HEAD_EPOCHS + FINETUNE_EPOCHS
    )  # the same total as an uninterrupted run
