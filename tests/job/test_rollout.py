"""Shadow rollout, job side: the candidate pointer, the verdict's rules, and ``models verdict`` end to end.

The registry runs on S3 over HTTP (moto) and on a local folder; the statistics are the files serving
writes (``leaf_common.shadow.write_stats``), so the verdict reads exactly what a pod would leave.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from contractkit import contract as make_contract
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.shadow import (
    CANDIDATE_FILE,
    Candidate,
    ReviewedAnswer,
    ShadowStats,
    write_reviewed,
    write_stats,
)
from leaf_common.storage import open_store
from leaf_train.cli import main
from leaf_train.publish import finish
from leaf_train.registry import ModelRegistry, ModelRegistryError, PromotionConflict
from leaf_train.rollout import PROMOTE, REJECT, WAIT, RolloutConfig, decide, evaluate, recorded

MODEL = "leaf-classifier"
LABELS = ["healthy", "rust", "blight"]
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


class Kube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def event(self, reason: str, note: str, type: str = "Normal") -> bool:
        self.events.append((reason, note))
        return True

    def rollout(self, deployment: str = "", version: str = "") -> bool:
        return False


def publish(
    registry: ModelRegistry, version: str, *, champion: str | None, promote: bool = True
) -> None:
    gate = {"promote": promote, "reason": "test", "champion_version": champion}
    contract = make_contract(version, LABELS, name=MODEL, metrics={"accuracy": 0.9}, gate=gate)
    registry.publish(
        version, {MODEL_FILE: f"onnx-{version}".encode(), CONTRACT_FILE: contract.to_json()}
    )


def traffic(
    candidate: str, champion: str, per_class: dict[str, tuple[int, int]], pod: str = "a"
) -> ShadowStats:
    """Statistics of ``n`` mirrored requests per champion class, ``agreed`` of which the candidate agreed on."""
    stats = ShadowStats(candidate, champion, pod=pod)
    for label, (n, agreed) in per_class.items():
        other = next(x for x in LABELS if x != label)
        for i in range(n):
            stats.record((label, 0.9), (label if i < agreed else other, 0.8))
    return stats


def candidate(version: str = "v2", champion: str = "v1", hours_ago: float = 1.0) -> Candidate:
    when = (NOW - timedelta(hours=hours_ago)).isoformat().replace("+00:00", "Z")
    return Candidate(version, champion, when, MODEL)


CFG = RolloutConfig(shadow_min_requests=300, shadow_min_class_requests=30, shadow_max_age_hours=48)
EQUAL = {"healthy": (400, 392), "rust": (100, 97), "blight": (90, 87)}


@pytest.mark.parametrize(
    ("served", "per_class", "reviewed", "hours_ago", "decision", "failed_rule", "why"),
    [
        pytest.param(
            "v1",
            EQUAL,
            [],
            1,
            PROMOTE,
            None,
            "agrees with v1 on 0.9763",
            id="equal-quality-promotes",
        ),
        # One class lost: 'blight' photos get another answer 40 % of the time; overall agreement stays 0.9271.
        pytest.param(
            "v1",
            EQUAL | {"blight": (90, 54)},
            [],
            1,
            REJECT,
            "class agreement",
            "v1 calls 'blight'",
            id="lost-class",
        ),
        pytest.param(
            "v1",
            {"healthy": (400, 340)},
            [],
            1,
            REJECT,
            "agreement",
            "0.8500, below",
            id="disagreement",
        ),
        pytest.param(
            "v1",
            {"healthy": (50, 50)},
            [],
            1,
            WAIT,
            None,
            "50 of 300 mirrored",
            id="too-little-waits",
        ),
        pytest.param(
            "v1",
            {"healthy": (50, 50)},
            [],
            49,
            REJECT,
            "mirrored requests",
            "expired",
            id="expired",
        ),
        pytest.param(
            "v0",
            EQUAL,
            [],
            1,
            REJECT,
            "champion unchanged",
            "v0 is served now",
            id="champion-changed",
        ),
        pytest.param(
            "v1",
            EQUAL,
            [("rust", "rust", "healthy")] * 15 + [("rust", "rust", "rust")] * 10,
            1,
            REJECT,
            "reviewed accuracy",
            "right on 0.4000, the champion on 1.0000",
            id="worse-on-reviewed-photos",
        ),  # fmt: skip
        pytest.param(
            "v1",
            EQUAL,
            [("rust", "rust", "healthy")] * 5,
            1,
            PROMOTE,
            None,
            "agrees",
            id="too-few-reviews-ignored",
        ),
    ],
)
def test_verdict_rules(served, per_class, reviewed, hours_ago, decision, failed_rule, why) -> None:
    stats = traffic("v2", "v1", per_class)
    verdict = decide(CFG, candidate(hours_ago=hours_ago), served, stats, reviewed, now=NOW)
    assert (verdict.decision, why in verdict.reason) == (decision, True), verdict.reason
    failed = [r["rule"] for r in verdict.rules if r["verdict"] == "fail"]
    assert failed == ([failed_rule] if decision == REJECT else []) or decision == WAIT


def test_lost_class_row_names_the_class_and_its_numbers() -> None:
    stats = traffic("v2", "v1", EQUAL | {"blight": (90, 54)})
    verdict = decide(CFG, candidate(), "v1", stats, [], now=NOW)
    (row,) = [r for r in verdict.rules if r.get("class") == "blight"]
    assert (row["verdict"], row["support"], round(row["new"], 4)) == ("fail", 90, 0.6)
    assert "'blight'" in verdict.reason and "0.6000" in verdict.reason


def test_stats_from_several_pods_add_up() -> None:
    a = traffic("v2", "v1", {"healthy": (10, 9)}, pod="a")
    b = traffic("v2", "v1", {"healthy": (5, 5), "rust": (4, 0)}, pod="b")
    total = a.merge(b)
    assert (total.mirrored, total.agreed, total.per_class) == (
        19,
        14,
        {"healthy": [15, 14], "rust": [4, 0]},
    )
    with pytest.raises(Exception, match="expected candidate v2 against champion v1"):
        a.merge(traffic("v3", "v1", {}))


def test_candidate_pointer_moves_by_compare_and_swap(output: str) -> None:
    registry = ModelRegistry(open_store(output), MODEL)
    publish(registry, "v1", champion=None)
    publish(registry, "v2", champion="v1")
    publish(registry, "v3", champion="v1")
    with pytest.raises(ModelRegistryError, match="nothing is promoted yet"):
        registry.propose("v2")
    registry.promote("v1")
    with pytest.raises(ModelRegistryError, match="it is served"):
        registry.propose("v1")
    registry.propose("v2")
    stale = registry.candidate()
    registry.propose("v3")  # a newer candidate replaces the older one
    assert registry.candidate().candidate.version == "v3"
    assert registry.withdraw("v2") is False  # no longer the candidate: nothing to withdraw
    with pytest.raises(PromotionConflict):
        registry._swap_candidate(Candidate(None, "v1", "now"), stale.etag)  # a stale writer loses
    rows = {r.version: r for r in registry.list_versions()}
    assert (rows["v3"].candidate, rows["v2"].candidate, rows["v1"].served) == (True, False, True)
    assert registry.retention_plan(1) == [
        "v2"
    ]  # the candidate is protected like the served version
    assert registry.withdraw("v3") is True
    assert registry.candidate().candidate.version is None
    assert json.loads(open_store(output).get(f"{MODEL}/{CANDIDATE_FILE}"))["version"] is None


def test_shadow_rollout_proposes_instead_of_promoting(output: str) -> None:
    registry, kube = ModelRegistry(open_store(output), MODEL), Kube()
    publish(registry, "v1", champion=None)
    assert (
        finish(registry, "v1", kube, keep=5, rollout="shadow") is True
    )  # nothing to shadow: served directly
    publish(registry, "v2", champion="v1")
    assert finish(registry, "v2", kube, keep=5, rollout="shadow") is False
    assert registry.pointer().version == "v1" and registry.candidate().candidate.version == "v2"
    assert (
        finish(registry, "v2", kube, keep=5, rollout="shadow") is False
    )  # a retried run changes nothing
    assert [r for r, _ in kube.events].count("ShadowCandidate") == 1
    publish(registry, "v3", champion="v1", promote=False)
    assert (
        finish(registry, "v3", kube, keep=5, rollout="shadow") is False
    )  # refused by the gate: not proposed
    assert registry.candidate().candidate.version == "v2"


def shadowing(output: str) -> tuple[object, ModelRegistry]:
    """The registry at ``output`` with v1 served and v2 proposed as its shadow candidate."""
    store = open_store(output)
    registry = ModelRegistry(store, MODEL)
    publish(registry, "v1", champion=None)
    registry.promote("v1")
    publish(registry, "v2", champion="v1")
    registry.propose("v2")
    return store, registry


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(argv))
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("entry", [("models", "verdict"), ("train", "--verdict-only")])
def test_verdict_command_promotes_on_evidence(output: str, capsys, entry) -> None:
    store, registry = shadowing(output)
    model_store = store.child(MODEL)
    o = ["--output", output, "--shadow-min-requests", "300", "--kube-integration", "off"]

    write_stats(model_store, traffic("v2", "v1", {"healthy": (100, 98)}, pod="pod-a"))
    rc, out = run_cli(capsys, *entry, *o)
    assert rc == 0 and out.startswith("v2 against v1: WAIT") and "100 of 300 mirrored" in out
    assert registry.pointer().version == "v1" and registry.candidate().candidate.version == "v2"

    write_stats(
        model_store, traffic("v2", "v1", {"rust": (120, 118), "blight": (100, 97)}, pod="pod-b")
    )
    write_reviewed(model_store, "v2", ReviewedAnswer("capture-x", "rust", "rust", "rust"))
    rc, out = run_cli(capsys, "models", "verdict", "--dry-run", *o)
    assert rc == 0 and out.startswith("v2 against v1: PROMOTE (dry run: nothing changed)")
    assert registry.pointer().version == "v1"

    rc, out = run_cli(capsys, *entry, *o)
    assert rc == 0 and out.startswith("v2 against v1: PROMOTE") and "320 mirrored" in out
    assert registry.pointer().version == "v2" and registry.candidate().candidate.version is None
    assert recorded(registry, "v2")["decision"] == PROMOTE
    rc, out = run_cli(capsys, "models", "show", "v2", "--output", output)
    assert "version:     v2 (served)" in out and "shadow:      v2 against v1: PROMOTE" in out
    rc, out = run_cli(capsys, *entry, *o)
    assert (rc, out) == (0, f"no shadow candidate under {registry.uri()}\n")


def test_lost_class_is_rejected_and_the_champion_keeps_serving(output: str, capsys) -> None:
    store, registry = shadowing(output)
    write_stats(store.child(MODEL), traffic("v2", "v1", EQUAL | {"blight": (90, 54)}))
    rc, out = run_cli(capsys, "models", "verdict", "--output", output, "--kube-integration", "off")
    assert rc == 0 and out.startswith("v2 against v1: REJECT") and "'blight'" in out
    assert registry.pointer().version == "v1" and registry.candidate().candidate.version is None
    assert recorded(registry, "v2")["rules"]  # the table is kept beside the version
    assert evaluate(registry, RolloutConfig()) is None
