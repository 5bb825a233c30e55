"""``pip install 'leaf-train[cli]'``: the operator commands work in an environment without TensorFlow.

The environment is built here, offline: a fresh venv (no ``--system-site-packages``) whose
site-packages holds only the distributions ``leaf-train[cli]`` resolves to (pyproject.toml's base
dependencies and its ``cli`` extra, then each one's own requirements, read from the installed metadata
of the test environment and linked in, file for file). TensorFlow, Keras, tf2onnx and ONNX Runtime are
not in it, so a command that imported one would fail. The project is this checkout (``PYTHONPATH``).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from contractkit import contract as make_contract
from leaf_common.contract import CONTRACT_FILE, MODEL_FILE
from leaf_common.storage import open_store
from leaf_train.registry import ModelRegistry
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnxruntime", "onnx", "matplotlib")


def cli_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["cli"]
    ]


def closure(roots: list[Requirement]) -> set[str]:
    """Names of every distribution the requirements pull in (markers evaluated here, extras followed)."""
    seen: set[str] = set()
    todo = [(r, "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        name = metadata.distribution(req.name).metadata["Name"].lower().replace("_", "-")
        if name in seen and not req.extras:
            continue
        seen.add(name)
        for sub in metadata.distribution(req.name).requires or []:
            for e in ["", *req.extras]:
                todo.append((Requirement(sub), e))
    return seen


@pytest.fixture(scope="module")
def cli_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("cli-venv")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    for name in sorted(closure(cli_requirements())):
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return venv / "bin" / "python"


def run(python: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'job'}{os.pathsep}{ROOT / 'serve'}"}
    code = "import sys; from leaf_train.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [str(python), "-c", code, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )


def test_the_environment_has_no_tensorflow(cli_python: Path):
    names = closure(cli_requirements())
    assert "kubernetes" in names and "boto3" in names
    assert not [n for n in names if n.split("-")[0] in HEAVY], names
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    out = subprocess.run([str(cli_python), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["submit", "--help"],
        ["status", "--help"],
        ["models", "--help"],
        *[["models", sub, "--help"] for sub in ("list", "show", "promote", "rollback", "prune")],
        *[["inbox", sub, "--help"] for sub in ("list", "accept", "reject")],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_help_of_every_operator_command(cli_python: Path, argv: list[str]):
    result = run(cli_python, *argv)
    assert result.returncode == 0, result.stderr
    assert "usage: leaf-train" in result.stdout


def test_models_and_inbox_against_s3(cli_python: Path, s3):
    s3.make_bucket("models")
    output = "s3://models/registry"
    gate = {"promote": True, "reason": "first model", "candidate_accuracy": 0.91}
    contract = make_contract("v1", metrics={"accuracy": 0.91}, gate=gate)
    files = {MODEL_FILE: b"onnx-v1", CONTRACT_FILE: contract.to_json()}
    ModelRegistry(open_store(output), "leaf-classifier").publish("v1", files)

    assert run(cli_python, "models", "promote", "v1", "--output", output).returncode == 0
    listed = run(cli_python, "models", "list", "--output", output)
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("v1"))
    assert row[2:5] == ["0.9100", "pass", "served"]
    shown = run(cli_python, "models", "show", "v1", "--output", output)
    assert shown.returncode == 0 and shown.stdout.startswith("version:     v1 (served)"), (
        shown.stderr
    )
    inbox = run(cli_python, "inbox", "list", "--output", output)
    assert inbox.returncode == 0 and "the inbox is empty" in inbox.stdout, inbox.stderr
