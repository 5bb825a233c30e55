#!/usr/bin/env bash
# One prepared GPU check (issue 19): prints ONE JSON document on stdout (also under $OUT when set, with
# gpu_check.md, gpu_check.log and server.log, and under --out DIR): ONNX Runtime in process on CUDA (and
# TensorRT when it loads) at batch 1, 8, 32, 64; leaf-serve on the same GPU over binary REST (wrk) and
# gRPC (h2load) at rising concurrency up to saturation, with GPU utilisation from nvidia-smi at each
# point; the training step with device and host augmentation where TensorFlow imports. Budget: 8 minutes
# from this script's start (--budget-s). Progress goes to stderr. Exit codes and sections: the docstring
# of bench/gpu_check.py (BENCHMARKS.md, "Running the GPU check", has both and the timings).
#
# A GPU node with network:     pip install -e '.[serve-gpu]'; scripts/get-loadgen.sh; bench/gpu_check.sh
# A GPU machine without network (the lent one: no onnxruntime-gpu, no starlette/uvicorn, no wrk/h2load,
# at most 64 MiB carried per call). Prepare here, where PyPI and Debian's packages are reachable:
#
#   bench/gpu_check.sh --prepare .cache/gpu-check
#
# which downloads the pinned wheels (locks/serve-gpu.txt, for CPython 3.12 on manylinux x86-64) and
# copies wrk and h2load with their libraries, packs them into one archive and splits it into
# .cache/gpu-check/carry-1 ... carry-N (each 56 MiB at most), and prints the device calls. Then on the
# machine, N calls in a row while it stays warm (each carries one folder; the parts are kept in
# /tmp/leaf-gpu-check between calls):
#
#   bench/gpu_check.sh --stash .cache/gpu-check                 # calls 1 .. N-1, carry carry-K
#   bench/gpu_check.sh --wheelhouse .cache/gpu-check            # call N, carry carry-N: the check
#
# --wheelhouse checks the archive's sha256, installs the wheels with pip --target (nothing outside
# /tmp/leaf-gpu-check changes) and puts wrk/h2load on PATH behind wrappers that point them at their own
# libraries; where either does not run there, the check falls back to its Python load loop and says so.
# --providers cpu (or --cpu-dry-run) runs everything on the CPU: the test suite's dry run.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STARTED="$(date +%s.%N)"
HOME_DIR="${GPU_CHECK_HOME:-/tmp/leaf-gpu-check}"
PART_BYTES=$((56 * 1024 * 1024))  # + the tree (~4 MiB) under the 64 MiB a call carries
# What the lent machine lacks or has in another version: the server's extra (pyproject [serve-gpu]) less
# numpy, pillow and the NVIDIA libraries that PyTorch brings there; protobuf for the gencode's minimum.
WHEELS="onnxruntime-gpu starlette uvicorn httptools uvloop python-multipart prometheus-client grpcio protobuf"
PY_VERSION="${GPU_CHECK_PYTHON_VERSION:-3.12}"

# $PYTHON if set, else the project's .venv where there is one (a dangling link on a lent machine), else python3.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"
fi

say() { echo "gpu_check.sh: $*" >&2; }

# fail CODE CLASS MESSAGE: the one JSON document, even when the check never started.
fail() {
  say "$3"
  local doc
  doc="$("$PYTHON" -c 'import json, sys
print(json.dumps({"check": "leaf-train bench/gpu_check.sh", "status": "failed", "exit_code": int(sys.argv[1]),
                  "failure": sys.argv[2], "error": sys.argv[3]}, indent=1))' "$1" "$2" "$3")"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && printf '%s\n' "$doc" >"$OUT/gpu_check.json"; fi
  printf '%s\n' "$doc"
  exit "$1"
}

prepare() {
  local dir="$1" stage
  stage="$(mktemp -d)"
  mkdir -p "$stage/wheels" "$stage/loadgen/bin" "$stage/loadgen/lib"
  local pins=()
  for name in $WHEELS; do
    pin="$(grep -E "^${name}==" "$ROOT/locks/serve-gpu.txt" | head -1 | cut -d' ' -f1)"
    [ -n "$pin" ] || { say "expected $name pinned in locks/serve-gpu.txt; found none"; exit 2; }
    pins+=("$pin")
  done
  say "downloading ${pins[*]} for CPython $PY_VERSION"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$stage/wheels" "${pins[@]}"
  "$ROOT/scripts/get-loadgen.sh" >&2
  for tool in wrk h2load; do
    cp "$(command -v $tool)" "$stage/loadgen/bin/"
    # Their libraries except glibc's own (the machine's glibc is used; it is at least as new as Debian 12's).
    ldd "$(command -v $tool)" | awk '/=> \// {print $3}' |
      grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' | xargs -r cp -L -t "$stage/loadgen/lib/"
  done
  rm -rf "$dir" && mkdir -p "$dir"
  tar -C "$stage" -cf "$dir/bundle.tar" wheels loadgen
  rm -rf "$stage"
  local sha size parts
  sha="$(sha256sum "$dir/bundle.tar" | cut -d' ' -f1)"
  size="$(stat -c %s "$dir/bundle.tar")"
  parts=$(((size + PART_BYTES - 1) / PART_BYTES))
  split -b "$PART_BYTES" -d -a 2 "$dir/bundle.tar" "$dir/bundle.part-"
  rm "$dir/bundle.tar"
  local k=1
  for part in "$dir"/bundle.part-*; do
    mkdir -p "$dir/carry-$k"
    mv "$part" "$dir/carry-$k/"
    printf '%s %s\n' "$sha" "$parts" >"$dir/carry-$k/bundle.sha256"
    k=$((k + 1))
  done
  say "wrote $parts parts of $size bytes in all (sha256 $sha) under $dir"
  echo "On the GPU machine, $parts calls in a row while it stays warm (a call every few seconds):"
  for k in $(seq 1 "$parts"); do
    if [ "$k" -lt "$parts" ]; then
      echo "  carry [\"$dir/carry-$k\"]   command: bench/gpu_check.sh --stash $dir"
    else
      echo "  carry [\"$dir/carry-$k\"]   command: bench/gpu_check.sh --wheelhouse $dir   (timeout_s 600)"
    fi
  done
}

