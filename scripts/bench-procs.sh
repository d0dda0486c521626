#!/usr/bin/env bash
# Processes under `rypervisor exec` (every process its own micro-VM), natively and under
# qemu-user (`qemu-x86_64`), interleaved round by round so this machine's drift falls on all
# alike:
#   - fork + _exit + waitpid, and fork + execve(static hello) + waitpid: microseconds per
#     round trip, as the program itself measures them (forkbench.c);
#   - `seq 100000 | sort -n | tail -1` under busybox sh: wall time of the whole run;
#   - pthread_create + pthread_join (a vCPU in the same VM);
#   - the VMM's resident memory per extra process and per extra thread: RSS with 32 children
#     (threads) waiting on a pipe, minus RSS with none, over 32.
#
# Usage: scripts/bench-procs.sh [ROUNDS]     (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-7}"
cargo build -q --release -p rypervisor-cli
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-procs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for p in forkbench hello; do
  gcc -static -pthread -O2 -o "$work/$p" "crates/rypervisor/tests/programs/$p.c"
done
python3 - "$rounds" "$PWD/target/release/rypervisor" "$work" <<'PY'
import shutil, statistics, subprocess, sys, time
rounds, rv, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
fb, hello = f"{work}/forkbench", f"{work}/hello"
bb = shutil.which("busybox")
qemu = shutil.which("qemu-x86_64")
allow = ["--allow-read", work, "--allow-read", "/bin", "--allow-read", "/usr",
         "--allow-read", "/lib", "--allow-read", "/lib64"]
def runners(cmd):
    yield "native", cmd
    yield "rypervisor exec", [rv, "exec", "--max-procs", "64"] + allow + ["--"] + cmd
    if qemu:
        yield "qemu-x86_64", [qemu] + cmd
inner = {  # the program reports µs per round trip
    "fork+exit+wait": [fb, "fork", "200"],
    "fork+exec+wait (static hello)": [fb, "exec", "100", hello],
    "pthread_create+join": [fb, "thread", "200"],
}
wall = {"sh: seq 100000 | sort -n | tail -1": [bb, "sh", "-c", "seq 100000 | sort -n | tail -1"]}
times = {}
for _ in range(rounds):
    for name, cmd in inner.items():
        for runner, argv in runners(cmd):
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            times.setdefault((name, runner), []).append(float(out.split()[-1]))  # the last line: exec'd hellos print first
    for name, cmd in wall.items():
        for runner, argv in runners(cmd):
            t = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            assert out.strip() == "100000", out
            times.setdefault((name, runner), []).append((time.perf_counter() - t) * 1e6)
print(f"{'benchmark':<36}{'runner':<18}{'median µs':>11}{'vs native':>11}")
for name in list(inner) + list(wall):
    base = statistics.median(times[(name, "native")])
    for runner, _ in runners(inner.get(name) or wall[name]):
        m = statistics.median(times[(name, runner)])
        print(f"{name:<36}{runner:<18}{m:>11.0f}{m / base:>10.1f}x")

def rss_kib(pid):
    total = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return total
def held(n, mode="hold"):
    p = subprocess.Popen([rv, "exec", "--max-procs", "64", "--", fb, mode, str(n)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == f"holding {n}"
    time.sleep(0.3)
    kib = rss_kib(p.pid)
    p.stdin.write("\n"); p.stdin.close(); p.wait()
    return kib
none, many = statistics.median(held(0) for _ in range(3)), statistics.median(held(32) for _ in range(3))
print(f"VMM RSS: {none} KiB with no child, {many} KiB with 32: {(many - none) / 32:.0f} KiB per process")
threads = statistics.median(held(32, "hold-threads") for _ in range(3))
print(f"VMM RSS: {threads} KiB with 32 threads: {(threads - none) / 32:.0f} KiB per thread")
PY
