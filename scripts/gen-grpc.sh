#!/usr/bin/env bash
# Regenerate serve/leaf_serve/grpc_v2/inference_pb2.py (the messages) from inference.proto with the pinned
# grpcio-tools (dev extra). The generated file is committed: the serving image needs no protoc. The service
# is registered by hand under the protocol's wire name (see service.py), so no _grpc stub is generated.
# Usage: scripts/gen-grpc.sh [OUT_DIR]   (default: the package folder; tests pass a temporary one)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
PKG="$ROOT/serve/leaf_serve/grpc_v2"
OUT="${1:-$PKG}"
mkdir -p "$OUT"
"$PYTHON" -m grpc_tools.protoc --proto_path="$PKG" --python_out="$OUT" "$PKG/inference.proto"
