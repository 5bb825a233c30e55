"""training.config / serving.config are the programs' own options (scripts/chart_config.py): the two must agree.

Every option of ``leaf-train train`` and ``leaf-serve`` is either a ``config`` key or set by the chart from
another value; values.yaml and docs/configuration.md are what the script writes; every numeric key
installs through ``helm --set`` (which passes decimals as strings) and reaches the program as the
number typed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import sys
from typing import Any

import pytest
import yaml
from leaf_common.config import ConfigError, resolve
from test_chart import CHART, ROOT, helm, one, render

SCRIPT = ROOT / "scripts" / "chart_config.py"


def load_script():
    spec = importlib.util.spec_from_file_location("chart_config", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("chart_config", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


chart_config = load_script()
COMPONENTS = {c.path: c for c in chart_config.COMPONENTS}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def key_schema(path: str, key: str) -> dict[str, Any]:
    """What values.schema.json, as helm reads it, says of ``<path>.<key>``; a ``$ref`` resolved."""
    section, config = path.split(".")
    node = SCHEMA["properties"][section]["properties"][config]["properties"][key]
    ref = node.get("$ref", "").removeprefix("#/$defs/")
    return {**SCHEMA["$defs"][ref], **node} if ref else node


def test_values_yaml_and_the_reference_are_what_the_script_writes():
    text = (CHART / "values.yaml").read_text()
    assert chart_config.regenerate(text) == text, "values.yaml is stale: run make chart-schema"
    assert chart_config.reference() == chart_config.DOC.read_text(), (
        "docs/configuration.md is stale"
    )


@pytest.mark.parametrize("path", sorted(COMPONENTS))
def test_every_option_is_a_config_key_or_set_by_the_chart(path):
    component = COMPONENTS[path]
    section, _ = path.split(".")
    keys = set(VALUES[section]["config"])
    options = {o.key: o.name for o in chart_config.options(component)}
    assert keys - options.keys() == set(), f"{path} keys that are no option of {component.command}"
    missing = {name for key, name in options.items() if key not in keys} - component.set_by.keys()
    assert missing == set(), f"options of {component.command} the chart cannot reach"
    assert len(keys) + len(component.set_by) == len(options)


# What a render needs so that every option the chart sets from another value shows up.
EVERYTHING_ON = (
    *(
        "--set",
        "training.workers=2",
        "--set",
        "training.rolloutServing=true",
        "--set",
        "serving.gpu.enabled=true",
    ),
    *("--set", "serving.capture.enabled=true", "--set", "serving.capture.perMinute=20"),
    *("--set", "serving.capture.queueBytes=1000000", "--set", "serving.review.enabled=true"),
    *("--set", "serving.review.existingSecret=leaf-review"),
    *("--set", "training.runOnInstall=true", "--set", "s3.endpoint=http://minio:9000"),
    *(
        "--set",
        "serving.capture.perClientPerMinute=6",
        "--set",
        "serving.capture.inboxMaxFiles=100",
    ),
    *("--set", "serving.capture.inboxMaxBytes=1000000", "--set", "serving.review.failedLogins=5"),
    *("--set", "serving.review.loginWindow=30"),
)
# Set by the chart but not as a LEAF_* variable (see SET_BY's words for each).
NOT_AN_ENV = {"version", "kubeconfig", "worker_index", "worker_hosts", "inbox"}


def _environment(objs: list[dict[str, Any]], component: str) -> set[str]:
    names = set(one(objs, "ConfigMap", component)["data"])
    for obj in objs:
        spec = obj.get("spec", {})
        spec = spec.get("jobTemplate", {}).get("spec", spec)  # a CronJob's pods are one level down
        spec = spec.get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            names |= {e["name"] for e in container.get("env", [])}
    return names


def test_every_option_the_chart_sets_reaches_the_program():
    objs = render(*EVERYTHING_ON)
    for path, component in COMPONENTS.items():
        env = _environment(objs, path.split(".")[0])
        for name in component.set_by.keys() - NOT_AN_ENV:
            assert component.prefix + name.upper() in env, (
                f"{path}: the chart sets {name}, but no variable has it"
            )


def _typed(option, schema: dict[str, Any]) -> str:
    """A value of the option as a person types it after --set."""
    if option.type is int:
        return str(max(option.default, schema.get("minimum", 0)) + 1)
    if min(schema.get("maximum", 2), schema.get("exclusiveMaximum", 2)) <= 1:
        return "0.7"
    return (
        "36.5" if option.name == "incomplete_grace_hours" else "1.5"
    )  # above the Job's 24 h deadline


NUMERIC = [
    (path, o)
    for path, component in COMPONENTS.items()
    for o in chart_config.chart_keys(component)
    if o.type in (int, float)
]


@pytest.mark.parametrize(("path", "option"), NUMERIC, ids=[f"{p}.{o.key}" for p, o in NUMERIC])
def test_every_numeric_value_installs_with_set(path, option):
    component = COMPONENTS[path]
    typed = _typed(option, key_schema(path, option.key))
    objs = render("--set", f"{path}.{option.key}={typed}")
    data = one(objs, "ConfigMap", path.split(".")[0])["data"]
    assert data[option.env(component.prefix)] == typed
    environ = {**data, "LEAF_SERVE_REVIEW_TOKEN_FILE": ""}
    configs = [resolve(cls, component.prefix, {}, environ=environ) for cls in component.classes()]
    resolved = next(getattr(c, option.name) for c in configs if hasattr(c, option.name))
    assert resolved == type(option.default)(typed if option.type is int else float(typed))


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("serving.config.confidenceThreshold=high", "confidenceThreshold"),
        ("serving.config.confidenceThreshold=1.5", "confidenceThreshold"),
        ("training.config.headLr=-1e-5", "headLr"),
        ("training.config.batchSize=0", "batchSize"),
        ("serving.config.headerTimeout=0.5", "headerTimeout"),  # a string to helm: the pattern
        ("training.config.valFraction=0", "valFraction"),
        ("training.config.notAnOption=1", "notAnOption"),
    ],
)
def test_a_bad_number_is_refused_naming_the_value(setting, named):
    result = helm("template", "leaf", str(CHART), "--set", setting, check=False)
    assert result.returncode != 0 and named in result.stderr


# option(at_least=, ...) as JSON Schema, written here again on purpose: the test's own reading.
AS_JSON_SCHEMA = {
    "at_least": "minimum",
    "at_most": "maximum",
    "above": "exclusiveMinimum",
    "below": "exclusiveMaximum",
}


def _declared(path: str) -> list[tuple[str, str, dataclasses.Field]]:
    """(option name, chart key, field) of each chart key whose field declares bounds or choices."""
    component, found = COMPONENTS[path], {}
    for cls in component.classes():
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if f.name in component.set_by or f.name in found or not f.init:
                continue
            if meta.get("bounds") or meta.get("choices"):
                head, *rest = f.name.split("_")
                found[f.name] = (f.name, head + "".join(w.capitalize() for w in rest), f)
    return list(found.values())


DECLARED = [(path, *d) for path in sorted(COMPONENTS) for d in _declared(path)]
DECLARED_IDS = [f"{path}.{key}" for path, _, key, _ in DECLARED]


@pytest.mark.parametrize(("path", "name", "key", "field"), DECLARED, ids=DECLARED_IDS)
def test_the_schema_carries_the_bounds_and_choices_the_program_declares(path, name, key, field):
    schema = key_schema(path, key)
    bounds = field.metadata.get("bounds")
    declared = dataclasses.asdict(bounds) if bounds else {}
    wanted = {AS_JSON_SCHEMA[k]: v for k, v in declared.items() if v is not None}
    carried = {k: schema[k] for k in AS_JSON_SCHEMA.values() if k in schema}
    assert carried == wanted, f"{path}.{key}: the chart's bounds are not {name}'s option(...)"
    choices = field.metadata.get("choices")
    assert schema.get("enum") == ([*choices, None] if choices else None)


# Base environment that resolves; per option, others that its own rules compare it with.
BASE = {
    "training.config": {"LEAF_TRAIN_DATA": "s3://b/data", "LEAF_TRAIN_OUTPUT": "s3://b/reg"},
    "serving.config": {"LEAF_SERVE_MODEL": "s3://b/reg/leaf/latest.json"},
}
COMPANIONS = {"max_body_bytes_in_flight": {"LEAF_SERVE_MAX_BODY_BYTES": "1"}}


def _edges(schema: dict[str, Any], integer: bool) -> list[tuple[float, float]]:
    """(admitted, refused) pairs either side of each bound of a key's schema."""
    step = 1 if integer else 0.01
    moves = {"minimum": (0, -step), "maximum": (0, step)}
    moves |= {"exclusiveMinimum": (step, 0), "exclusiveMaximum": (-step, 0)}
    return [
        (round(schema[k] + inside, 6), round(schema[k] + outside, 6))
        for k, (inside, outside) in moves.items()
        if k in schema
    ]


