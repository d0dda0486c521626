#!/usr/bin/env bash
# Builds a micro-VM guest kernel (vmlinux + bzImage) from Debian's linux-source-6.1 with the
# config fragment and patch in guest/kernel/, and caches the result outside the source tree,
# keyed by fragment + patch + this script + the linux-source package version: only the first
# build on a machine pays (~3.5 min on 2 cores).
#
# Usage: guest/build-kernel.sh            prints the directory holding vmlinux and bzImage
# Env:   RYPERVISOR_CACHE (default ~/.cache/rypervisor), JOBS (default: all CPUs)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${RYPERVISOR_CACHE:-$HOME/.cache/rypervisor}"
tarball=/usr/src/linux-source-6.1.tar.xz

need=()
[ -f "$tarball" ] || need+=(linux-source-6.1)
for tool in bc flex bison make gcc cpio patch xz:xz-utils perl:perl-base lz4; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
[ -f /usr/include/libelf.h ] || need+=(libelf-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "build-kernel: installing ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

version="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
key="$( (cat "$here/kernel/microvm.config" "$here/kernel/nested-pvm-syscall.patch" "$0"; echo "$version") \
  | sha256sum | cut -c1-16)"
out="$cache/guest-kernel/$key"
if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
  echo "$out"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-kernel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "build-kernel: building linux-source-6.1 $version in $work (key $key)" >&2
tar -xf "$tarball" -C "$work"
src="$work/linux-source-6.1"
cd "$src"
patch -p1 --quiet < "$here/kernel/nested-pvm-syscall.patch"
make -s tinyconfig >&2
scripts/kconfig/merge_config.sh -m .config "$here/kernel/microvm.config" >/dev/null
make -s olddefconfig >&2
# olddefconfig silently drops options whose dependencies are unmet: every =y of the fragment
# must have survived.
missing=""
for option in $(grep -E '^CONFIG_[A-Z0-9_]+=y' "$here/kernel/microvm.config" | cut -d= -f1); do
  grep -q "^$option=y" .config || missing="$missing $option"
done
if [ -n "$missing" ]; then
  echo "build-kernel: the final .config lacks options the fragment sets:$missing" >&2
  exit 1
fi
make -s -j"${JOBS:-$(nproc)}" vmlinux bzImage >&2
mkdir -p "$out.tmp"
cp vmlinux "$out.tmp/vmlinux"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "build-kernel: done: $out" >&2
echo "$out"
