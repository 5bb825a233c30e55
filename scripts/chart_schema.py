"""Generate charts/leaf-train/values.schema.json from values.yaml, so the two cannot drift.

values.yaml is the one source (Bitnami's convention, read by a short script of ours rather than
the Node readme-generator):

- ``## @param PATH DESCRIPTION`` names a value and documents it; the ``##`` lines right after it
  (up to the next ``@`` line or the key) continue the description. A ``@param`` on a mapping makes
  it one value (``resources``, probes): its inside is Kubernetes', not the chart's.
- The type comes from the default (``true`` -> boolean, ``3`` -> integer, ``""`` -> string,
  ``[]`` -> array, ``{}`` -> object). A mapping without a ``@param`` is a block of values: an
  object that rejects unknown keys.
- ``## @schema PATH {...}`` (a YAML flow mapping, ``.`` = the root) adds JSON Schema keywords to
  the value at PATH: constraints (``enum``, ``minimum``, ``pattern``, ``required``...) and the type
  where the default cannot say it (``null`` = the program's own default: ``type: [integer, "null"]``).
  Two keys share blocks: ``$def: NAME`` makes the value's schema ``$defs.NAME`` (descriptions stay
  at the value), ``$ref: NAME`` points another value at it; at a ``$ref`` the other keywords add to
  the definition's, and the block's own ``@param`` lines give only descriptions.

Helm validates with the JSON Schema dialect named in ``$schema``: 2020-12, where keywords beside a
``$ref`` apply (draft 7 ignores them, which would drop every description next to a ``$ref``).

Usage: ``make chart-schema`` or ``python scripts/chart_schema.py [--check]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "leaf-train"
VALUES = CHART / "values.yaml"
SCHEMA = CHART / "values.schema.json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
GENERATED = "Generated from values.yaml by scripts/chart_schema.py (make chart-schema); edit values.yaml, not this."

_PARAM = re.compile(r"^\s*## @param (?P<path>\S+)(?: (?P<text>.*))?$")
_SCHEMA = re.compile(r"^\s*## @schema (?P<path>\S+) (?P<body>.+)$")
_MORE = re.compile(r"^\s*##(?: (?P<text>(?!@).*))?$")
_JSON_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


class SchemaError(Exception):
    """values.yaml's @param/@schema lines and its values disagree."""


@dataclass
class Annotations:
    """What values.yaml's comment lines say, by dotted path ('' is the root)."""

    params: dict[str, str] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)


def read_annotations(text: str) -> Annotations:
    """The ``@param`` descriptions (continuation lines joined) and ``@schema`` keywords of values.yaml."""
    notes = Annotations()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := _PARAM.match(line):
            path, words = m["path"], [m["text"] or ""]
            for more in lines[i + 1 :]:
                if not (c := _MORE.match(more)):
                    break
                words.append(c["text"] or "")
            if path in notes.params:
                raise SchemaError(f"@param {path}: expected once; found twice")
            notes.params[path] = " ".join(w.strip() for w in words if w.strip())
        elif m := _SCHEMA.match(line):
            path = "" if m["path"] == "." else m["path"]
            body = yaml.safe_load(m["body"])
            if not isinstance(body, dict):
                raise SchemaError(
                    f"@schema {m['path']}: expected a YAML flow mapping; received {m['body']!r}"
                )
            if path in notes.schemas:
                raise SchemaError(f"@schema {m['path']}: expected once; found twice")
            notes.schemas[path] = body
    return notes


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES[type(value)]


def _fits(value: Any, types: str | list[str]) -> bool:
    kind, types = json_type(value), types if isinstance(types, list) else [types]
    return kind in types or (kind == "integer" and "number" in types)


