#!/usr/bin/env bash
# vsock in a real guest: boots the recipe kernel with guest/init.c's vsock switch (an echo on
# guest port 1234) and measures from the host side, through the hybrid-vsock Unix socket:
# the time to echo 1 MiB (sent and read back concurrently; throughput counts the bytes once
# each way), and the round trip of a 64-byte message (median of 200). Prints a Markdown table.
#
# Usage: scripts/bench-vsock-guest.sh   (after cargo build --release)
# Env:   RUNS (default 3) transfers of 1 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
vmm=target/release/rypervisor
[ -x "$vmm" ] || { echo "build first: cargo build --release" >&2; exit 1; }
kernel_dir="$(guest/build-kernel.sh)"
work="$(mktemp -d)"
guest/build-initramfs.sh "$work/initramfs.cpio" >/dev/null
"$vmm" boot --kernel "$kernel_dir/vmlinux" --initrd "$work/initramfs.cpio" --mem 128M \
  --timeout 600 --vsock "cid=3,uds=$work/v.sock" \
  --cmdline "rypervisor.vsock" </dev/null >"$work/console" 2>"$work/err" &
vm=$!
trap 'kill $vm 2>/dev/null; wait $vm 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 600); do
  grep -q "vsock ready" "$work/console" && break
  sleep 0.5
done
grep -q "vsock ready" "$work/console" || { echo "the guest did not get ready" >&2; cat "$work/err" >&2; exit 1; }
python3 - "$work/v.sock" "${RUNS:-3}" <<'PY'
import socket, statistics, sys, threading, time

path, runs = sys.argv[1], int(sys.argv[2])

def connect(port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        byte = s.recv(1)
        if not byte:
            raise SystemExit("refused")
        line += byte
    return s

size = 1 << 20
times = []
for _ in range(runs):
    s = connect(1234)
    data = bytes(range(256)) * (size // 256)
    start = time.perf_counter()
    sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
    sender.start()
    got = bytearray()
    while chunk := s.recv(1 << 16):
        got += chunk
    sender.join()
    times.append(time.perf_counter() - start)
    assert bytes(got) == data, "echo differs"
    s.close()
s = connect(1234)
rtts = []
for _ in range(200):
    start = time.perf_counter()
    s.sendall(b"x" * 64)
    n = 0
    while n < 64:
        n += len(s.recv(64 - n))
    rtts.append(time.perf_counter() - start)
s.close()
t = statistics.median(times)
print("| measurement | value |")
print("|---|---|")
print(f"| 1 MiB echoed (median of {runs}) | {t*1000:.0f} ms: {size/t/1e6:.2f} MB/s each way |")
print(f"| 64-byte round trip (median of 200) | {statistics.median(rtts)*1e6:.0f} µs |")
PY
# Let the guest power off: the control connection on port 1235.
python3 -c "
import socket,sys
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'CONNECT 1235\n'); s.recv(64); s.close()" "$work/v.sock"
wait $vm || true