# stash DIR: keep every carried part in $HOME_DIR/parts; print which parts are there of how many.
stash() {
  mkdir -p "$HOME_DIR/parts"
  for carry in "$1"/carry-*; do
    [ -d "$carry" ] || continue
    cp "$carry"/bundle.part-* "$carry"/bundle.sha256 "$HOME_DIR/parts/"
  done
  if [ ! -f "$HOME_DIR/parts/bundle.sha256" ]; then
    fail 6 wheelhouse_incomplete "expected $1/carry-*/bundle.sha256 (made by --prepare); found none"
  fi
  read -r WANT_SHA WANT_PARTS <"$HOME_DIR/parts/bundle.sha256"
  HAVE_PARTS="$(find "$HOME_DIR/parts" -name 'bundle.part-*' | wc -l)"
  say "parts here: $HAVE_PARTS of $WANT_PARTS ($(cd "$HOME_DIR/parts" && echo bundle.part-* | tr '\n' ' '))"
}

install_wheelhouse() {
  stash "$1"
  if [ "$HAVE_PARTS" -ne "$WANT_PARTS" ]; then
    fail 6 wheelhouse_incomplete "expected $WANT_PARTS parts of the wheelhouse; $HAVE_PARTS are here: run --stash with each"
  fi
  if [ "$(cat "$HOME_DIR/installed" 2>/dev/null)" != "$WANT_SHA" ]; then
    local got
    got="$(cat "$HOME_DIR"/parts/bundle.part-* | sha256sum | cut -d' ' -f1)"
    [ "$got" = "$WANT_SHA" ] || fail 6 wheelhouse_incomplete "wheelhouse sha256: expected $WANT_SHA; received $got"
    rm -rf "$HOME_DIR/bundle" "$HOME_DIR/site" && mkdir -p "$HOME_DIR/bundle"
    cat "$HOME_DIR"/parts/bundle.part-* | tar -C "$HOME_DIR/bundle" -xf -
    say "installing $(ls "$HOME_DIR/bundle/wheels" | wc -l) wheels into $HOME_DIR/site"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$HOME_DIR/site" \
      "$HOME_DIR"/bundle/wheels/*.whl >&2
    echo "$WANT_SHA" >"$HOME_DIR/installed"
  fi
  mkdir -p "$HOME_DIR/bin"
  LOADGEN_NOTES=""
  for tool in wrk h2load; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$HOME_DIR/bundle/loadgen/lib" \
      "$HOME_DIR/bundle/loadgen/bin/$tool" >"$HOME_DIR/bin/$tool"
    chmod +x "$HOME_DIR/bin/$tool"
    # wrk -v exits 1 after printing its version; what matters is that it loads and prints it.
    version="$("$HOME_DIR/bin/$tool" --version 2>&1 || true)"
    case "$version" in
      wrk* | h2load*) say "$tool runs here: ${version%%$'\n'*}" ;;
      *)
        LOADGEN_NOTES="$LOADGEN_NOTES $tool: the carried binary does not run here (${version%%$'\n'*});"
        rm "$HOME_DIR/bin/$tool"
        ;;
    esac
  done
  export PATH="$HOME_DIR/bin:$PATH"
}

ARGS=()
MODE=check
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare | --stash | --wheelhouse)
      [ $# -ge 2 ] || fail 2 bad_options "$1: expected a folder; received nothing"
      MODE="${1#--}" DIR="$2"
      shift 2
      ;;
    *) ARGS+=("$1") && shift ;;
  esac
done

# The whole log (this script's, the check's, ONNX Runtime's) beside the JSON: a device call returns only
# the tail of its output, mostly the JSON.
if [ -n "${OUT:-}" ] && [ "$MODE" != prepare ]; then
  mkdir -p "$OUT"
  exec 2> >(tee -a "$OUT/gpu_check.log" >&2)
fi
case "$MODE" in
  prepare) prepare "$DIR" && exit 0 ;;
  stash) stash "$DIR" && exit 0 ;;
  wheelhouse) install_wheelhouse "$DIR" ;;
esac
export PYTHONPATH="$ROOT/serve:$ROOT/job${PYTHONPATH:+:$PYTHONPATH}"
# The wheelhouse's site folder stays first: its onnxruntime-gpu must win over a CPU onnxruntime.
[ "$MODE" = wheelhouse ] && export PYTHONPATH="$HOME_DIR/site:$PYTHONPATH"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
  fail 4 missing_packages "expected Python >= 3.11 as $PYTHON; found $("$PYTHON" --version 2>&1 || echo none)"
SETUP="$("$PYTHON" -c 'import json, sys
print(json.dumps({"wheelhouse": sys.argv[1] or None, "python": sys.executable, "loadgen_notes": sys.argv[2].strip() or None}))' \
  "${DIR:+$HOME_DIR (from $DIR)}" "${LOADGEN_NOTES:-}")"
export PYTHONUNBUFFERED=1
exec "$PYTHON" "$ROOT/bench/gpu_check.py" --started-at "$STARTED" --setup "$SETUP" "${ARGS[@]}"
