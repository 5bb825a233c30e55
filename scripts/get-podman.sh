#!/usr/bin/env bash
# Make sure a container engine that can build and run images is present; install podman if not.
#
# A `docker` binary is not enough: a docker client with no daemon behind it builds nothing, so the
# test is `<engine> info`, not `command -v`. Where no engine works and this is a root shell with
# apt (CI's fresh Debian machines), install Debian's podman with runc (crun refuses these hosts'
# hybrid cgroups) and mmdebstrap (the local base image when no registry is reachable). Podman runs
# with the project's scripts/containers.conf (CONTAINERS_CONF), never a machine-wide edit.
#
# ENGINE=podman or ENGINE=docker asks for that one (the container tests need podman: kube play).
# Prints the working engine on stdout; exits 2 naming what is missing when none can be had.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/scripts/containers.conf}"
want="${ENGINE:-}"

works() { command -v "$1" >/dev/null && timeout 60 "$1" info >/dev/null 2>&1; }

for engine in podman docker; do
  if [ -z "$want" ] || [ "$want" = "$engine" ]; then
    works "$engine" && { echo "$engine"; exit 0; }
  fi
done
if [ "$want" = docker ]; then
  echo "get-podman.sh: ENGINE=docker was asked for, but 'docker info' fails (no daemon?)" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "get-podman.sh: expected a working ${want:-docker or podman} ('<engine> info' succeeds), or root" \
       "with apt-get to install podman; found neither (uid $(id -u))" >&2
  exit 2
fi
echo "get-podman.sh: no working ${want:-container engine}; installing podman, runc and mmdebstrap with apt" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq -o Dpkg::Use-Pty=0 podman runc mmdebstrap >/dev/null
if ! works podman; then
  echo "get-podman.sh: podman installed, but 'podman info' still fails:" >&2
  podman info >&2 || true
  exit 2
fi
echo podman
