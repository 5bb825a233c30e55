#!/usr/bin/env bash
# Regenerate k8s/ (plain manifests for users without Helm) from the chart's default render.
#
# One file per object kind keeps diffs readable; tests/k8s/test_manifests.py fails when k8s/
# and the chart drift apart, so run this after every chart change and commit the result.
# Usage: scripts/render-k8s.sh [--check]   (--check: exit 1 if k8s/ is stale, write nothing)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HELM="${HELM:-$ROOT/.tools/bin/helm}"
[ -x "$HELM" ] || HELM="$(command -v helm || true)"
if [ -z "$HELM" ]; then
  echo "render-k8s.sh: expected helm in .tools/bin (run scripts/get-helm.sh) or on PATH; found none" >&2
  exit 2
fi
PYTHON="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
exec "$PYTHON" "$ROOT/scripts/render_k8s.py" --helm "$HELM" "$@"
