#!/usr/bin/env bash
# Start-up of whole processes: native, `rypervisor exec`, and qemu-user (`qemu-x86_64`, from
# Debian's qemu-user), interleaved round by round so this machine's drift falls on all alike.
# Programs: Debian's dynamic `ls` of a small directory and `python3 -c pass` (with
# --allow-read /usr), a static busybox `ls` when busybox-static is installed, and the static
# test programs `hello` (one write) and `getpid 20000` (the cost of a system call).
#
# Usage: scripts/bench-startup.sh [ROUNDS]     (default 15)
# Prints the median wall time per program and runner, and the ratios to native.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-15}"
cargo build -q --release -p rypervisor-cli
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-startup.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/dir" && touch "$work/dir/"{a,b,c}
for p in hello getpid; do
  gcc -static -O2 -o "$work/$p" "crates/rypervisor/tests/programs/$p.c"
done
python3 - "$rounds" "$work/dir" "$PWD/target/release/rypervisor" "$work" <<'PY'
import shutil, statistics, subprocess, sys, time
rounds, small, rv, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
programs = {
    "ls (dynamic)": ["/usr/bin/ls", small],
    "python3 -c pass": ["/usr/bin/python3", "-c", "pass"],
    "hello (static)": [f"{work}/hello"],
    "getpid 20000": [f"{work}/getpid", "20000"],
}
if shutil.which("busybox") and open(shutil.which("busybox"), "rb").read(4) == b"\x7fELF":
    programs["busybox ls (static)"] = [shutil.which("busybox"), "ls", small]
qemu = shutil.which("qemu-x86_64")
def runners(cmd):
    yield "native", cmd
    yield "rypervisor exec", [rv, "exec", "--mem", "256M", "--allow-read", "/usr",
                              "--allow-read", small, "--"] + cmd
    if qemu:
        yield "qemu-x86_64", [qemu] + cmd
times = {}
for _ in range(rounds):
    for name, cmd in programs.items():
        for runner, argv in runners(cmd):
            t = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times.setdefault((name, runner), []).append(time.perf_counter() - t)
print(f"{'program':<22}{'runner':<18}{'median ms':>10}{'vs native':>11}")
for name in programs:
    base = statistics.median(times[(name, "native")])
    for runner, _ in runners(programs[name]):
        m = statistics.median(times[(name, runner)])
        print(f"{name:<22}{runner:<18}{m * 1e3:>10.2f}{m / base:>10.1f}x")
PY
