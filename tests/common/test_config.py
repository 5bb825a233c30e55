"""Typed config: flag > environment > default, with errors naming what was received."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
from leaf_common.config import ConfigError, add_arguments, option, resolve


@dataclass
class Cfg:
    name: str = option("leaf", "a name")
    count: int = option(3, "a count")
    rate: float = option(0.5, "a rate")
    flag: bool = option(False, "a switch")
    mode: str = option("auto", "a choice", choices=("auto", "on", "off"))
    items: list[str] = option(["a"], "a list")
    limit: int | None = option(None, "optional")


def parse(argv, env):
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg, "T_")
    return resolve(Cfg, "T_", p.parse_args(argv), env)


def test_defaults():
    assert parse([], {}) == Cfg()


def test_env_then_flag_precedence():
    env = {"T_COUNT": "7", "T_NAME": "from-env", "T_FLAG": "yes", "T_ITEMS": "x, y", "T_LIMIT": "9"}
    cfg = parse(["--name", "from-flag"], env)
    assert (cfg.name, cfg.count, cfg.flag, cfg.items, cfg.limit) == ("from-flag", 7, True, ["x", "y"], 9)


@pytest.mark.parametrize(
    ("argv", "env", "flag"),
    [
        (["--flag"], {"T_FLAG": "false"}, True),  # a bare switch means true, and beats the environment
        (["--flag", "false"], {}, False),
        (["--flag", "no", "--count", "2"], {}, False),
        ([], {"T_FLAG": "on"}, True),
    ],
)
def test_boolean_flags_work_bare_or_with_a_value(argv, env, flag):
    assert parse(argv, env).flag is flag


@pytest.mark.parametrize(
    "argv, env, match",
    [
        (["--count", "many"], {}, r"--count: cannot read 'many' as int"),
        ([], {"T_RATE": "fast"}, r"T_RATE: cannot read 'fast' as float"),
        ([], {"T_FLAG": "maybe"}, r"T_FLAG: cannot read 'maybe' as bool"),
        (["--mode", "sideways"], {}, r"expected one of auto, on, off; received 'sideways'"),
    ],
)
def test_bad_values_name_expected_and_received(argv, env, match):
    with pytest.raises(ConfigError, match=match):
        parse(argv, env)


def test_help_names_env_variable_and_default():
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg, "T_")
    text = p.format_help()
    assert "T_COUNT" in text and "default: 3" in text and "one of: auto, on, off" in text
