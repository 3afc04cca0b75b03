#!/usr/bin/env bash
# Builds a local Python base image (Debian bookworm + python3 3.11) without pulling anything
# from a public container registry: debootstrap a minimal root file system from the Debian
# mirror apt already uses, pack it as a tarball, then `buildah bud` a FROM-scratch image on it.
#
#   scripts/build-base-image.sh [TAG] [CACHE_DIR]
#
# TAG defaults to localhost/python-base:3.11, CACHE_DIR to .cache/deploy (git-ignored). The
# rootfs tarball is kept in CACHE_DIR so a second run takes seconds; an image already in the
# local container storage is left alone. Needs root, debootstrap and buildah.
set -euo pipefail

TAG="${1:-localhost/python-base:3.11}"
CACHE="${2:-$(cd "$(dirname "$0")/.." && pwd)/.cache/deploy}"
mkdir -p "$CACHE"

if buildah images --quiet "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG already present"
  exit 0
fi

mirror() {
  # The Debian mirror apt is configured with (deb822 sources first, then the one-line form).
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

ROOTFS_TAR="$CACHE/rootfs-bookworm-python3.tar"
work="" ctx=""
trap 'rm -rf "$work" "$ctx"' EXIT
if [ ! -s "$ROOTFS_TAR" ]; then
  work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  echo "debootstrap bookworm from $(mirror) (about a minute) ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Smaller image: no apt lists, docs or caches the runtime never reads.
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/* \
    "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/locale/*
  tar -C "$work/rootfs" -cf "$ROOTFS_TAR.partial" .
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
fi

ctx="$(mktemp -d "$CACHE/context.XXXXXX")"
ln "$ROOTFS_TAR" "$ctx/rootfs.tar" 2>/dev/null || cp "$ROOTFS_TAR" "$ctx/rootfs.tar"
cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
buildah bud --quiet --isolation chroot --pull=never -t "$TAG" -f "$ctx/Containerfile" "$ctx"
echo "built base image $TAG"
