#!/usr/bin/env bash
# Builds an initramfs (newc cpio) whose /init (guest/init.c, static) prints a marker and the
# CPU count, then powers the VM off. With --busybox, adds busybox-static as /bin/busybox.
# No root needed: the archive, /dev/console node included, is written by guest/mkcpio.c.
#
# Usage: guest/build-initramfs.sh [--busybox] OUTPUT.cpio
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
busybox=0
if [ "${1:-}" = "--busybox" ]; then busybox=1; shift; fi
out="${1:?usage: build-initramfs.sh [--busybox] OUTPUT.cpio}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-initramfs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

gcc -static -O2 -o "$work/init" "$here/init.c"
gcc -O2 -o "$work/mkcpio" "$here/mkcpio.c"
{
  echo "dir /dev 755"
  echo "nod /dev/console 600 c 5 1"
  echo "dir /proc 755"
  echo "dir /sys 755"
  echo "dir /bin 755"
  echo "file /init $work/init 755"
  if [ "$busybox" = 1 ]; then
    [ -x /bin/busybox ] || { echo "build-initramfs: install busybox-static" >&2; exit 1; }
    echo "file /bin/busybox /bin/busybox 755"
  fi
} > "$work/spec"
"$work/mkcpio" < "$work/spec" > "$out"
echo "$out"
