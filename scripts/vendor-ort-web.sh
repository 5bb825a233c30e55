#!/usr/bin/env bash
# Vendor ONNX Runtime Web (the offline page's in-browser runtime) into serve/leaf_serve/ui/vendor/.
#
# Why vendored and not from a CDN: the page must work where the network is not, and an air-gapped
# cluster must serve the same page; everything it loads comes from leaf-serve itself. Why fetched at
# build time and not committed: the one WebAssembly file is 14.8 MB and every upgrade would add that
# much to the history for good. `make test`, `make images` and `make demo` run this script (like
# scripts/get-chromium.sh); it does nothing when the pinned files are already there.
#
# The tarball comes from the npm registry through npm's own client (`npm pack`) and is checked
# against the sha512 integrity committed here before anything is copied out of it. Only what the
# WASM backend needs is kept: ort.wasm.min.mjs (the API, an ES module), ort-wasm-simd-threaded.mjs
# (Emscripten's glue) and ort-wasm-simd-threaded.wasm (the CPU kernels). The npm package declares
# "license": "MIT" but ships no licence text, so onnxruntime's MIT licence is committed beside this
# script (scripts/onnxruntime-web.LICENSE) and copied with the files.
#
# Usage: scripts/vendor-ort-web.sh            (needs npm; root not needed)
set -euo pipefail

VERSION=1.31.1
INTEGRITY="sha512-5GeH+bWQ+HxM10z7erGlsWqryrwMbSvm/1tkIsKTT48g0fI19VXVVC435t4t7VsPdSQeS7NmuZPXrQ73k82URw=="
FILES=(ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm)

HERE="$(cd "$(dirname "$0")" && pwd)"
DEST="${LEAF_ORT_WEB_DIR:-$HERE/../serve/leaf_serve/ui/vendor}"
STAMP="$DEST/VERSION"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "onnxruntime-web@$VERSION" ] \
  && for f in "${FILES[@]}" LICENSE; do [ -s "$DEST/$f" ] || exit 1; done; then
  exit 0
fi
command -v npm >/dev/null || { echo "vendor-ort-web.sh: expected npm on PATH (apt-get install npm)" >&2; exit 2; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null)
TARBALL="$WORK/onnxruntime-web-$VERSION.tgz"
GOT="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then
  echo "vendor-ort-web.sh: onnxruntime-web@$VERSION: expected integrity $INTEGRITY; received $GOT" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK" package/package.json "${FILES[@]/#/package/dist/}"
grep -q '"license": "MIT"' "$WORK/package/package.json" \
  || { echo "vendor-ort-web.sh: expected the MIT licence in package.json" >&2; exit 1; }

mkdir -p "$DEST"
for f in "${FILES[@]}"; do cp "$WORK/package/dist/$f" "$DEST/$f"; done
cp "$HERE/onnxruntime-web.LICENSE" "$DEST/LICENSE"
echo "onnxruntime-web@$VERSION" >"$STAMP"  # last: a run stopped half-way is redone next time
echo "vendored onnxruntime-web@$VERSION into $DEST ($(du -sh "$DEST" | cut -f1))"
