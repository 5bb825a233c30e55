"""Install the entries of a lock whose names match, hash-checked, without dependencies (the Dockerfiles' helper).

Why in parts: one ``pip install -r <lock>`` puts the whole venv (6 GB for the GPU training image) in one
image layer, and committing a layer needs about four times its size of free disk for a moment (podman 4.3 /
buildah 1.28 write it out as a tar twice before unpacking it; docs/images.md). One RUN per part (cuDNN,
cuBLAS, ..., TensorFlow) bounds that to the largest part. The Dockerfile's last install is the whole lock,
which installs what is left and checks that the parts add up to it.

Usage (in a RUN with the build context bind-mounted at /context)::

    python install_part.py LOCK REGEX [REGEX ...]

installs every pin of LOCK whose (normalised) name matches one of the regular expressions; none is fine
(the CPU flavour has no CUDA wheels). With ``WHEELHOUSE`` set (a folder of the build context, see
scripts/images.py) pip installs from it alone; otherwise from the index.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile


def pins(lock_text: str) -> dict[str, str]:
    """Normalised name -> its requirement lines (the pin and its ``--hash`` lines), in lock order."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lock_text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = re.sub(r"[-_.]+", "-", re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]).lower()
            current = entries[name] = [line]
        elif current is not None and line.strip().startswith("--hash="):
            current.append(line)
    return {name: "\n".join(lines) for name, lines in entries.items()}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(f"usage: {sys.argv[0]} LOCK REGEX [REGEX ...]; received {argv}", file=sys.stderr)
        return 2
    lock, patterns = argv[0], [re.compile(p) for p in argv[1:]]
    with open(lock) as f:
        chosen = {n: e for n, e in pins(f.read()).items() if any(p.match(n) for p in patterns)}
    if not chosen:
        print(f"install_part: no pin of {lock} matches {argv[1:]}: nothing to install")
        return 0
    print(f"install_part: {', '.join(chosen)}", flush=True)
    wheelhouse = os.environ.get("WHEELHOUSE", "")
    source = ["--no-index", "--find-links", f"/context/{wheelhouse}"] if wheelhouse else []
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as part:
        part.write("\n".join(chosen.values()) + "\n")
        part.flush()
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", part.name, *source]
        return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
