"""``leaf-train models`` end to end through the real entry point, on S3 over HTTP and a local folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from contractkit import contract as make_contract
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.commands.models import describe, list_rows
from leaf_train.registry import ModelRegistry, VersionNotFoundError

MODEL = "leaf-classifier"


def publish(output: str, version: str, *, accuracy: float, promote: bool, reason: str) -> None:
    gate = {"promote": promote, "reason": reason, "candidate_accuracy": accuracy}
    contract = make_contract(version, name=MODEL, metrics={"accuracy": accuracy}, gate=gate)
    files = {MODEL_FILE: f"onnx-{version}".encode(), CONTRACT_FILE: contract.to_json()}
    ModelRegistry(open_store(output), MODEL).publish(version, files)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["models", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_operator_workflow(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    o = ["--output", output]
    assert run(capsys, "list", *o)[:2] == (
        0,
        f"no versions under {open_store(output).child(MODEL).uri}\n",
    )

    publish(output, "v1", accuracy=0.91, promote=True, reason="first model")
    publish(output, "v2", accuracy=0.62, promote=False, reason="regression against the champion")
    publish(output, "v3", accuracy=0.93, promote=True, reason="no regression")
    open_store(output).put(
        f"{MODEL}/versions/v4/{MODEL_FILE}", b"half", if_none_match=True
    )  # crashed upload

    rc, out, _ = run(capsys, "promote", "v1", *o)
    assert (rc, out) == (0, "promoted v1 (was nothing)\n")
    rc, out, err = run(capsys, "promote", "v2", *o)
    assert (rc, out) == (0, "promoted v2 (was v1)\n")
    assert "overriding the quality gate for v2" in err  # the human override is allowed, and loud

    rc, out, _ = run(capsys, "list", *o)
    table = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rc == 0 and out.splitlines()[0].split() == [
        "VERSION",
        "CREATED",
        "ACCURACY",
        "GATE",
        "STATE",
        "REASON",
    ]
    assert table["v1"][2:5] == ["0.9100", "pass", "promoted-before"]
    assert table["v2"][2:5] == ["0.6200", "FAIL", "served"]
    assert table["v3"][2:5] == ["0.9300", "pass", "-"]
    assert table["v4"][1:5] == ["-", "-", "-", "incomplete"]

    rc, out, _ = run(capsys, "show", "v2", "--format", "json", *o)
    shown = json.loads(out)
    assert rc == 0 and shown["served"] and shown["verified"]
    assert shown["contract"]["gate"]["reason"] == "regression against the champion"
    rc, out, _ = run(capsys, "show", "v2", *o)  # the text view, for people
    assert rc == 0 and out.splitlines()[:3] == [
        "version:     v2 (served)",
        f"uri:         {shown['uri']}",
        "state:       complete, verified",
    ]
    assert "gate:        FAIL: regression against the champion" in out
    assert "provenance:  (not recorded: published before leaf-train recorded it)" in out

    assert run(capsys, "rollback", *o)[:2] == (0, "rolled back to v1 (was v2)\n")

    rc, out, _ = run(capsys, "prune", "--keep-versions", "1", "--dry-run", *o)
    kept = (
        "keeping the newest 1 complete version(s) and incomplete ones written to in the last 24 h"
    )
    assert (rc, out) == (0, f"would delete 1 version(s), {kept}: v2\n")
    assert json.loads(run(capsys, "show", "v2", "--format", "json", *o)[1])[
        "complete"
    ]  # a dry run deletes nothing
    rc, out, _ = run(capsys, "prune", "--keep-versions", "1", *o)
    assert (rc, out) == (0, f"deleted 1 version(s), {kept}: v2\n")
    remaining = {line.split()[0] for line in run(capsys, "list", *o)[1].splitlines()[1:]}
    assert remaining == {"v1", "v3", "v4"}  # served v1, newest v3, in-progress v4


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["show", "v9"], 1, "v9: expected an existing version; found no files"),
        (["promote", "v4"], 1, "expected a complete version; it has no manifest.json"),
        (["promote", "../v1"], 1, "version: expected 1-128 characters"),
        (["rollback"], 1, "expected a pointer to roll back; found none"),
        (
            ["prune", "--keep-versions", "0"],
            2,
            "--keep-versions (LEAF_TRAIN_KEEP_VERSIONS): expected an integer >= 1, received 0",
        ),
        (
            ["prune", "--keep-versions", "many"],
            2,
            "VERSIONS): expected an integer, received 'many'",
        ),
        (
            ["prune", "--incomplete-grace-hours", "0"],
            2,
            "--incomplete-grace-hours (LEAF_TRAIN_INCOMPLETE_GRACE_HOURS): expected a number > 0, received 0.0",
        ),
        (
            ["list", "--model-name", "Bad Name"],
            2,
            "--model-name (LEAF_TRAIN_MODEL_NAME): expected lowercase letters",
        ),
    ],
)
def test_errors_exit_non_zero_with_one_clear_line(
    output: str, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    publish(output, "v1", accuracy=0.9, promote=True, reason="first model")
    open_store(output).put(f"{MODEL}/versions/v4/{MODEL_FILE}", b"half", if_none_match=True)
    rc, out, err = run(capsys, *argv, "--output", output)
    assert rc == code, err
    assert message in err and out == ""


def test_output_is_required(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LEAF_TRAIN_OUTPUT", raising=False)
    rc, _, err = run(capsys, "list")
    assert (
        rc == 2
        and "--output (LEAF_TRAIN_OUTPUT): expected s3://bucket/prefix or a local folder, received nothing"
        in err
    )


def test_installed_command_reads_its_options_from_the_environment(output: str) -> None:
    # A separate process, configured the way the chart configures pods: LEAF_TRAIN_* variables only.
    publish(output, "v1", accuracy=0.9, promote=True, reason="first model")
    env = {**os.environ, "LEAF_TRAIN_OUTPUT": output, "LEAF_TRAIN_MODEL_NAME": MODEL}
    cmd = [sys.executable, "-m", "leaf_train.cli", "models"]
    promoted = subprocess.run(
        [*cmd, "promote", "v1"], env=env, capture_output=True, text=True, timeout=120
    )
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout == "promoted v1 (was nothing)\n"
    listed = subprocess.run([*cmd, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:1] + listed.stdout.splitlines()[1].split()[
        2:5
    ] == [
        "v1",
        "0.9000",
        "pass",
        "served",
    ]


def test_show_prints_the_gate_decision_table(
    output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from leaf_train.gate import GateConfig, decide
    from test_gate_decide import PARITY_OK, make_champion, val_set

    # A real decision: the champion is perfect on red/green/blue, the candidate lost a quarter of "red".
    images, labels = val_set({"red": 4, "green": 3, "blue": 3})
    decision = decide(
        GateConfig(gate_min_class_support=4),
        candidate_accuracy=0.9,
        candidate_recall={"red": 0.75, "green": 1.0, "blue": 1.0},
        parity=PARITY_OK,
        champion=make_champion("perfect"),
        val_images=images,
        val_labels=labels,
    )
    contract = make_contract("v5", ["blue", "green", "red"], name=MODEL, gate=decision.to_dict())
    ModelRegistry(open_store(output), MODEL).publish(
        "v5", {MODEL_FILE: b"onnx", CONTRACT_FILE: contract.to_json()}
    )

    rc, out, _ = run(capsys, "show", "v5", "--output", output)
    assert rc == 0
    lines = out.splitlines()
    gate = lines.index(next(line for line in lines if line.startswith("gate:")))
    assert lines[gate].startswith(
        "gate:        FAIL: regression against the champion"
    )  # 0.9 < 1.0 - 0.02
    assert "recall of class 'red' fell from 1.0000 (champion perfect) to 0.7500" in lines[gate]
    table = [line.split() for line in lines[gate + 1 : gate + 8]]
    assert table[0] == ["RULE", "THRESHOLD", "NEW", "CHAMPION", "VERDICT"]
    assert [row[0] for row in table[1:]] == [
        "parity",
        "min_accuracy",
        "max_regression",
        "recall",
        "recall",
        "recall",
    ]
    assert table[3][-3:] == ["0.9000", "1.0000", "FAIL"]
    by_class = {row[1]: row for row in table[4:]}
    assert by_class["red"][-3:] == ["0.7500", "1.0000", "FAIL"]
    assert " ".join(by_class["green"]).endswith(
        "3 < 4 images: not compared 1.0000 1.0000 not compared"
    )
    # Under the table, what each failed rule needs and the options that set it (gate.RULES).
    assert (
        lines[gate + 8].strip().startswith("max_regression passes when accuracy ≥ the champion's")
    )
    assert lines[gate + 8].endswith("(--max-regression)")
    assert lines[gate + 9].endswith("(--max-class-regression, --gate-min-class-support)")
    assert lines[gate + 10].startswith("provenance:")


def test_list_rows_and_describe_read_the_gate_and_the_pointer_roles(output: str) -> None:
    """What ``models list`` and ``models show --format json`` print, before any formatting."""
    publish(output, "v1", accuracy=0.8, promote=True, reason="first model")
    publish(output, "v2", accuracy=0.5, promote=False, reason="regression")
    registry = ModelRegistry(open_store(output), MODEL)
    registry.promote("v1")

    rows = {r.info.version: r for r in list_rows(registry)}
    assert [r.info.version for r in list_rows(registry)] == ["v1", "v2"]
    v1, v2 = rows["v1"], rows["v2"]
    assert (v1.info.served, v1.info.promoted, v1.gate_promote, v1.accuracy) == (
        True,
        True,
        True,
        0.8,
    )
    assert (v2.info.served, v2.info.promoted, v2.gate_promote, v2.gate_reason) == (
        False,
        False,
        False,
        "regression",
    )

    shown = describe(registry, "v2")
    assert shown["complete"] and shown["verified"] and not shown["served"]
    assert shown["contract"]["gate"]["reason"] == "regression"
    assert {f["name"] for f in shown["manifest"]["files"]} == {MODEL_FILE, CONTRACT_FILE}
    json.dumps(shown)  # the CLI prints it as JSON
    with pytest.raises(VersionNotFoundError):
        describe(registry, "v7")
