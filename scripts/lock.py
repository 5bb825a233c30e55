"""Generate and check the install locks in locks/ (one per install profile).

Why requirements files with hashes, written by ``uv pip compile``: installing one needs nothing but
pip (``pip install --require-hashes -r locks/<profile>.txt``), which is all a fresh clone, a Dockerfile
or an air-gapped wheelhouse has; the hashes make a tampered or re-uploaded wheel fail the install;
and uv resolves for a target platform (Linux x86_64, CPython 3.11, as in the images) from index
metadata in about a second, without downloading the multi-GB CUDA wheels of the GPU profiles.
pyproject.toml keeps the ranges for people who install leaf-train as a library.

Each lock starts with the sha256 of its inputs (the profile's requirements from pyproject.toml and
locks/build.in); ``tests/locks/test_locks.py`` recomputes it, so editing a dependency without
re-locking fails the suite.

Usage: ``make lock`` (all profiles) or ``python scripts/lock.py --uv UV [PROFILE ...]``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "locks"
BUILD_IN = LOCKS / "build.in"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# profile -> extras: what each install path installs (docs/reproducibility.md).
PROFILES: dict[str, tuple[str, ...]] = {
    "dev": ("train-cpu", "serve", "dev"),  # make test / make demo / CI
    "train": ("train",),  # job image, GPU flavour
    "train-cpu": ("train-cpu",),  # job image, CPU flavour
    "serve": ("serve",),  # serving image, CPU flavour
    "serve-gpu": ("serve-gpu",),  # serving image, GPU flavour
}
# Tools the tests run in venvs of their own (their pins clash with ours): locked from a .in file.
TOOLS: dict[str, Path] = {"checkov": LOCKS / "checkov.in"}
DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.M)
_SELF = re.compile(r"^leaf-train\[([\w,-]+)\]$")


def load_pyproject(path: Path = ROOT / "pyproject.toml") -> dict:
    return tomllib.loads(path.read_text())


def profile_requirements(pyproject: dict, profile: str) -> list[str]:
    """The base dependencies plus every extra of ``profile``, self-references (leaf-train[x]) expanded."""
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})

    def expand(extra: str, seen: frozenset[str]) -> list[str]:
        if extra in seen:
            return []
        out: list[str] = []
        for req in extras[extra]:
            m = _SELF.match(req.replace(" ", ""))
            out += (
                [r for sub in m.group(1).split(",") for r in expand(sub, seen | {extra})]
                if m
                else [req]
            )
        return out

    reqs = list(project.get("dependencies", []))
    for extra in PROFILES[profile]:
        reqs += expand(extra, frozenset())
    return sorted(set(reqs))


def read_in(path: Path) -> list[str]:
    """Requirement lines of a .in file (comments and blank lines dropped)."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def inputs_digest(pyproject: dict, profile: str) -> str:
    """sha256 over what the lock was resolved from: requirements, build tools, Python and platform."""
    parts = [f"python {PYTHON_VERSION}", f"platform {PLATFORM}", f"profile {profile}"]
    if profile in TOOLS:
        parts += read_in(TOOLS[profile])
    else:
        parts += profile_requirements(pyproject, profile) + read_in(BUILD_IN)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def lock_path(profile: str) -> Path:
    return LOCKS / f"{profile}.txt"


def recorded_digest(lock_text: str) -> str | None:
    m = DIGEST_LINE.search(lock_text)
    return m.group(1) if m else None


def header(pyproject: dict, profile: str) -> str:
    source = (
        f"locks/{profile}.in"
        if profile in TOOLS
        else f"pyproject.toml [{','.join(PROFILES[profile])}] + locks/build.in"
    )
    return (
        f"# leaf-train lock, profile {profile!r}: {source},\n"
        f"# resolved for CPython {PYTHON_VERSION} on {PLATFORM}. Do not edit: regenerate with `make lock`.\n"
        f"# inputs-sha256: {inputs_digest(pyproject, profile)}\n"
    )


def compile_profile(uv: str, profile: str, upgrade: bool = False) -> None:
    """Resolve ``profile`` with uv and write locks/<profile>.txt (header first)."""
    pyproject = load_pyproject()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lock.txt"
        if lock_path(profile).exists() and not upgrade:
            # uv prefers the versions already in its output file: adding a dependency moves nothing else.
            out.write_text(lock_path(profile).read_text())
        inputs = (
            [str(TOOLS[profile].relative_to(ROOT))]
            if profile in TOOLS
            else ["pyproject.toml", "locks/build.in"]
        )
        cmd = [
            uv,
            "pip",
            "compile",
            *inputs,
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PLATFORM,
        ]
        cmd += ["--generate-hashes", "--quiet", "--custom-compile-command", "make lock"]
        cmd += ["--upgrade"] if upgrade else []
        for extra in PROFILES.get(profile, ()):
            cmd += ["--extra", extra]
        subprocess.run([*cmd, "-o", str(out)], cwd=ROOT, check=True)
        lock_path(profile).write_text(header(pyproject, profile) + out.read_text())
    print(f"lock.py: wrote {lock_path(profile).relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--uv", required=True, help="the uv executable (make lock installs a pinned one)"
    )
    parser.add_argument(
        "profiles", nargs="*", help=f"default: all of {', '.join([*PROFILES, *TOOLS])}"
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="newest versions the ranges allow (default: keep)"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.profiles) - {*PROFILES, *TOOLS})
    if unknown:
        parser.error(
            f"expected profiles among {', '.join([*PROFILES, *TOOLS])}; received {', '.join(unknown)}"
        )
    for profile in args.profiles or [*PROFILES, *TOOLS]:
        compile_profile(args.uv, profile, args.upgrade)
    return 0


if __name__ == "__main__":
    sys.exit(main())
