"""Decision tables for people: ``leaf-train models show``, the shadow verdict and the job's Events.

The gate and the shadow rollout record their rows as dicts (``gate.rules``); this prints them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .gate import CLASS_RULE, FAIL, NOT_COMPARED, PARITY_RULES, PASS, RULES

_HEADER = ("RULE", "THRESHOLD", "NEW", "CHAMPION", "VERDICT")
_VERDICT_SHOWN = {PASS: "pass", FAIL: "FAIL", NOT_COMPARED: "not compared"}
# events.k8s.io/v1 notes are at most 1 kB (kube.py truncates longer ones; better to choose rows).
EVENT_NOTE_LIMIT = 1024


def _number(rule: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.2g}" if rule in PARITY_RULES else f"{value:.4f}"


def _row_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    rule = str(row.get("rule", "?"))
    name = f"recall {row.get('class')} (n={row.get('support')})" if rule == CLASS_RULE else rule
    verdict = str(row.get("verdict", "?"))
    numbers = _number(rule, row.get("new")), _number(rule, row.get("champion"))
    return name, str(row.get("threshold", "")), *numbers, _VERDICT_SHOWN.get(verdict, verdict)


def format_rules(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The decision table as aligned text lines: RULE, THRESHOLD, NEW, CHAMPION, VERDICT."""
    return columns([_HEADER, *(_row_cells(r) for r in rows)])


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Aligned text lines: every cell but the last padded to its column's width."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        padded = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*padded, row[-1]]))
    return lines


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def failed_rules(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """For each gate rule with a failed row: what it needs to pass and the options that set it."""
    failed = {row.get("rule") for row in rows if row.get("verdict") == FAIL}
    lines = []
    for spec in RULES:
        if spec.name in failed:
            options = ", ".join(flag(o) for o in spec.options) or "fixed"
            lines.append(f"{spec.name} passes when {spec.passes_when.replace('`', '')} ({options})")
    return lines


def event_note(gate: Mapping[str, Any], version: str, limit: int = EVENT_NOTE_LIMIT) -> str:
    """The decision as an Event note: a verdict line, then the rows that fit in ``limit``.

    Every row that is not a class row is kept, then failed classes, then the others; rows left out
    are counted on the last line, which says where the whole table is.
    """
    rows = list(gate.get("rules") or [])
    order = {FAIL: 0, PASS: 1, NOT_COMPARED: 2}
    general = [r for r in rows if r.get("rule") != CLASS_RULE]
    classes = [r for r in rows if r.get("rule") == CLASS_RULE]
    classes.sort(key=lambda r: order.get(r.get("verdict"), 3))
    head = f"{version}: {'passes the gate' if gate.get('promote') else 'REJECTED by the gate'}"
    shown = general + classes
    while True:
        left = len(rows) - len(shown)
        tail = [f"... {left} more class row(s): leaf-train models show {version}"] if left else []
        note = "\n".join([head, *format_rules(shown), *tail])
        if len(note) <= limit or len(shown) <= len(general):
            return note[:limit]
        shown = shown[:-1]
