"""One run per rule through ``leaf-train train``, against S3 on loopback and the Kubernetes API checker.

* the retrain policy: a scheduled run on unchanged photos skips (seconds, no download, an Event, the
  Job's annotation, ``leaf-train status``), ``--min-new-images`` holds it back, and it trains once
  enough photos were added;
* the per-class gate: a candidate that loses a class the champion gets right is published, rejected,
  and the reason names the class and both recalls; a class new to the champion is reported;
* parity as a gate rule: an export that disagrees with Keras is published as rejected and the job exits 0.

Training is untrained on purpose (0 epochs, 32x32, ``weights none``): these tests are about the
decisions, and a champion whose ONNX is built here behaves exactly as each one needs.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.kube import OUTCOME_LABEL, SKIPPED_ANNOTATION
from leaf_train.registry import ModelRegistry
from leaf_train.synth import generate
from PIL import Image
from test_gate_decide import contract_for, tiny_onnx
from test_kube_apiserver import FakeApiServer, apiserver, job_object  # noqa: F401 - fixture

pytestmark = pytest.mark.slow

NS = "ml"
MODEL = "leaf-classifier"
UNTRAINED = [
    "--image-size", "32",
    "--weights", "none",
    "--dense-units", "16",
    "--batch-size", "8",
    "--head-epochs", "0",
    "--finetune-epochs", "0",
    "--progress", "off",
]  # fmt: skip


@pytest.fixture
def cluster(apiserver: FakeApiServer, tmp_path, monkeypatch) -> FakeApiServer:  # noqa: F811
    """The Kubernetes API as a training pod sees it: a kubeconfig, and its Job created by the CronJob."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv(
        "LEAF_TRAIN_KUBECONFIG", apiserver.kubeconfig(tmp_path / "config", namespace=NS)
    )
    return apiserver


def train(cluster: FakeApiServer, job: str, *args: str) -> int:
    """One run of the training Job ``job``, with the options the chart would give it."""
    cluster.add(job_object(name=job, ns=NS))
    return main(["train", "--output", "s3://models/reg", "--job-name", job, *UNTRAINED, *args])


def events(cluster: FakeApiServer, job: str) -> dict[str, dict]:
    return {e["reason"]: e for e in cluster.of("events") if e["regarding"]["name"] == job}


def versions() -> list[str]:
    return sorted(
        r.version for r in ModelRegistry(open_store("s3://models/reg"), MODEL).list_versions()
    )


def put_photos(s3, start: int, count: int) -> None:
    """``count`` new synthetic photos per class (two classes), numbered from ``start``; older keys untouched."""
    for key, data in generate(per_class=start + count, classes=2, size=48):
        if int(key.rsplit("_", 1)[1].removesuffix(".jpg")) >= start:
            s3.client.put_object(Bucket="photos", Key=f"pv/{key}", Body=data)


