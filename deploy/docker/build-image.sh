#!/usr/bin/env bash
# Build an image of this project with podman, without a Docker engine or a reachable image
# registry: the base is a bare Debian bookworm root made with mmdebstrap (Debian's mirror),
# imported into podman. Usage (from the repository root, as root or with sudo):
#   deploy/docker/build-image.sh cpu [TAG]
# Environment: BASE_IMAGE (a base to use instead, e.g. python:3.11-slim-bookworm where a
# registry is reachable), WHEELS_DIR (a folder of wheels, default: pip's find-links),
# BUILD_CA_BUNDLE (a CA bundle for pip, default: pip's cert setting).
set -euo pipefail
accel=${1:-cpu}
tag=${2:-localhost/llm-gateway:$accel}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

sudo=$([ "$(id -u)" = 0 ] || echo sudo)
for pkg in podman buildah mmdebstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 && continue
  echo "installing the Debian package $pkg"
  $sudo apt-get install -y -q "$pkg" >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$pkg" >/dev/null; }
done

base=${BASE_IMAGE:-localhost/debian-bookworm-minbase:latest}
if [ -z "${BASE_IMAGE:-}" ] && ! podman image exists "$base"; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase bookworm "$tmp/rootfs.tar"
  podman import --quiet "$tmp/rootfs.tar" "$base" >/dev/null
fi

# a pip setting as pip sees it here (environment or any of its configuration files)
pip_setting() {
  python3 -m pip config list 2>/dev/null | sed -n "s/^\(global\|:env:\)\.$1='\(.*\)'$/\2/p" | head -1
}
wheels=${WHEELS_DIR-$(pip_setting find-links)}
ca=${BUILD_CA_BUNDLE-$(pip_setting cert)}
args=(--format docker --isolation=chroot -f "$here/Dockerfile.$accel" --build-arg "BASE_IMAGE=$base" -t "$tag")
if [ -n "$wheels" ] && [ -d "$wheels" ]; then
  args+=(--build-arg WHEELS_DIR=/build/wheels -v "$wheels:/build/wheels:ro")
fi
if [ -n "$ca" ] && [ -f "$ca" ]; then
  args+=(--build-arg BUILD_CA_BUNDLE=/build/ca.crt -v "$ca:/build/ca.crt:ro")
fi
podman build "${args[@]}" "$root"
echo "built $tag"
