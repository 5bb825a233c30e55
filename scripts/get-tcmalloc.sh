#!/usr/bin/env bash
# Print the path of gperftools' tcmalloc (libtcmalloc_minimal.so.4), installing Debian's
# libtcmalloc-minimal4 first when it is missing. `make test` preloads it into the suite (LD_PRELOAD): the
# allocator TensorFlow's performance guide recommends. TensorFlow, tf2onnx and ONNX Runtime allocate and
# free buffers of megabytes many times per training step and per conversion; glibc gives each back to the
# kernel and faults it in again page by page, tcmalloc keeps them (docs/development.md has the numbers).
# Idempotent: only prints the path when the library is there. Needs root or sudo, and apt, to install.
#
# Usage: scripts/get-tcmalloc.sh
set -euo pipefail

find_lib() {
  local ldconfig
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  # awk reads to the end: an early `exit` would let ldconfig die of SIGPIPE, which pipefail then
  # turns into this script failing with 141 whenever ldconfig had not finished writing.
  "$ldconfig" -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 / && !found {print $NF; found = 1}'
}

lib=$(find_lib)
if [ -z "$lib" ]; then
  "$(dirname "$0")/apt-install.sh" get-tcmalloc.sh libtcmalloc-minimal4 >&2
  lib=$(find_lib)
fi
if [ -z "$lib" ] || [ ! -e "$lib" ]; then
  echo "get-tcmalloc.sh: expected libtcmalloc_minimal.so.4 after installing libtcmalloc-minimal4; ldconfig does not list it" >&2
  exit 1
fi
echo "$lib"
