"""Typed configuration resolved from CLI flags, environment variables and defaults.

Each component declares one dataclass whose fields are :func:`option`: help text, choices and
bounds beside the field. Every field is ``--flag-name`` and ``<PREFIX>FLAG_NAME`` (Kubernetes
sets the latter). Precedence: flag > environment > default; see docs/configuration.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .errors import EXIT_CONFIG, LeafError

T = TypeVar("T")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(LeafError, ValueError):
    """An option or the environment has a value that cannot be used; the message names both."""

    exit_code = EXIT_CONFIG


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A number's range: ``at_least``/``at_most`` inclusive, ``above``/``below`` exclusive."""

    at_least: float | None = None
    at_most: float | None = None
    above: float | None = None
    below: float | None = None

    def admit(self, value: float) -> bool:
        return not (
            (self.at_least is not None and value < self.at_least)
            or (self.at_most is not None and value > self.at_most)
            or (self.above is not None and value <= self.above)
            or (self.below is not None and value >= self.below)
        )

    def words(self) -> str:
        """``from 1 to 65535``, ``>= 1``, ``> 0 and < 1``."""
        if self.at_least is not None and self.at_most is not None:
            return f"from {_number(self.at_least)} to {_number(self.at_most)}"
        marks = (">=", self.at_least), ("<=", self.at_most), (">", self.above), ("<", self.below)
        return " and ".join(f"{mark} {_number(v)}" for mark, v in marks if v is not None)


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    above: float | None = None,
    below: float | None = None,
    why: str = "",
    normalize: Callable[[Any], Any] | None = None,
) -> Any:
    """Declare a config field: its help text (``--help``) and the values it accepts.

    ``choices`` and the bounds are checked by :func:`check_options`; ``why`` follows the expected
    values in its error. ``normalize`` maps a value read from a flag or the environment to the
    field's one spelling (``str.lower``) before it is checked.
    """
    bounds = Bounds(at_least, at_most, above, below)
    meta = {
        "help": help,
        "choices": tuple(choices) if choices else None,
        "bounds": bounds if bounds != Bounds() else None,
        "why": why,
        "normalize": normalize,
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}{field_name.upper()}"


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def option_error(
    prefix: str, names: str | Sequence[str], expected: str, received: object
) -> ConfigError:
    """The one message for a bad option: ``--flag (ENV): expected ..., received ...``.

    ``names`` are field names (several when options conflict). ``received`` is shown with
    ``str``: pass ``repr(value)`` for text that should appear quoted.
    """
    names = (names,) if isinstance(names, str) else tuple(names)
    who = " and ".join(f"{flag_name(n)} ({env_name(prefix, n)})" for n in names)
    return ConfigError(f"{who}: expected {expected}, received {received}")


def help_names_choices(help: str, choices: Sequence[str]) -> bool:
    """Whether ``help`` names every choice as a word, in any case.

    Such a help is not followed by the list again (``auto (...), on, off (auto, on, off)``).
    """
    words = [rf"(?<![\w-]){re.escape(c)}(?![\w-])" for c in choices]
    return all(re.search(word, help, re.IGNORECASE) for word in words)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; ``list[str]`` stays as is."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def _optional(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _type_words(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for an error."""
    base = _base_type(tp)
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base) or (str,)
        return (
            f"a comma-separated list of {_type_words(item).removeprefix('a ').removeprefix('an ')}s"
        )
    words = {bool: "true or false (or 1/0, yes/no, on/off)", int: "an integer", float: "a number"}
    if base is tuple or typing.get_origin(base) is tuple:
        return "integers separated by commas or x"
    return words.get(base, "text") + (" or none" if _optional(tp) else "")


def parse_value(raw: str, tp: Any) -> Any:
    """Convert one string (flag or env) to the field's type; a ValueError says what was expected."""
    base = _base_type(tp)
    if _optional(tp) and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if base is bool and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        if base is bool:
            raise ValueError(raw)
        if base in (int, float):
            return base(raw)
        if typing.get_origin(base) is list:
            (item,) = typing.get_args(base) or (str,)
            return [parse_value(p.strip(), item) for p in raw.split(",") if p.strip()]
        if base is tuple or typing.get_origin(base) is tuple:
            return tuple(int(p) for p in raw.replace("x", ",").split(",") if p.strip())
        return raw
    except ValueError as e:
        raise ValueError(_type_words(tp)) from e


def check_options(obj: Any, prefix: str) -> None:
    """Each field's declared choices and bounds (:func:`option`), in declaration order."""
    for f in dataclasses.fields(obj):
        value, why = getattr(obj, f.name), f.metadata.get("why")
        choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
        if choices and value not in choices:
            expected = f"one of {', '.join(choices)}" + (f" ({why})" if why else "")
            raise option_error(prefix, f.name, expected, repr(value))
        if bounds and value is not None and not bounds.admit(value):
            kind = "an integer" if isinstance(value, int) else "a number"
            expected = f"{kind} {bounds.words()}" + (f" ({why})" if why else "")
            raise option_error(prefix, f.name, expected, value)


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add one ``--flag`` per dataclass field; the help text names its env variable."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_"):
            continue
        tp = hints[f.name]
        factory = f.default_factory  # type: ignore[misc]
        default = f.default if f.default is not dataclasses.MISSING else factory()
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        help_text = (
            f"{f.metadata.get('help', '')} [env {env_name(prefix, f.name)}; default: {shown}]"
        )
        choices = f.metadata.get("choices")
        if choices and not help_names_choices(f.metadata.get("help", ""), choices):
            help_text += f" (one of: {', '.join(choices)})"
        # A bare boolean flag means true (`leaf-train submit --force`); `--flag false` still reads a
        # value.
        switch = {"nargs": "?", "const": "true"} if _base_type(tp) is bool else {}
        parser.add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper() if _base_type(tp) is not bool else "BOOL",
            help=help_text.replace("%", "%%"),
            **switch,
        )


def _read(f: dataclasses.Field, raw: Any, tp: Any, prefix: str) -> Any:
    """One field's value from its flag or environment text: parsed, then normalized."""
    try:
        value = parse_value(raw, tp) if isinstance(raw, str) else raw
        normalize = f.metadata.get("normalize")
        return normalize(value) if normalize else value
    except ConfigError:
        raise
    except ValueError as e:
        raise option_error(prefix, f.name, str(e), repr(raw)) from e


def resolve(
    cls: type[T],
    prefix: str,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from parsed flags, then environment, then defaults; then check it.

    :func:`check_options` first, then ``cls.validate()`` where the class has one: pure, for the
    rules that join several options (it may call :func:`check_options` too, for configs built
    in code).
    """
    environ = os.environ if environ is None else environ
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        raw = given.get(f.name)
        raw = environ.get(env_name(prefix, f.name)) if raw is None else raw
        if f.init and raw is not None:
            values[f.name] = _read(f, raw, hints[f.name], prefix)
    obj = cls(**values)
    check_options(obj, prefix)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj
