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
"$(dirname "$0")/apt-install.sh" get-chromium.sh chromium chromium-driver fonts-dejavu-core
"$CHROMIUM" --version
"$CHROMEDRIVER" --version