def test_scheduled_runs_skip_unchanged_photos_then_train_once_enough_are_new(
    s3, cluster, monkeypatch, caplog, capsys
):
    s3.make_bucket("photos")
    s3.make_bucket("models")
    put_photos(s3, 0, 8)  # 8 per class
    monkeypatch.setenv(
        "LEAF_TRAIN_RUN_TRIGGER", "scheduled"
    )  # what the chart sets on the CronJob's pods
    data = ["--data", "s3://photos/pv"]

    capsys.readouterr()
    # nothing served yet: trains, and is the first model (logging JSON lines, as the chart's pods do)
    assert train(cluster, "nightly-1", *data, "--log-format", "json", "--run-id", "nightly-1") == 0
    (first,) = versions()
    assert "training: nothing is served yet" in caplog.text
    logged = [
        json.loads(line)
        for line in capsys.readouterr().err.splitlines()
        if line.startswith('{"time"')
    ]
    assert any(r["logger"].startswith("leaf_train") for r in logged)
    assert all(
        r["run_id"] == "nightly-1" for r in logged
    )  # every library's lines too (botocore, ...)
    assert any(r.get("version") == first and "exported" in r["message"] for r in logged), logged[
        -5:
    ]
    assert cluster.get("jobs", NS, "nightly-1")["metadata"]["labels"][OUTCOME_LABEL] == "promoted"
    caplog.clear()
    capsys.readouterr()

    # The next night: same photos, options and code. Ends before decoding a single photo.
    assert train(cluster, "nightly-2", *data) == 0
    out = capsys.readouterr().out
    assert f"served:         {first}" in out
    assert (
        "skipped:        the 16 photos, the training options and the code are those of the served version"
        in out
    )
    assert "skipped: the 16 photos" in caplog.text  # the log line
    assert versions() == [first]
    assert not [r for r in caplog.records if r.name == "leaf_train.cache"], (
        "a skipped run decoded photos"
    )
    skipped = events(cluster, "nightly-2")["Skipped"]
    assert (
        skipped["type"] == "Normal"
        and "nothing new to learn (skip_if_unchanged=auto and a scheduled run)" in (skipped["note"])
    )
    assert "to train anyway: leaf-train submit --force" in skipped["note"]
    job = cluster.get("jobs", NS, "nightly-2")
    assert job["metadata"]["annotations"][SKIPPED_ANNOTATION] == skipped["note"]
    assert (
        job["metadata"]["labels"][OUTCOME_LABEL] == "skipped"
    )  # what LeafTrainRetrainsNotPromoted counts
    # `leaf-train status` says so, from the annotation (Events expire after an hour, the Job stays).
    code = main(["status", "--job", "nightly-2", "--namespace", NS])
    status = capsys.readouterr().out
    assert code == 0 and "published version: (none: skipped)" in status
    assert f"skipped:           {skipped['note']}" in status

    # Two photos added (one per class): below --min-new-images 3, still skipped.
    put_photos(s3, 8, 1)
    assert train(cluster, "nightly-3", *data, "--min-new-images", "3") == 0
    note = events(cluster, "nightly-3")["Skipped"]["note"]
    assert "only 2 added photo(s)" in note and "fewer than min_new_images=3" in note
    assert versions() == [first]

    # Two more: now it trains, against the served version as champion, and records the gate's table.
    caplog.clear()
    put_photos(s3, 9, 1)
    assert train(cluster, "nightly-4", *data, "--min-new-images", "3") == 0
    assert (
        "training: 4 added photo(s) (e.g. added: " in caplog.text
        and f"since {first}" in caplog.text
    )
    assert len(versions()) == 2
    gate = events(cluster, "nightly-4")["GateDecision"]
    assert gate["note"].splitlines()[1].split() == [
        "RULE",
        "THRESHOLD",
        "NEW",
        "CHAMPION",
        "VERDICT",
    ]
    assert "max_regression" in gate["note"]  # a champion existed, so it was compared


