"""What produced a model: seed, determinism, the packages shaping its numbers, the install lock.

``model.json`` and ``report.json`` carry this record (``leaf-train models show`` prints it); the
lock is named by its sha256 with whether the environment still matches it. Design:
docs/reproducibility.md
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from leaf_common.registry import sha256_hex

from . import __version__

LOCK_FILE = "leaf-train.lock"
# Recorded name -> the distributions that provide it (the first one installed wins).
NUMERIC_PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "keras": ("keras",),
    "numpy": ("numpy",),
    "pillow": ("pillow",),
    "tf2onnx": ("tf2onnx",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.M)
_PROFILE = re.compile(r"^# leaf-train lock, profile '([\w-]+)'", re.M)
# Shown when a lock lists more mismatches than this; the count is always complete.
_MAX_LISTED = 20
# The source that turns photos into a model: the job and what it shares with the server (decoding,
# storage).
CODE_PACKAGES = ("leaf_train", "leaf_common")


def normalize(name: str) -> str:
    """PEP 503 name: ``Pillow``/``pillow``, ``tensorflow_cpu``/``tensorflow-cpu`` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a model's numbers; ``None`` where absent."""
    found: dict[str, str | None] = {}
    for name, distributions in NUMERIC_PACKAGES.items():
        found[name] = next((v for d in distributions if (v := installed_version(d))), None)
    return found


def lock_pins(lock_text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a requirements lock."""
    return {normalize(name): pinned for name, pinned in _PIN.findall(lock_text)}


def lock_record(prefix: str | Path = sys.prefix) -> dict[str, Any] | None:
    """The lock this environment was installed from, or ``None`` if it was installed without one.

    Returns:
        ``{"profile", "sha256", "environment_matches", "mismatches"}``: ``mismatches`` lists
        (up to 20) packages whose installed version differs from the pin.
    """
    path = Path(prefix) / LOCK_FILE
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    text = raw.decode(errors="replace")
    mismatches = []
    for name, pinned in sorted(lock_pins(text).items()):
        have = installed_version(name)
        if have != pinned:
            mismatches.append(f"{name}: locked {pinned}, installed {have or 'nothing'}")
    profile = _PROFILE.search(text)
    return {
        "profile": profile.group(1) if profile else "",
        "sha256": sha256_hex(raw),
        "environment_matches": not mismatches,
        "mismatch_count": len(mismatches),
        "mismatches": mismatches[:_MAX_LISTED],
    }


def source_digest(roots: Mapping[str, Path]) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under each folder."""
    h = hashlib.sha256()
    for name, root in sorted(roots.items()):
        for path in sorted(root.rglob("*.py")):
            h.update(
                f"{name}/{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode()
            )
            h.update(path.read_bytes())
    return h.hexdigest()


def code_record() -> dict[str, str]:
    """``{"version", "sha256"}`` of the training code (:data:`CODE_PACKAGES`).

    The content, not only ``__version__``: the version string is not bumped with every change, and
    the retrain policy (``freshness``) must notice any change of the code that trains the model.
    """
    roots = {}
    for package in CODE_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            roots[package] = Path(spec.origin).parent
    return {"version": __version__, "sha256": source_digest(roots)}


def record(
    seed: int,
    deterministic: bool,
    determinism_option: str,
    weights_sha256: str,
    augment: str | None = None,
) -> dict[str, Any]:
    """The provenance block of ``model.json`` and ``report.json``; ``augment``: resolved mode."""
    return {
        "code": code_record(),
        "seed": seed,
        "deterministic": deterministic,
        "deterministic_option": determinism_option,
        "weights_sha256": weights_sha256,
        **({"augment": augment} if augment is not None else {}),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "lock": lock_record(),
    }
