"""Facts about the two CPU images, checked inside them: user, read-only root, entrypoints, no TensorFlow to serve."""

from __future__ import annotations

import json

import pytest
from containerkit import podman
from scenario import Images

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGES = {"job": "leaf-train", "serve": "leaf-serve"}  # image -> its entrypoint program
# As the chart runs them: read-only root, no capabilities, no privilege escalation, /tmp writable.
LOCKED_DOWN = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")


def run(image: str, *args: str, entrypoint: str | None = None) -> str:
    cmd = ["run", "--rm", *LOCKED_DOWN, *(["--entrypoint", entrypoint] if entrypoint else []), image, *args]
    return podman(*cmd, timeout=120).stdout


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_runs_as_uid_10001_on_a_read_only_root(images: Images, name: str):
    image = getattr(images, name)
    assert json.loads(podman("image", "inspect", image).stdout)[0]["Config"]["User"] == "10001:10001"
    out = run(image, "-c", "id -u; id -g; touch /opt/venv/probe 2>&1; echo rc=$?", entrypoint="sh").splitlines()
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
    assert run(images.job, "-c", probe, entrypoint="python").strip() == "True ['keras', 'tensorflow-cpu', 'tf2onnx']"