BOUNDED = [(p, o) for p, o in NUMERIC if AS_JSON_SCHEMA.values() & key_schema(p, o.key).keys()]


@pytest.mark.parametrize(("path", "option"), BOUNDED, ids=[f"{p}.{o.key}" for p, o in BOUNDED])
def test_the_program_admits_and_refuses_where_the_schema_does(path, option):
    """Whatever wrote the bound (an option's declaration, or the script's table for options that
    declare none): a value at the edge the schema admits starts the program, one past it exits 2.
    A float's string form (``helm --set`` passes 0.5 as a string) is held by the pattern."""
    component, schema = COMPONENTS[path], key_schema(path, option.key)
    env = option.env(component.prefix)
    for admitted, refused in _edges(schema, option.type is int):
        for value, ok in ((admitted, True), (refused, False)):
            text = str(int(value)) if option.type is int else str(value)
            if option.type is float:
                assert bool(re.search(schema["pattern"], text)) == ok, f"{text!r} and the pattern"
            environ = {**BASE[path], **COMPANIONS.get(option.name, {}), env: text}
            try:
                [resolve(cls, component.prefix, {}, environ=environ) for cls in component.classes()]
                assert ok, f"{env}={text}: the chart refuses it, the program starts"
            except ConfigError as e:
                assert not ok, f"{env}={text}: the chart admits it, the program refuses: {e}"
                assert option.flag in str(e)


