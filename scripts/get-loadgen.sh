#!/usr/bin/env bash
# Provide the native load generators bench/speed_bench.py drives: wrk (HTTP/1.1, with a Lua script for
# binary v2 bodies) and h2load (HTTP/2, for gRPC), both from Debian's packages (wrk, nghttp2-client).
#
# Why native: a Python load generator on the same 2 cores measures itself as much as the server.
# Idempotent: does nothing when both are on PATH. Needs root or sudo, and apt; elsewhere install
# wrk and h2load (nghttp2) with the system's package manager.
#
# Usage: scripts/get-loadgen.sh
set -euo pipefail

if command -v wrk >/dev/null && command -v h2load >/dev/null; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" get-loadgen.sh wrk nghttp2-client
wrk --version 2>&1 | head -1 || true
h2load --version
