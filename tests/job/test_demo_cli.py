"""``leaf-train demo`` where moto (the `demo` extra) is not installed, as in the GPU job image."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from leaf_train.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_without_moto_exits_2_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(
        sys.modules, "moto.server", None
    )  # `from moto.server import ...` raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert (
        "expected moto[server]" in err
        and "leaf-train[demo]" in err
        and "received ImportError" in err
    )
    assert (
        list(tmp_path.iterdir()) == []
    )  # nothing started, nothing written (demo-output/ is its default)


def test_only_the_cpu_flavour_installs_the_demo_extra():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["demo"] == ["moto[server]==5.2.5"]
    assert "leaf-train[train-base,demo]" in extras["train-cpu"]
    assert not any("moto" in req or "demo" in req for req in extras["train"] + extras["train-base"])
