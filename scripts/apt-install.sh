#!/usr/bin/env bash
# Install Debian packages for the project's set-up scripts (get-chromium.sh, get-loadgen.sh): as root or
# through sudo, waiting for another apt user's lock (unattended upgrades, a parallel job) instead of failing.
#
# Usage: scripts/apt-install.sh CALLER PACKAGE...   (CALLER names the script in error messages)
set -euo pipefail
caller="$1"
shift
if ! command -v apt-get >/dev/null; then
  echo "$caller: expected apt-get to install $*; found none (install them with this system's package manager)" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "$caller: installing needs root or sudo; found neither. Run as root: apt-get install -y $*" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends "$@"
