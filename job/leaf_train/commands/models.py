"""``leaf-train models``: the operators' view of the registry (list, show, promote, prune...).

Promotion and rollback go through the same compare-and-swap as the training job, so an
operator racing a scheduled retrain cannot silently overwrite it: one of them gets a clear
conflict. ``promote`` is also the human override of the quality gate: it refuses only versions
that are incomplete or fail verification, and warns when the gate had said no.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from leaf_common.config import add_arguments, option, option_error, resolve
from leaf_common.registry import MODEL_NAME_RULE, is_model_name
from leaf_common.storage import open_store

from ..config import ENV_PREFIX, TrainConfig
from ..registry import (
    IncompleteVersionError,
    ModelRegistry,
    RetentionConfig,
    VersionInfo,
    VersionNotFoundError,
)

log = logging.getLogger(__name__)

# Same flag, env variable, default and help as `leaf-train train`, declared once there.
_TRAIN = {f.name: f for f in dataclasses.fields(TrainConfig)}


@dataclass
class ModelsConfig:
    output: str = option(_TRAIN["output"].default, _TRAIN["output"].metadata["help"])
    model_name: str = option(_TRAIN["model_name"].default, _TRAIN["model_name"].metadata["help"])

    def validate(self) -> None:
        if not self.output:
            raise option_error(
                ENV_PREFIX, "output", "s3://bucket/prefix or a local folder", "nothing"
            )
        if not is_model_name(self.model_name):
            raise option_error(ENV_PREFIX, "model_name", MODEL_NAME_RULE, repr(self.model_name))


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models`` and its sub-commands to the ``leaf-train`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    add_arguments(common.add_argument_group("registry"), ModelsConfig, ENV_PREFIX)
    p = sub.add_parser("models", help="list, show, promote, roll back and prune model versions")
    actions = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    helps = {
        "list": "every version with accuracy, gate decision and state",
        "show": "one version: state, metrics, gate, provenance (seed, lock, packages)",
        "promote": "serve VERSION (compare-and-swap on latest.json)",
        "rollback": "serve the previously promoted version again",
        "prune": "delete old versions (never the served one)",
        "verdict": "decide on the shadow candidate from mirrored traffic: promote, reject or wait",
    }
    add = {name: actions.add_parser(name, parents=[common], help=h) for name, h in helps.items()}
    add["list"].set_defaults(func=cmd_list)
    a = add["show"]
    a.add_argument("version")
    formats = "text (for people) or json (manifest, contract)"
    a.add_argument("--format", choices=("text", "json"), default="text", help=formats)
    a.set_defaults(func=cmd_show)
    add["promote"].add_argument("version")
    add["promote"].set_defaults(func=cmd_promote)
    add["rollback"].set_defaults(func=cmd_rollback)
    a = add["prune"]
    add_arguments(a.add_argument_group("retention"), RetentionConfig, ENV_PREFIX)
    dry_run = "print what would be deleted, delete nothing"
    a.add_argument("--dry-run", action="store_true", help=dry_run)
    a.set_defaults(func=cmd_prune)
    a = add["verdict"]
    from ..kube import KubeConfig
    from ..rollout import RolloutConfig

    add_arguments(a.add_argument_group("shadow verdict"), RolloutConfig, ENV_PREFIX)
    add_arguments(a.add_argument_group("kubernetes"), KubeConfig, ENV_PREFIX)
    a.add_argument("--dry-run", action="store_true", help="print the verdict, change nothing")
    a.set_defaults(func=cmd_verdict)


def _registry(args: argparse.Namespace) -> ModelRegistry:
    given = {k: getattr(args, k, None) for k in ("output", "model_name")}
    cfg = resolve(ModelsConfig, ENV_PREFIX, given)
    return ModelRegistry(open_store(cfg.output), cfg.model_name)


def _fmt_accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_gate(value: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[value]


@dataclass(frozen=True)
class ListRow:
    """One row of ``models list``: the registry's facts and what the version's model.json says."""

    info: VersionInfo
    accuracy: float | None  # the gate's candidate accuracy, else metrics val_accuracy / accuracy
    gate_promote: bool | None  # the gate's decision recorded in model.json; None when none recorded
    gate_reason: str


def list_rows(registry: ModelRegistry) -> list[ListRow]:
    """Every version, in ``list_versions`` order, with its recorded accuracy and gate decision."""
    rows = []
    for info in registry.list_versions():
        contract = registry.contract_dict(info.version) or {}
        gate = contract.get("gate") or {}
        promote = bool(gate["promote"]) if "promote" in gate else None
        rows.append(ListRow(info, _accuracy_of(contract), promote, str(gate.get("reason", ""))))
    return rows


def _accuracy_of(contract: dict[str, Any]) -> float | None:
    gate = contract.get("gate") or {}
    metrics = contract.get("metrics") or {}
    recorded = gate.get("candidate_accuracy"), metrics.get("val_accuracy"), metrics.get("accuracy")
    for value in recorded:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def format_table(rows: list[ListRow]) -> str:
    """Aligned columns: VERSION, CREATED, ACCURACY, GATE, STATE, REASON (gate reason, shortened)."""
    header = ("VERSION", "CREATED", "ACCURACY", "GATE", "STATE", "REASON")
    from ..views import columns

    lines = [header]
    for r in rows:
        v = r.info
        reason = r.gate_reason if len(r.gate_reason) <= 60 else r.gate_reason[:57] + "..."
        numbers = _fmt_accuracy(r.accuracy), _fmt_gate(r.gate_promote)
        lines.append((v.version, v.created_at or "-", *numbers, _state(v), reason))
    return "\n".join(columns(lines)).rstrip()


def _state(v: VersionInfo) -> str:
    if not v.complete:
        return "deleting" if v.deleting else "incomplete"
    roles = ((v.served, "served"), (v.candidate, "candidate"), (v.promoted, "promoted-before"))
    return next((name for held, name in roles if held), "-")


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = list_rows(registry)
    print(format_table(rows) if rows else f"no versions under {registry.uri()}")
    return 0


def describe(registry: ModelRegistry, version: str) -> dict[str, Any]:
    """Everything known about one version: state, manifest (verified), contract, pointer role.

    Raises:
        VersionNotFoundError: nothing exists under the version's folder.
    """
    files = [{"name": o.key, "size": o.size} for o in registry.files(version)]
    if not files:
        missing = "expected an existing version; found no files"
        raise VersionNotFoundError(f"{registry.uri(version)}: {missing}")
    found = registry.pointer()
    pointer = found.pointer if found else None
    result: dict[str, Any] = {
        "name": registry.model_name,
        "version": version,
        "uri": registry.uri(version),
        "served": pointer is not None and pointer.version == version,
        "promoted": pointer is not None and version in (pointer.version, *pointer.history),
        "files": files,
    }
    try:
        manifest = registry.verify(version)
        result.update(complete=True, verified=True, manifest=json.loads(manifest.to_json()))
    except IncompleteVersionError as e:
        result.update(complete=registry.has_manifest(version), verified=False, problem=str(e))
    result["contract"] = registry.contract_dict(version)
    result["claimed_by"] = registry.claim_owner(version)
    from ..rollout import recorded

    shadow = registry.candidate()
    result["candidate"] = shadow is not None and shadow.candidate.version == version
    result["shadow_verdict"] = recorded(registry, version)
    return result


def format_show(shown: dict) -> str:
    """The text view of :func:`describe`: what an operator asks first, then what produced it."""
    contract = shown.get("contract") or {}
    metrics, gate = contract.get("metrics") or {}, contract.get("gate") or {}
    roles = ("served", "served"), ("candidate", "shadow candidate"), ("promoted", "promoted before")
    role = next((name for key, name in roles if shown.get(key)), "not promoted")
    problem = f"NOT servable: {shown.get('problem', '?')}"
    state = "complete, verified" if shown.get("verified") else problem
    created_at, code_version = contract.get("created_at"), contract.get("code_version")
    lines = [
        f"version:     {shown['version']} ({role})",
        f"uri:         {shown['uri']}",
        f"state:       {state}",
        f"created:     {created_at or '-'} by {code_version or '-'}",
    ]
    if metrics:
        names = "accuracy", "top3_accuracy", "macro_f1"
        acc, top3, f1 = (_fmt_accuracy(metrics.get(k)) for k in names)
        images = metrics.get("num_images", "?")
        more = f"top-3 {top3}, macro F1 {f1}, {images} validation images"
        lines.append(f"accuracy:    {acc} ({more})")
    lines += format_trust(contract)
    lines += _format_gate(gate)
    if shown.get("shadow_verdict"):
        verdict = format_verdict(shown["shadow_verdict"])
        lines.append("shadow:      " + verdict.replace("\n", "\n  "))
    lines += _format_provenance(contract.get("provenance") or {})
    lines.append("files:")
    lines += [f"  {f['name']:<24} {f['size']:>12,} bytes" for f in shown["files"]]
    return "\n".join(lines)


def _format_gate(gate: dict) -> list[str]:
    """The decision, its table, and what each failed rule needs (``gate.RULES``)."""
    if not gate:
        return []
    lines = [f"gate:        {_fmt_gate(gate.get('promote'))}: {gate.get('reason', '')}"]
    if gate.get("rules"):  # versions published before the decision table have only the reason
        from ..views import failed_rules, format_rules  # the gate's numpy: only when shown

        lines += [f"  {line}" for line in format_rules(gate["rules"])]
        lines += [f"  {line}" for line in failed_rules(gate["rules"])]
    return lines


def _pct(value: object) -> str:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.1%}" if number else "-"


def format_trust(record: dict) -> list[str]:
    """Calibration before/after and the OOD operating point of ``model.json`` or ``report.json``."""
    cal, ood = record.get("calibration") or {}, record.get("ood") or {}
    if not cal and not ood:
        return ["calibration: (not recorded: published before leaf-train calibrated)"]
    lines = []
    if cal:
        before, after = cal.get("before") or {}, cal.get("after") or {}
        num = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        lines.append(
            f"calibration: {cal.get('method')} T={num(cal.get('temperature'))}; held-out ECE "
            f"{num(before.get('ece'))} -> {num(after.get('ece'))}, NLL {num(before.get('nll'))} -> "
            f"{num(after.get('nll'))} ({cal.get('report_images', '?')} report images, fitted on "
            f"{cal.get('fit_images', '?')})"
        )
    if ood:
        threshold = ood.get("threshold")
        shown = f"{threshold:.4g}" if isinstance(threshold, (int, float)) else "-"
        lines.append(
            f"not a leaf:  {ood.get('method')} score > {shown}; abstains on "
            f"{_pct(ood.get('heldout_abstain_rate'))} of {ood.get('heldout_images', '?')} held-out "
            f"leaves, {_pct(ood.get('ood_set_abstain_rate'))} of "
            f"{ood.get('ood_set_images', '?')} out-of-distribution images"
        )
    return lines


def _format_provenance(prov: dict) -> list[str]:
    if not prov:
        return ["provenance:  (not recorded: published before leaf-train recorded it)"]
    lock = prov.get("lock")
    if lock is None:
        lock_line = "none (installed without a lock)"
    else:
        matched = (
            "environment matched it"
            if lock.get("environment_matches")
            else (
                f"environment differed in {lock.get('mismatch_count', '?')} package(s): "
                + "; ".join(lock.get("mismatches", [])[:3])
            )
        )
        lock_line = f"{lock.get('profile') or '?'} sha256 {lock.get('sha256', '?')} ({matched})"
    packages = ", ".join(f"{k} {v or '-'}" for k, v in (prov.get("packages") or {}).items())
    determinism = "on" if prov.get("deterministic") else "off"
    option = prov.get("deterministic_option")
    code = prov.get("code") or {}
    return [
        "provenance:",
        f"  seed:      {prov.get('seed')} (deterministic ops {determinism}, option {option})",
        f"  weights:   sha256 {prov.get('weights_sha256', '-')}",
        f"  code:      leaf-train {code.get('version', '-')} sha256 {code.get('sha256', '-')}",
        f"  lock:      {lock_line}",
        f"  python:    {prov.get('python', '-')}",
        f"  packages:  {packages or '-'}",
    ]


def cmd_show(args: argparse.Namespace) -> int:
    shown = describe(_registry(args), args.version)
    as_json = args.format == "json"
    print(json.dumps(shown, indent=2, sort_keys=True) if as_json else format_show(shown))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    gate = (registry.contract_dict(args.version) or {}).get("gate") or {}
    if gate.get("promote") is False:
        said = gate.get("reason", "?")
        log.warning("overriding the quality gate for %s, which said: %s", args.version, said)
    before = registry.pointer()
    pointer = registry.promote(args.version)
    print(f"promoted {pointer.version} (was {before.version if before else 'nothing'})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = _registry(args)
    before = registry.pointer()
    pointer = registry.rollback()
    print(f"rolled back to {pointer.version} (was {before.version if before else 'nothing'})")
    return 0


def cmd_verdict(args: argparse.Namespace) -> int:
    return verdict_from_args(args, dry_run=args.dry_run)


def verdict_from_args(args: argparse.Namespace, *, dry_run: bool) -> int:
    """``models verdict``, ``train --verdict-only``: decide, act unless ``dry_run``, print it."""
    from ..kube import KubeConfig, KubeReporter
    from ..rollout import WAIT, RolloutConfig, apply, evaluate

    rollout_cfg = resolve(RolloutConfig, ENV_PREFIX, args)
    registry = _registry(args)
    verdict = evaluate(registry, rollout_cfg)
    if verdict is None:
        print(f"no shadow candidate under {registry.uri()}")
        return 0
    if not dry_run and verdict.decision != WAIT:
        apply(registry, verdict, KubeReporter.from_config(resolve(KubeConfig, ENV_PREFIX, args)))
    print(format_verdict(verdict.to_dict(), dry_run=dry_run))
    return 0


def format_verdict(verdict: dict[str, Any], *, dry_run: bool = False) -> str:
    """A shadow verdict for people: the decision and why, the evidence, and the rules table."""
    from ..views import format_rules

    decision = str(verdict.get("decision", "?"))
    head = f"{verdict.get('candidate')} against {verdict.get('champion')}: {decision.upper()}"
    head += " (dry run: nothing changed)" if dry_run else ""
    lines = [head, f"  why:      {verdict.get('reason', '')}"]
    ev = verdict.get("evidence") or {}
    confidence = ev.get("champion_mean_confidence"), ev.get("candidate_mean_confidence")
    if ev:
        lines.append(
            f"  evidence: {ev.get('mirrored', 0)} mirrored, {ev.get('dropped', 0)} dropped, "
            f"agreement {ev.get('agreement')}, mean confidence {confidence[0]} -> {confidence[1]}, "
            f"{ev.get('reviewed', 0)} reviewed photos"
        )
    lines += [f"  {line}" for line in format_rules(verdict.get("rules") or [])]
    return "\n".join(lines)


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = resolve(RetentionConfig, ENV_PREFIX, args)
    keep, grace_s = cfg.keep_versions, cfg.incomplete_grace_hours * 3600
    registry = _registry(args)
    plan = registry.retention_plan if args.dry_run else registry.apply_retention
    doomed = plan(keep, incomplete_grace_s=grace_s)
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{verb} {len(doomed)} version(s), keeping the newest {keep} complete version(s) and "
        f"incomplete ones written to in the last {cfg.incomplete_grace_hours:g} h: "
        f"{', '.join(doomed) or '-'}"
    )
    return 0
