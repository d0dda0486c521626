#!/usr/bin/env bash
# Runs every fuzz target for a fixed time (default 60 s each) with seed corpora made from the
# tests' own inputs, so a regression that panics fails CI. cargo-fuzz builds with sanitizer
# flags that need a nightly compiler; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
#
# Usage: scripts/fuzz-ci.sh [SECONDS] [TARGET...]
# Seeds: static C programs from crates/rypervisor/tests/programs (program), the recipe
# kernel's bzImage and vmlinux heads when guest/build-kernel.sh has cached them (kernel),
# tiny flat and ELF guests (image), sizes (size), random registers (syscall, and syscall_fs
# for the file-system calls under a policy with a root and a secret beside it), a driver's
# set-up (virtio_mmio), a vsock session with out-of-band bytes and a passed descriptor
# (vsock_tx), two block requests (block_request) and
# a few frames (net_frames).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(size image program kernel syscall syscall_fs virtio_mmio vsock_tx block_request net_frames)
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

seeds="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-seeds.XXXXXX")"
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds"/{size,image,program,kernel,syscall,syscall_fs,virtio_mmio,vsock_tx,block_request,net_frames}
printf '64M' >"$seeds/size/a"; printf '2G' >"$seeds/size/b"; printf '0x1000' >"$seeds/size/c"
printf '\xba\xf8\x03\x00\xd8\x04\x30\xee\xb0\x0a\xee\xf4' >"$seeds/image/lwn"
for prog in hello args files; do
  gcc -static -O2 -o "$seeds/program/$prog-glibc" "crates/rypervisor/tests/programs/$prog.c"
  if command -v musl-gcc >/dev/null; then
    musl-gcc -static -O2 -o "$seeds/program/$prog-musl" "crates/rypervisor/tests/programs/$prog.c"
  fi
done
cp "$seeds/program/hello-glibc" "$seeds/image/elf64"
cache="${RYPERVISOR_CACHE:-$HOME/.cache/rypervisor}/guest-kernel"
for k in "$cache"/*/vmlinux "$cache"/*/bzImage; do
  [ -f "$k" ] && head -c 65536 "$k" >"$seeds/kernel/$(basename "$k")"
done
head -c 2048 /dev/urandom >"$seeds/syscall/random"
head -c 2048 /dev/urandom >"$seeds/syscall_fs/random"
# A driver's set-up of the rng's one queue: status steps, features, queue registers, kick.
python3 - "$seeds/virtio_mmio/setup" <<'PY'
import struct, sys
ops = [(0x70, 0), (0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x24, 0), (0x20, 0), (0x70, 11),
       (0x30, 0), (0x38, 16), (0x80, 0x1000), (0x84, 0), (0x90, 0x2000), (0x94, 0), (0xa0, 0x3000),
       (0xa4, 0), (0x44, 1), (0x70, 15), (0x50, 0)]
out = b"".join(struct.pack("<HBI", off, 2 | 0x40, v) for off, v in ops)
open(sys.argv[1], "wb").write(out)
PY

# vsock: a guest connects to host port 80 and sends bytes; a host program connects to guest
# port 1234; the guest answers; the device's packets are collected.
python3 - "$seeds/vsock_tx/session" <<'PY'
import struct, sys
def hdr(op, sport, dport, length=0, flags=0):
    return struct.pack("<QQIIIHHIII", 3, 2, sport, dport, length, 1, op, flags, 65536, 0)
recs = [(0x80, hdr(1, 7, 80)), (0xc0, hdr(5, 7, 80, 5) + b"hello"), (4, b""),
        (2, b"CONNECT 1234\n"), (4, b""), (0x80, hdr(2, 1234, 1 << 30)), (3, b"data"), (4, b""),
        (5, b"!"), (6, b"fd"), (3, b"more"), (0x45, b"?"), (0x46, b"fd"), (4, b""),
        (0x80, hdr(4, 7, 80, 0, 3)), (4, b"")]
open(sys.argv[1], "wb").write(b"".join(bytes([k, len(b)]) + b for k, b in recs))
PY

# virtio-blk: a read of sector 1 (header at 0x8000, data at 0x9000, status at 0xa000), then a
# discard of two segments; the image writable with FLUSH.
python3 - "$seeds/block_request/session" <<'PY'
import struct, sys
def desc(addr, length, writable):
    return struct.pack("<I", addr)[:3] + struct.pack("<H", length) + bytes([8 if writable else 0])
read = bytes([2]) + desc(0x8000, 16, 0) + desc(0x9000, 512, 1) + desc(0xa000, 1, 1)
read += struct.pack("<IIQ", 0, 0, 1) + bytes(16)
discard = bytes([2]) + desc(0x8000, 16, 0) + desc(0x8010, 16, 0) + desc(0xa000, 1, 1)
discard += struct.pack("<IIQ", 11, 0, 0) + struct.pack("<QII", 4, 8, 0)
open(sys.argv[1], "wb").write(bytes([2]) + read + discard)
PY

# virtio-net, both checksum offloads acknowledged (the first byte): an RX buffer, a frame from
# the tap, a TX chain (header + frame), then a 64-byte RX buffer and a 200-byte frame too long
# for it.
python3 - "$seeds/net_frames/session" <<'PY'
import struct, sys
def desc(addr, length, writable):
    return struct.pack("<I", addr)[:3] + struct.pack("<H", length) + bytes([1 if writable else 0])
def frame(b):
    return bytes([2, 0]) + struct.pack("<H", len(b)) + b
recs = bytes([3]) + bytes([1, 0]) + desc(0x8000, 1526, 1)
recs += frame(bytes(12) + b"frame-bytes!")
recs += bytes([0, 1]) + desc(0x9000, 12, 0) + desc(0x9100, 60, 0) + bytes([3, 0])
recs += bytes([1, 0]) + desc(0xa000, 64, 1) + frame(bytes(200)) + bytes([3, 0])
open(sys.argv[1], "wb").write(recs)
PY

status=0
for t in "${targets[@]}"; do
  corpus="fuzz/corpus/$t"
  mkdir -p "$corpus"
  echo "fuzz: $t for ${seconds}s" >&2
  log="$seeds/$t.log"
  if (cd fuzz && cargo fuzz run "$t" "corpus/$t" "$seeds/$t" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=4096 -timeout=20 -print_final_stats=1) \
      >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::new_units_added)' "$log" >&2 || true
  else
    tail -n 60 "$log" >&2
    echo "fuzz: $t FAILED (the crashing input is in fuzz/artifacts/$t/)" >&2
    status=1
  fi
done
exit $status
