"""locks/: one lock per install profile, resolved from pyproject.toml, and installed exactly.

The locks are what a fresh clone, CI and the images install; these tests fail when someone edits
a dependency in pyproject.toml without re-running ``make lock``, when a lock no longer satisfies a
range it was made from, or when the test environment is not the lock it claims to be.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest
from leaf_train.provenance import lock_pins, normalize
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _load_lock_module():
    spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lock"] = module
    spec.loader.exec_module(module)
    return module


lock = _load_lock_module()
ALL = [*lock.PROFILES, *lock.TOOLS]
# Markers are evaluated for the platform the locks are resolved for (lock.PLATFORM, lock.PYTHON_VERSION).
TARGET = default_environment() | {"python_version": lock.PYTHON_VERSION, "sys_platform": "linux"}


def requirements_of(profile: str) -> list[Requirement]:
    if profile in lock.TOOLS:
        raw = lock.read_in(lock.TOOLS[profile])
    else:
        raw = lock.profile_requirements(lock.load_pyproject(), profile) + lock.read_in(
            lock.BUILD_IN
        )
    reqs = [Requirement(r) for r in raw]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def unsatisfied(profile: str, pins: dict[str, str]) -> list[str]:
    """Requirements of ``profile`` that the pins do not satisfy (missing, or outside the range)."""
    problems = []
    for req in requirements_of(profile):
        name = normalize(req.name)
        pinned = pins.get(name)
        if pinned is None:
            problems.append(f"{req}: not in the lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req}: lock pins {pinned}")
    return problems


@pytest.mark.parametrize("profile", ALL)
def test_lock_was_made_from_the_current_pyproject(profile: str) -> None:
    text = lock.lock_path(profile).read_text()
    expected = lock.inputs_digest(lock.load_pyproject(), profile)
    assert lock.recorded_digest(text) == expected, (
        f"locks/{profile}.txt was resolved from other requirements than pyproject.toml's now: run `make lock`"
    )


@pytest.mark.parametrize("profile", ALL)
def test_lock_satisfies_every_requirement_with_hashes(profile: str) -> None:
    text = lock.lock_path(profile).read_text()
    pins = _pins(text)
    assert unsatisfied(profile, pins) == []
    # Hash-checking mode (pip --require-hashes) needs a hash on every pin.
    entries = [e for e in text.split("\n") if "==" in e and not e.startswith("#")]
    assert entries and all(e.rstrip().endswith("\\") for e in entries), (
        "every pin is followed by its hashes"
    )
    assert text.count("--hash=sha256:") >= len(pins)


def _pins(text: str) -> dict[str, str]:
    return lock_pins(text)


def test_profiles_install_what_their_images_need() -> None:
    pins = {p: _pins(lock.lock_path(p).read_text()) for p in lock.PROFILES}
    assert "tensorflow" not in pins["serve"] and "tensorflow" not in pins["serve-gpu"]
    assert "tensorflow-cpu" not in pins["serve"] and "tensorflow-cpu" not in pins["serve-gpu"]
    assert "onnxruntime-gpu" in pins["serve-gpu"] and "onnxruntime" not in pins["serve-gpu"]
    assert (
        "tensorflow" in pins["train"]
        and "tensorflow-cpu" in pins["train-cpu"]
        and "tensorflow-cpu" in pins["dev"]
    )
    assert {"pytest", "ruff", "setuptools", "pip"} <= set(pins["dev"])


def test_a_pyproject_edit_without_relocking_is_caught() -> None:
    """The check can fail: widening one range in (a copy of) pyproject.toml changes the digest."""
    pyproject = copy.deepcopy(lock.load_pyproject())
    recorded = lock.recorded_digest(lock.lock_path("serve").read_text())
    assert lock.inputs_digest(pyproject, "serve") == recorded
    serve = pyproject["project"]["optional-dependencies"]["serve"]
    serve[serve.index("uvicorn==0.54.0")] = "uvicorn>=0.54"
    assert lock.inputs_digest(pyproject, "serve") != recorded
    # ... and a lock whose pin falls outside a range is reported by the satisfaction check.
    pins = _pins(lock.lock_path("serve").read_text()) | {"uvicorn": "0.30.0"}
    assert unsatisfied("serve", pins) == ["uvicorn==0.54.0: lock pins 0.30.0"]


def test_this_environment_is_exactly_the_dev_lock() -> None:
    """What the suite runs on is what a fresh clone installs: every pin, and nothing else."""
    pins = _pins(lock.lock_path("dev").read_text())
    installed = {normalize(d.metadata["Name"]): d.version for d in distributions()}
    installed.pop("leaf-train", None)  # the project itself, installed --no-deps from the work tree
    differs = {
        name: (pins.get(name), have) for name, have in installed.items() if pins.get(name) != have
    }
    missing = sorted(set(pins) - set(installed))
    assert differs == {} and missing == [], (
        "the test environment drifted from locks/dev.txt: rerun `make test`"
    )
