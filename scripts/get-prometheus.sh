#!/usr/bin/env bash
# Provide Debian's Prometheus server and promtool for the monitoring tests (tests/charts/test_monitoring.py):
# promtool checks and unit-tests the chart's alert rules; the server scrapes a real leaf-serve on loopback.
#
# Why Debian's package: nothing may download at test time, and the package brings both binaries from the
# same release. The package also installs a system service; the tests start their own server on a free
# loopback port with a throw-away config, so the service is stopped and kept from starting at boot: a
# Prometheus left running on :9090 would scrape nothing of ours and hold memory on a shared machine.
# Idempotent: does nothing when both binaries are on PATH. Needs root or sudo, and apt.
#
# Usage: scripts/get-prometheus.sh
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
"$(dirname "$0")/apt-install.sh" get-prometheus.sh prometheus

SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
# The unit is disabled (that works without a running systemd too: it removes the boot-time link) and, with
# systemd, stopped; without it (containers, CI runners) the package's init script may have started the
# daemon through invoke-rc.d: stop that too.
if command -v systemctl >/dev/null; then
  "${SUDO[@]}" systemctl disable prometheus.service >/dev/null 2>&1 || true
  [ -d /run/systemd/system ] && { "${SUDO[@]}" systemctl stop prometheus.service >/dev/null 2>&1 || true; }
fi
if [ -x /etc/init.d/prometheus ]; then
  "${SUDO[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  command -v update-rc.d >/dev/null && { "${SUDO[@]}" update-rc.d prometheus disable >/dev/null 2>&1 || true; }
fi
# The service runs as the package's user; a test's own Prometheus (any other user) is none of our business.
if pgrep -u prometheus -x prometheus >/dev/null 2>&1; then
  echo "get-prometheus.sh: expected the packaged prometheus service to be stopped; it still runs:" >&2
  pgrep -a -u prometheus -x prometheus >&2
  exit 1
fi
prometheus --version | sed -n 1p  # sed reads to the end: no SIGPIPE for pipefail to see
promtool --version | sed -n 1p
