"""Facts about the two CPU images, checked inside them: user, read-only root, entrypoints, the lock, no TensorFlow
to serve."""

from __future__ import annotations

import hashlib
import json
import tomllib

import pytest
from containerkit import ROOT, podman, venv_facts
from containerkit import run_locked_down as run
from leaf_train.provenance import lock_pins
from scenario import Images

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGES = {"job": "leaf-train", "serve": "leaf-serve"}  # image -> its entrypoint program


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_uid_10001_on_a_read_only_root(images: Images, name: str):
    image = getattr(images, name)
    assert (
        json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"] == "10001:10001"
    )
    out = run(
        image, "-c", "id -u; id -g; touch /opt/venv/probe 2>&1; echo rc=$?", entrypoint="sh"
    ).splitlines()
    assert out[:2] == ["10001", "10001"]
    assert "Read-only file system" in out[2] and out[3] == "rc=1"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_entrypoint_help_works(images: Images, name: str):
    out = run(getattr(images, name), "--help")  # the image's ENTRYPOINT is the program
    assert f"usage: {IMAGES[name]}" in out


def test_no_tensorflow_in_the_serving_image(images: Images):
    """Checked inside both images, so the check is seen to find TensorFlow where it is installed."""
    probe = (  # importable at all, and which distributions are installed (names normalised as PEP 503 does)
        "import importlib.metadata as m, importlib.util as u, re; "
        "names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}; "
        "ml = sorted(n for n in names if n.startswith(('tensorflow', 'keras', 'tf2onnx'))); "
        "print(u.find_spec('tensorflow') is not None, ml)"
    )
    assert run(images.serve, "-c", probe, entrypoint="python").strip() == "False []"
    assert (
        run(images.job, "-c", probe, entrypoint="python").strip()
        == "True ['keras', 'tensorflow-cpu', 'tf2onnx']"
    )


@pytest.mark.parametrize(("name", "lock"), [("job", "train-cpu"), ("serve", "serve")])
def test_the_venv_is_its_lock_and_the_project(images: Images, name: str, lock: str):
    text = (ROOT / "locks" / f"{lock}.txt").read_bytes()
    facts = venv_facts(getattr(images, name))
    assert facts["lock_sha256"] == hashlib.sha256(text).hexdigest()
    pins = {f"{n}=={v}" for n, v in lock_pins(text.decode()).items()}
    assert set(facts["installed"]) == pins | {f"leaf-train=={version()}"}