def solid_png(rgb: tuple[int, int, int], noise_seed: int) -> bytes:
    # Solid colour with a little noise (every photo distinct, the class mean unchanged): the channel-mean
    # champion classifies every one of them right.
    rng = np.random.default_rng(noise_seed)
    pixels = np.clip(
        np.full((40, 40, 3), rgb, dtype=np.int16) + rng.integers(-3, 4, (40, 40, 3)), 0, 255
    )
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def test_a_candidate_that_loses_a_class_is_rejected_and_the_reason_names_it(s3, cluster, capsys):
    s3.make_bucket("photos")
    s3.make_bucket("models")
    for cls, rgb in COLOURS.items():
        for i in range(12):
            s3.client.put_object(
                Bucket="photos", Key=f"colours/{cls}/{i}.png", Body=solid_png(rgb, i)
            )
    # The champion: the channel means through the identity, perfect on red/green/blue; it knows no "white".
    registry = ModelRegistry(open_store("s3://models/reg"), MODEL)
    champion = contract_for(["red", "green", "blue"], 8, "v1")
    registry.publish("v1", {MODEL_FILE: tiny_onnx(np.eye(3), 8), CONTRACT_FILE: champion.to_json()})
    registry.promote("v1")

    # An untrained candidate; the average rule is off (--max-regression 1) so only the per-class rule decides.
    args = [
        "--data",
        "s3://photos/colours",
        "--max-regression",
        "1",
        "--gate-min-class-support",
        "1",
    ]
    assert train(cluster, "nightly-1", *args, "--version", "v2") == 0
    assert "promoted:       no" in capsys.readouterr().out

    version = registry.store.child("versions/v2")
    gate = json.loads(version.get(CONTRACT_FILE))["gate"]
    recall = {
        c: m["recall"] for c, m in json.loads(version.get("metrics.json"))["per_class"].items()
    }
    lost = sorted(c for c in ("red", "green", "blue") if recall[c] < 0.95)
    assert lost, (
        f"precondition: an untrained candidate is worse than the perfect champion somewhere; got {recall}"
    )
    assert gate["promote"] is False and "regression against the champion" not in gate["reason"]
    for cls in lost:
        assert (
            f"recall of class {cls!r} fell from 1.0000 (champion v1) to {recall[cls]:.4f}"
            in gate["reason"]
        )
    rows = {r["class"]: r for r in gate["rules"] if r["rule"] == "class recall"}
    assert set(rows) == set(COLOURS)  # every class listed, each compared one with both recalls
    assert {c for c, r in rows.items() if r["verdict"] == "fail"} == set(lost)
    assert (rows["white"]["verdict"], rows["white"]["champion"]) == ("not compared", None)
    assert gate["new_classes"] == ["white"]
    assert registry.pointer()[0].version == "v1"  # still served

    event = events(cluster, "nightly-1")["GateDecision"]
    assert event["type"] == "Warning" and event["note"].startswith("v2: REJECTED by the gate")
    assert f"recall {lost[0]} (n=" in event["note"]
    assert "NotPromoted" in events(cluster, "nightly-1")


def test_a_parity_failure_is_a_rejected_version_and_exit_0(s3, cluster, capsys, caplog):
    s3.make_bucket("photos")
    s3.make_bucket("models")
    for key, body in generate(per_class=6, classes=2, size=48):
        s3.client.put_object(Bucket="photos", Key=f"pv/{key}", Body=body)

    # No export matches Keras within 1e-30: the job used to fail (exit 1, retried); now the gate rejects it.
    args = ["--data", "s3://photos/pv", "--parity-tolerance", "1e-30", "--version", "v1"]
    assert train(cluster, "nightly-1", *args) == 0
    assert "promoted:       no (ONNX parity check failed" in capsys.readouterr().out
    assert "the gate will reject" in caplog.text

    registry = ModelRegistry(open_store("s3://models/reg"), MODEL)
    assert registry.pointer() is None  # the first model, yet not served
    registry.verify("v1")  # kept, complete, for whoever wants to look at the export that disagreed
    contract = json.loads(registry.store.get("versions/v1/model.json"))
    assert contract["parity"]["passed"] is False and contract["parity"]["max_abs_diff"] > 1e-30
    assert contract["gate"]["parity_passed"] is False
    assert (
        "ONNX parity check failed: the exported model disagrees with the trained one"
        in contract["gate"]["reason"]
    )

    assert main(["models", "show", "v1", "--output", "s3://models/reg"]) == 0
    shown = capsys.readouterr().out
    parity_row = next(line for line in shown.splitlines() if line.strip().startswith("parity"))
    assert parity_row.split()[-3:] == [f"{contract['parity']['max_abs_diff']:.2g}", "-", "FAIL"]
    assert events(cluster, "nightly-1")["GateDecision"]["type"] == "Warning"
