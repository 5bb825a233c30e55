"""Typed configuration resolved from CLI flags, environment variables and defaults.

Each component declares one dataclass. Every field carries its help text and is
reachable both as ``--flag-name`` and as ``<PREFIX>FLAG_NAME`` so Kubernetes can
configure the same option through ``env:``. Precedence: CLI flag > environment >
default. Nothing else in the code base reads ``os.environ`` for options.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .errors import EXIT_CONFIG, LeafError

T = TypeVar("T")


class ConfigError(LeafError, ValueError):
    """An option or the environment has a value that cannot be used; the message names both."""

    exit_code = EXIT_CONFIG


def option(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    """Declare a config field with its help text (shown by ``--help``)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}{field_name.upper()}"


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` stays as is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def parse_value(name: str, raw: str, tp: Any) -> Any:
    """Convert one string (flag or env) to the field's type, or say why not."""
    base = _base_type(tp)
    if _optional(tp) and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if base is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected one of true/false/1/0/yes/no/on/off")
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if typing.get_origin(base) is list:
            (item,) = typing.get_args(base) or (str,)
            parts = [p.strip() for p in raw.split(",") if p.strip()]
            return [parse_value(name, p, item) for p in parts]
        if base is tuple or typing.get_origin(base) is tuple:
            return tuple(int(p) for p in raw.replace("x", ",").split(",") if p.strip())
        return raw
    except ValueError as e:
        raise ConfigError(f"option {name}: cannot read {raw!r} as {_type_label(base)} ({e})") from e


def _type_label(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one ``--flag`` per dataclass field; the help text names its env variable."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = f"{f.metadata.get('help', '')} [env {env_name(prefix, f.name)}; default: {shown}]"
        choices = f.metadata.get("choices")
        if choices:
            help_text += f" (one of: {', '.join(choices)})"
        # A bare boolean flag means true (`leaf-train submit --force`); `--flag false` still reads a value.
        switch = {"nargs": "?", "const": "true"} if _base_type(tp) is bool else {}
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper() if _base_type(tp) is not bool else "BOOL",
            help=help_text.replace("%", "%%"),
            **switch,
        )


def resolve(
    cls: type[T],
    prefix: str,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from parsed flags, then environment, then defaults."""
    environ = os.environ if environ is None else environ
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        raw = given.get(f.name)
        source = flag_name(f.name)
        if raw is None:
            raw = environ.get(env_name(prefix, f.name))
            source = env_name(prefix, f.name)
        if raw is None:
            continue
        value = parse_value(source, raw, hints[f.name]) if isinstance(raw, str) else raw
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"option {source}: expected one of {', '.join(choices)}; received {value!r}")
        values[f.name] = value
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    return obj
