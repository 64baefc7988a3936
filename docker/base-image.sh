#!/usr/bin/env bash
# Build the offline base image: Debian bookworm (minbase) with python3 and python3-venv,
# made with debootstrap from this machine's configured apt mirror and imported into Docker.
# Usage: docker/base-image.sh [IMAGE_NAME]   (default byoc-base:bookworm; skipped if present)
set -euo pipefail
name=${1:-byoc-base:bookworm}
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "$name exists"
  exit 0
fi
# The mirror this machine's apt uses (deb822 .sources or one-line sources.list).
mirror=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
if [[ -z "$mirror" ]]; then
  mirror=$(grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | grep -v security | awk '{print $2}' | head -n1 || true)
fi
[[ -n "$mirror" ]] || { echo "error: no apt mirror found in /etc/apt/sources.list*" >&2; exit 1; }
rootfs=$(mktemp -d /tmp/byoc-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "$name: $(docker image inspect "$name" --format '{{.Size}}' | numfmt --to=iec)"
