#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel (the newest linux-image-*-cloud-amd64 the package
# index knows) into the cache and prints the path of its bzImage (/boot/vmlinuz-*).
# Used by the bzImage boot test; any distribution kernel boots the same way.
#
# Env: RYPERVISOR_CACHE (default ~/.cache/rypervisor)
set -euo pipefail
cache="${RYPERVISOR_CACHE:-$HOME/.cache/rypervisor}/stock-kernel"
pkg="$(apt-cache search --names-only '^linux-image-[0-9.]+-[0-9]+-cloud-amd64$' | cut -d' ' -f1 | sort -V | tail -1)"
if [ -z "$pkg" ]; then
  echo "fetch-stock-kernel: no linux-image-*-cloud-amd64 in the package index (apt-get update?)" >&2
  exit 1
fi
dir="$cache/$pkg"
if ! ls "$dir"/boot/vmlinuz-* >/dev/null 2>&1; then
  mkdir -p "$cache"
  tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
  chmod 755 "$tmp" # apt-get download drops to the _apt user
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "$pkg" >&2)
  dpkg-deb -x "$tmp"/*.deb "$tmp/root"
  rm -rf "$dir"
  mv "$tmp/root" "$dir"
fi
ls "$dir"/boot/vmlinuz-* | head -1
