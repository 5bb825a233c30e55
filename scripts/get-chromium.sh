#!/usr/bin/env bash
# Provide Debian's headless-capable Chromium and its chromedriver for the browser tests.
#
# Why Debian's packages: the browser tests must not download a browser of their own (Selenium
# Manager and Playwright's installer fetch builds from hosts the test machines cannot reach), and
# Debian's chromium and chromium-driver are built from the same source, so their versions always
# match. Idempotent: does nothing when both binaries are already there. Needs root (CI runs as
# root) or sudo; a machine without apt must install chromium + chromedriver itself.
#
# Usage: scripts/get-chromium.sh
set -euo pipefail

CHROMIUM="${LEAF_CHROMIUM:-/usr/bin/chromium}"
CHROMEDRIVER="${LEAF_CHROMEDRIVER:-/usr/bin/chromedriver}"

FONT=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf  # without a font every screenshot shows boxes
if [ -x "$CHROMIUM" ] && [ -x "$CHROMEDRIVER" ] && [ -e "$FONT" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "get-chromium.sh: expected $CHROMIUM and $CHROMEDRIVER, or apt-get to install them; found neither" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "get-chromium.sh: installing chromium needs root; run: apt-get install -y chromium chromium-driver" >&2
    exit 1
  fi
  SUDO="sudo"
fi
# Other apt users on the machine (unattended upgrades, a parallel job) hold dpkg's lock: wait for it.
APT=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)
"${APT[@]}" update
"${APT[@]}" install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core
"$CHROMIUM" --version
"$CHROMEDRIVER" --version
