#!/usr/bin/env bash
# Builds an ext4 root disk image holding guest/init.c as a static /init (and, with --busybox,
# busybox-static as /bin/busybox), written by mke2fs -d from a staging directory: no root
# privileges, no loop device. Boot it with
#   rypervisor boot --kernel vmlinux --drive path=OUTPUT.ext4,root --cmdline init=/init
#
# Usage: guest/build-rootfs.sh [--busybox] OUTPUT.ext4 [SIZE_MIB (default 32)]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
busybox=0
if [ "${1:-}" = "--busybox" ]; then busybox=1; shift; fi
out="${1:?usage: build-rootfs.sh [--busybox] OUTPUT.ext4 [SIZE_MIB]}"
size="${2:-32}"
command -v mke2fs >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
command -v mke2fs >/dev/null || { echo "build-rootfs: install e2fsprogs (mke2fs)" >&2; exit 1; }
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-rootfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root"/{dev,proc,sys,bin,tmp}
gcc -static -O2 -o "$work/root/init" "$here/init.c"
if [ "$busybox" = 1 ]; then
  [ -x /bin/busybox ] || { echo "build-rootfs: install busybox-static" >&2; exit 1; }
  cp /bin/busybox "$work/root/bin/busybox"
fi
rm -f "$out"
mke2fs -q -F -t ext4 -L rypervisor-root -d "$work/root" "$out" "${size}M" >&2
echo "$out"
