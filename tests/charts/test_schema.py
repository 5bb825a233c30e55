"""values.schema.json is generated from values.yaml (scripts/chart_schema.py): the two must agree.

The helm-level half (bad values fail ``helm template``/``helm lint`` with a message naming them) is in
test_chart.py and test_multiworker.py; here: the file is what the script writes, every value has its
``## @param`` line and every line its value, the defaults fit the schema, and the script refuses
values.yaml files it cannot turn into a faithful schema.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "leaf-train"
SCRIPT = ROOT / "scripts" / "chart_schema.py"


def load_script():
    spec = importlib.util.spec_from_file_location("chart_schema", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chart_schema", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chart_schema = load_script()


def committed_schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def params() -> dict[str, str]:
    """``## @param`` path -> description (with its continuation ``##`` lines), read independently of the script."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    found = {}
    for i, line in enumerate(lines):
        if m := re.match(r"\s*## @param (\S+) (.*)$", line):
            words = [m[2]]
            for more in lines[i + 1 :]:
                if not (c := re.match(r"\s*## (?!@)(.*)$", more)):
                    break
                words.append(c[1])
            found[m[1]] = " ".join(w.strip() for w in words)
    return found


def value_paths(node: Any, documented: set[str], prefix: str = "") -> list[str]:
    """Dotted paths of the values: a mapping with a ``@param`` is one value, any other non-empty one a block."""
    if isinstance(node, dict) and node and prefix not in documented:
        return [
            p
            for k, v in node.items()
            for p in value_paths(v, documented, f"{prefix}.{k}" if prefix else k)
        ]
    return [prefix]


def schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = node.get("properties", {}).get(part, {})
    return node


def test_committed_schema_is_what_the_script_generates():
    assert (CHART / "values.schema.json").read_text() == chart_schema.generate(), (
        "charts/leaf-train/values.schema.json is stale or edited by hand: run make chart-schema"
    )


def test_every_value_has_a_param_line_and_every_param_line_a_value():
    documented = set(params())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    paths = set(value_paths(values, documented))
    assert sorted(paths - documented) == [], "values without a ## @param line"
    assert sorted(documented - paths) == [], "## @param lines naming no value"


def test_every_description_is_its_param_line():
    schema = committed_schema()
    differ = {p: d for p, d in params().items() if schema_at(schema, p).get("description") != d}
    assert differ == {}


def test_the_defaults_fit_the_schema():
    """Keys and types agree, checked by a validator of the schema's own dialect (helm lint checks the ci sets)."""
    validator = jsonschema.Draft202012Validator(committed_schema())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values)
    ]
    assert errors == []


def test_the_schema_is_valid_2020_12():
    jsonschema.Draft202012Validator.check_schema(committed_schema())


def test_shared_blocks_are_written_once():
    """No two values carry the same block (an object, list or enum schema) except through a $ref."""
    seen: dict[str, list[str]] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        bare = {k: v for k, v in node.items() if k not in ("description", "properties")}
        block = (
            any(k in bare for k in ("items", "enum", "patternProperties")) or "properties" in node
        )
        if block and "$ref" not in node:  # a $ref with its descriptions is the way to share
            key = json.dumps([bare, sorted(node.get("properties", {}))], sort_keys=True)
            seen.setdefault(key, []).append(path)
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}" if path else k)

    schema = committed_schema()
    for name, definition in schema.get("$defs", {}).items():
        walk(definition, f"$defs.{name}")
    for k, v in schema["properties"].items():
        walk(v, k)
    assert [paths for paths in seen.values() if len(paths) > 1] == []


@pytest.mark.parametrize(
    ("values_yaml", "error"),
    [
        ("## @param a A\na: null\n", "a: the default is null; expected a type"),
        ("## @param a A\na: 1\nb: 2\n", "b: expected a ## @param line"),
        ("## @param a A\n## @param c C\na: 1\n", "name no value of values.yaml: c"),
        (
            "## @param a A\n## @schema a {enum: [auto, on]}\na: auto\n",
            "enum member True is boolean",
        ),
        ("## @param a A\n## @schema a {type: integer}\na: x\n", "the default 'x' is string"),
        ("## @param a A\n## @schema a {$ref: nothing}\na: 1\n", "no value has $def nothing"),
        (
            "## @schema a {$def: blk}\na:\n  ## @param a.x X\n  x: 1\n"
            "## @schema b {$ref: blk}\nb:\n  ## @param b.y Y\n  y: 1\n",
            "b: the default does not fit $def blk: unknown key y",
        ),
        (
            "## @schema a {$def: blk}\na:\n  ## @param a.x X\n  x: 1\n"
            "## @schema b {$ref: blk}\nb:\n  ## @param b.x X\n  ## @schema b.x {minimum: 2}\n  x: 1\n",
            "@schema b.x: inside a $ref block",
        ),
    ],
)
def test_the_script_refuses_values_it_cannot_describe(values_yaml, error):
    with pytest.raises(chart_schema.SchemaError, match=re.escape(error)):
        chart_schema.build(values_yaml)


def test_check_mode_reports_an_edited_schema(tmp_path):
    """``--check`` passes on the repository and fails, naming the fix, once the schema is edited by hand."""
    assert (
        subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True).returncode
        == 0
    )
    for part in ("charts", "scripts"):
        shutil.copytree(ROOT / part, tmp_path / part)
    copy = tmp_path / "charts" / "leaf-train" / "values.schema.json"
    copy.write_text(copy.read_text().replace('"minimum": 1024', '"minimum": 1'))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "chart_schema.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "values.schema.json is stale: run make chart-schema" in result.stderr