def _with_refs(node: Any) -> Any:
    """A ``@schema`` body as JSON Schema: ``$ref: NAME`` -> ``#/$defs/NAME``, YAML nulls in ``type`` -> "null"."""
    if isinstance(node, list):
        return [_with_refs(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _with_refs(v) for k, v in node.items()}
    if isinstance(out.get("$ref"), str) and not out["$ref"].startswith("#"):
        out["$ref"] = f"#/$defs/{out['$ref']}"
    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        types = ["null" if t is None else t for t in types]
        out["type"] = types if len(types) > 1 else types[0]
    return out


class _Builder:
    def __init__(self, notes: Annotations) -> None:
        self.notes = notes
        self.defs: dict[str, dict[str, Any]] = {}
        self.refs: list[
            tuple[str, dict[str, Any], Any]
        ] = []  # (path, schema, default): checked once all defs exist
        self.seen: set[str] = set()

    def node(self, path: str, value: Any, under_ref: bool = False) -> dict[str, Any]:
        """The schema of the value at ``path`` (default ``value``); children of a $ref block keep only descriptions."""
        self.seen.add(path)
        where = path or "."
        note = dict(self.notes.schemas.get(path, {}))
        if under_ref and note:
            raise SchemaError(
                f"@schema {where}: inside a $ref block; put its keywords on the block's $def"
            )
        documented = path in self.notes.params
        block = isinstance(value, dict) and bool(value) and not documented
        if path and not block and not documented:
            raise SchemaError(f"{where}: expected a ## @param line documenting it; found none")
        ref, define = note.pop("$ref", None), note.pop("$def", None)
        if ref and define:
            raise SchemaError(f"@schema {where}: expected $ref or $def; found both")
        schema: dict[str, Any] = {"$ref": f"#/$defs/{ref}"} if ref else {}
        if not ref and "type" not in note:
            if value is None:
                raise SchemaError(
                    f"{where}: the default is null; expected a type in its @schema line"
                )
            schema["type"] = json_type(value)
        if documented:
            schema["description"] = self.notes.params[path]
        schema.update(_with_refs(note))
        if block:
            children = {
                k: self.node(f"{path}.{k}" if path else k, v, under_ref or bool(ref))
                for k, v in value.items()
            }
            if ref:
                schema["properties"] = {
                    k: d for k, c in children.items() if (d := _descriptions(c))
                }
            else:
                schema.setdefault("additionalProperties", False)
                schema["properties"] = children
        elif isinstance(value, list) and value and not ref and "items" not in schema:
            kinds = sorted({json_type(v) for v in value})
            schema["items"] = {"type": kinds[0] if len(kinds) == 1 else kinds}
        if ref:
            self.refs.append((where, _without_descriptions(schema), value))
            return schema
        _check_default(where, value, schema)
        if define:
            if define in self.defs:
                raise SchemaError(f"@schema {where}: $def {define}: expected once; found twice")
            self.defs[define] = _without_descriptions(schema)
            return {"$ref": f"#/$defs/{define}", **_descriptions(schema)}
        return schema


def _check_default(where: str, value: Any, schema: dict[str, Any]) -> None:
    types = schema.get("type")
    if types is None:
        return
    if not _fits(value, types):
        raise SchemaError(
            f"{where}: the default {value!r} is {json_type(value)}; the @schema type is {types}"
        )
    for member in schema.get("enum", []):
        if not _fits(member, types):  # YAML reads on/off/yes/no as booleans: quote them
            raise SchemaError(
                f"{where}: enum member {member!r} is {json_type(member)}, not {types} (quote it?)"
            )


def _descriptions(schema: dict[str, Any]) -> dict[str, Any]:
    """Only the descriptions of a schema and its properties (what stays beside a $ref)."""
    out = {"description": schema["description"]} if "description" in schema else {}
    children = {k: d for k, v in schema.get("properties", {}).items() if (d := _descriptions(v))}
    if children:
        out["properties"] = children
    return out


def _without_descriptions(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in schema.items() if k not in ("description", "properties")}
    if "properties" in schema:
        out["properties"] = {k: _without_descriptions(v) for k, v in schema["properties"].items()}
    return out


def _conforms(value: Any, schema: dict[str, Any], defs: dict[str, dict[str, Any]]) -> list[str]:
    """Type and key mismatches of ``value`` against ``schema`` (enough to check a default against a $def)."""
    while (
        "$ref" in schema
    ):  # keywords beside a $ref narrow the definition (only `type` does so here)
        extra = {k: v for k, v in schema.items() if k not in ("$ref", "properties")}
        schema = {**defs[schema["$ref"].removeprefix("#/$defs/")], **extra}
    problems = []
    if "type" in schema and not _fits(value, schema["type"]):
        return [f"{json_type(value)}, want {schema['type']}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k)
            sub = sub or next(
                (s for p, s in schema.get("patternProperties", {}).items() if re.search(p, k)), None
            )
            if sub is None and schema.get("additionalProperties") is False:
                problems.append(f"unknown key {k}")
            problems += [f"{k}: {p}" for p in _conforms(v, sub, defs)] if sub else []
    return problems


def build(values_text: str) -> dict[str, Any]:
    """The chart's values schema, from the text of values.yaml."""
    values = yaml.safe_load(values_text)
    notes = read_annotations(values_text)
    builder = _Builder(notes)
    root = builder.node("", values)
    unknown = sorted((notes.params.keys() | notes.schemas.keys()) - builder.seen)
    if unknown:
        raise SchemaError(
            f"@param/@schema lines name no value of values.yaml: {', '.join(unknown)}"
        )
    for path, schema, default in builder.refs:
        name = schema["$ref"].removeprefix("#/$defs/")
        if name not in builder.defs:
            raise SchemaError(f"{path}: $ref {name}: no value has $def {name}")
        if problems := _conforms(default, schema, builder.defs):
            raise SchemaError(
                f"{path}: the default does not fit $def {name}: {'; '.join(problems)}"
            )
    root.pop("description", None)
    return {
        "$schema": DIALECT,
        "$comment": GENERATED,
        "title": "leaf-train chart values",
        **root,
        "$defs": dict(sorted(builder.defs.items())),
    }


WIDTH = 120  # the project's line length (ruff)


def dumps(schema: dict[str, Any]) -> str:
    """JSON with two-space indents; a value that fits on its line (a leaf's schema, an enum) stays on it."""

    def emit(node: Any, indent: str, lead: int) -> str:
        flat = json.dumps(node, ensure_ascii=False, separators=(", ", ": "))
        if lead + len(flat) <= WIDTH or not isinstance(node, (dict, list)) or not node:
            return flat
        inner = indent + "  "
        if isinstance(node, dict):
            items = [f"{inner}{json.dumps(k)}: " for k in node]
            items = [
                head + emit(v, inner, len(head) + 1)
                for head, v in zip(items, node.values(), strict=True)
            ]
            return "{\n" + ",\n".join(items) + f"\n{indent}}}"
        return (
            "[\n"
            + ",\n".join(inner + emit(v, inner, len(inner) + 1) for v in node)
            + f"\n{indent}]"
        )

    return emit(schema, "", 0) + "\n"


def generate(values_path: Path = VALUES) -> str:
    return dumps(build(values_path.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if values.schema.json differs, write nothing"
    )
    args = parser.parse_args()
    try:
        wanted = generate()
    except SchemaError as e:
        print(f"chart_schema.py: {VALUES.relative_to(ROOT)}: {e}", file=sys.stderr)
        return 2
    if args.check:
        if not SCHEMA.exists() or SCHEMA.read_text() != wanted:
            print(f"{SCHEMA.relative_to(ROOT)} is stale: run make chart-schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(wanted)
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
