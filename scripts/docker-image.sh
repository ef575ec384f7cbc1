#!/usr/bin/env bash
# Builds the keel:local image without any registry: the release binary and every shared library
# it needs (as ldd lists them, plus the dynamic loader) are staged into a root file system and
# copied into an image FROM scratch. Usage: scripts/docker-image.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-keel:local}"
scripts/setup.sh
cargo build --release -p keel --bin keel
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs/data" "$stage/rootfs/tmp"
cp target/release/keel "$stage/rootfs/keel"
# Every library ldd resolves, at the same path inside the image, and the loader.
ldd target/release/keel | awk '/=> \//{print $3} /^[[:space:]]*\//{print $1}' | sort -u | while read -r lib; do
  mkdir -p "$stage/rootfs$(dirname "$lib")"
  cp -L "$lib" "$stage/rootfs$lib"
done
# glibc reads these when resolving service names; docker mounts /etc/hosts and resolv.conf.
mkdir -p "$stage/rootfs/etc"
printf 'hosts: files dns\n' > "$stage/rootfs/etc/nsswitch.conf"
cp docker/Dockerfile "$stage/Dockerfile"
docker build -q -t "$tag" "$stage" >/dev/null
echo "built $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
