#!/usr/bin/env bash
# Accelerator check for leaf-serve: run on a machine with an NVIDIA GPU and onnxruntime-gpu.
#
#   pip install -e '.[serve-gpu]'          # onnxruntime-gpu instead of onnxruntime (+ '.[train]' to export VGG16 here)
#   bench/gpu_check.sh [--out DIR] [--model path/to/model.onnx] [--fp16] [--runs N] [--scale X]
#
# 1. the driver sees a GPU (nvidia-smi), 2. onnxruntime offers CUDAExecutionProvider, 3. the model's
# heavy ops really run on CUDA (ORT's profiler, not just the provider list), 4. throughput and latency
# CUDA vs CPU on the same model, in process and through leaf-serve over HTTP. Writes DIR/report.md and
# DIR/report.json (default DIR: gpu-check-<timestamp>). Exit 0 only when CUDA is really in use.
# `--cpu-dry-run` checks the script on a machine without a GPU; its figures are CPU figures.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
OUT="gpu-check-$(date -u +%Y%m%dT%H%M%SZ)"
DRY=0
for arg in "$@"; do [ "$arg" = "--cpu-dry-run" ] && DRY=1; done

GPU="none (dry run)"
if [ "$DRY" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check.sh: expected nvidia-smi (NVIDIA driver) on PATH; found none" >&2
    exit 2
  fi
  GPU="$(nvidia-smi -L | head -1); driver $(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)"
  echo "GPU: $GPU"
  if ! "$PYTHON" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    echo "gpu_check.sh: expected onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime has only:" >&2
    "$PYTHON" -c 'import onnxruntime as o; print(o.__version__, o.get_available_providers())' >&2
    echo "install it with: pip install -e '.[serve-gpu]'" >&2
    exit 3
  fi
fi
exec "$PYTHON" "$ROOT/bench/gpu_check.py" --out "$OUT" --gpu-name "$GPU" "$@"