def _value_schema(path: str) -> dict[str, Any]:
    node = SCHEMA
    for part in path.split("."):
        node = node["properties"][part]
    return node


def _one_value(component, option) -> str | None:
    """The chart value that sets ``option`` if set_by names just it: `serving.capture.perMinute`."""
    match = re.fullmatch(r"`([\w.]+)`", component.set_by.get(option.name, ""))
    return match.group(1) if match else None


SET_FROM_A_VALUE = [
    (path, o, _one_value(component, o))
    for path, component in COMPONENTS.items()
    for o in chart_config.options(component)
    if o.type in (int, float) and _one_value(component, o)
]
VALUE_IDS = [value for _, _, value in SET_FROM_A_VALUE]


@pytest.mark.parametrize(("path", "option", "value"), SET_FROM_A_VALUE, ids=VALUE_IDS)
def test_the_program_starts_with_every_edge_a_chart_value_admits(path, option, value):
    """A chart value may be stricter than its option (training.workerPort >= 1024), never looser."""
    component = COMPONENTS[path]
    schema = _value_schema(value)
    assert AS_JSON_SCHEMA.values() & schema.keys(), f"{value}: no bound; {option.name} has some"
    for admitted, _ in _edges(schema, option.type is int):
        text = str(int(admitted)) if option.type is int else str(admitted)
        environ = {**BASE[path], option.env(component.prefix): text}
        [resolve(cls, component.prefix, {}, environ=environ) for cls in component.classes()]


def _words(text: str, word: str) -> int:
    return len(re.findall(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE))


CHOICES = [(p, o) for p, c in COMPONENTS.items() for o in chart_config.chart_keys(c) if o.choices]


@pytest.mark.parametrize(("path", "option"), CHOICES, ids=[f"{p}.{o.key}" for p, o in CHOICES])
def test_a_description_names_each_choice_once(path, option):
    """Choices are listed after the help only where it does not name them already."""
    description = key_schema(path, option.key)["description"]
    said = re.split(r"; null = |; the chart's ", description)[0]
    for choice in option.choices:
        assert _words(said, choice) == max(1, _words(option.help, choice)), description


def test_a_bound_copied_into_the_scripts_table_is_refused():
    copy = dataclasses.replace(chart_config.SERVING, schema={"header_timeout": {"minimum": 1}})
    with pytest.raises(chart_config.ConfigTableError, match=r"headerTimeout: expected its minimum"):
        chart_config.chart_keys(copy)
