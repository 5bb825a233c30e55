"""Typed config: flag > environment > default, with errors naming what was received."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest
from leaf_common.config import ConfigError, add_arguments, option, resolve
from leaf_serve.settings import ENV_PREFIX as SERVE_PREFIX
from leaf_serve.settings import ServeConfig
from leaf_train.config import ENV_PREFIX as TRAIN_PREFIX
from leaf_train.config import TrainConfig


@dataclass
class Cfg:
    name: str = option("leaf", "a name")
    count: int = option(3, "a count")
    rate: float = option(0.5, "a rate")
    flag: bool = option(False, "a switch")
    mode: str = option("auto", "a choice", choices=("auto", "on", "off"))
    items: list[str] = option(["a"], "a list")
    limit: int | None = option(None, "optional", at_least=1)
    share: float = option(0.5, "a fraction", above=0, below=1, why="a share of the whole")


def parse(argv, env):
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg, "T_")
    return resolve(Cfg, "T_", p.parse_args(argv), env)


def test_defaults():
    assert parse([], {}) == Cfg()


def test_env_then_flag_precedence():
    env = {"T_COUNT": "7", "T_NAME": "from-env", "T_FLAG": "yes", "T_ITEMS": "x, y", "T_LIMIT": "9"}
    cfg = parse(["--name", "from-flag"], env)
    assert (cfg.name, cfg.count, cfg.flag, cfg.items, cfg.limit) == (
        "from-flag",
        7,
        True,
        ["x", "y"],
        9,
    )


@pytest.mark.parametrize(
    ("argv", "env", "flag"),
    [
        (
            ["--flag"],
            {"T_FLAG": "false"},
            True,
        ),  # a bare switch means true, and beats the environment
        (["--flag", "false"], {}, False),
        (["--flag", "no", "--count", "2"], {}, False),
        ([], {"T_FLAG": "on"}, True),
    ],
)
def test_boolean_flags_work_bare_or_with_a_value(argv, env, flag):
    assert parse(argv, env).flag is flag


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--count", "many"], {}, "--count (T_COUNT): expected an integer, received 'many'"),
        ([], {"T_RATE": "fast"}, "--rate (T_RATE): expected a number, received 'fast'"),
        ([], {"T_FLAG": "maybe"}, "--flag (T_FLAG): expected true or false (or 1/0, yes/no, on/off), "
         "received 'maybe'"),
        (["--mode", "sideways"], {}, "--mode (T_MODE): expected one of auto, on, off, received 'sideways'"),
        ([], {"T_LIMIT": "0"}, "--limit (T_LIMIT): expected an integer >= 1, received 0"),
        (["--share", "1"], {}, "--share (T_SHARE): expected a number > 0 and < 1 (a share of the "
         "whole), received 1.0"),
    ],
)  # fmt: skip
def test_bad_values_name_flag_env_expected_and_received(argv, env, message):
    with pytest.raises(ConfigError) as e:
        parse(argv, env)
    assert str(e.value) == message


def test_an_optional_bound_holds_only_when_a_value_is_given():
    assert parse([], {"T_LIMIT": "none"}).limit is None


def serve(environ: dict[str, str]) -> ServeConfig:
    return resolve(ServeConfig, SERVE_PREFIX, {}, {"LEAF_SERVE_MODEL": "m", **environ})


def train(argv: list[str]) -> TrainConfig:
    p = argparse.ArgumentParser()
    add_arguments(p, TrainConfig, TRAIN_PREFIX)
    return resolve(
        TrainConfig, TRAIN_PREFIX, p.parse_args(["--data", "d", "--output", "o", *argv]), {}
    )


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: serve({"LEAF_SERVE_MAX_BODY_BYTES": "0"}),
         "--max-body-bytes (LEAF_SERVE_MAX_BODY_BYTES): expected an integer >= 1, received 0"),
        (lambda: serve({"LEAF_SERVE_PORT": "65536"}),
         "--port (LEAF_SERVE_PORT): expected an integer from 1 to 65535, received 65536"),
        (lambda: serve({"LEAF_SERVE_SHADOW_FRACTION": "2"}),
         "--shadow-fraction (LEAF_SERVE_SHADOW_FRACTION): expected a number from 0 to 1, received 2.0"),
        (lambda: serve({"LEAF_SERVE_HEADER_TIMEOUT": "0.5"}),
         "--header-timeout (LEAF_SERVE_HEADER_TIMEOUT): expected a number >= 1 (less closes "
         "healthy clients on slow links), received 0.5"),
        (lambda: train(["--image-size", "16"]),
         "--image-size (LEAF_TRAIN_IMAGE_SIZE): expected an integer >= 32 (VGG16 pools 5 times), "
         "received 16"),
        (lambda: train(["--val-fraction", "1"]),
         "--val-fraction (LEAF_TRAIN_VAL_FRACTION): expected a number > 0 and < 1, received 1.0"),
        (lambda: train(["--augment", "gpu"]),
         "--augment (LEAF_TRAIN_AUGMENT): expected one of auto, host, device, off (or the older "
         "true/false), received 'gpu'"),
    ],
)  # fmt: skip
def test_both_programs_name_flag_env_expected_and_received(build, message):
    with pytest.raises(ConfigError) as e:
        build()
    assert str(e.value) == message


def test_parsing_normalizes_so_validate_changes_nothing():
    cfg = serve({"LEAF_SERVE_LOG_LEVEL": "WARNING"})
    assert cfg.log_level == "warning"
    assert train(["--augment", "true"]).augment == "auto"
    before = repr(cfg)
    cfg.validate()
    assert repr(cfg) == before


def test_derived_values_are_computed_by_derive_not_validate(tmp_path):
    token = tmp_path / "token"
    model = "s3://b/r/leaf/latest.json"
    cfg = serve(
        {
            "LEAF_SERVE_MODEL": model,
            "LEAF_SERVE_REVIEW_TOKEN_FILE": str(token),
            "LEAF_SERVE_DATA": "/d",
        }
    )
    # validate() passed without the token file: reading it is derive()'s job.
    assert cfg.inbox == "" and cfg.inbox_uri == "s3://b/r/leaf/inbox"
    with pytest.raises(ConfigError, match=r"--review-token-file \(LEAF_SERVE_REVIEW_TOKEN_FILE\)"):
        cfg.derive()
    token.write_text("3f9a1c2b7d5e8f0146ab" * 2)
    assert cfg.derive().review_token == "3f9a1c2b7d5e8f0146ab" * 2


def test_help_names_env_variable_and_default():
    p = argparse.ArgumentParser()
    add_arguments(p, Cfg, "T_")
    text = p.format_help()
    assert "T_COUNT" in text and "default: 3" in text and "one of: auto, on, off" in text


@dataclass
class Named:
    mode: str = option("auto", "a choice: auto (if it can), on, OFF", choices=("auto", "on", "off"))


def test_help_lists_the_choices_once():
    p = argparse.ArgumentParser()
    add_arguments(p, Named, "T_")
    text = " ".join(p.format_help().split())  # argparse wraps lines
    assert "a choice: auto (if it can), on, OFF" in text and "one of:" not in text
