#!/usr/bin/env bash
# clock_gettime under `rypervisor exec` (through the vDSO) against the same program run
# natively, interleaved round by round so this machine's drift falls on both alike; the
# system call past the vDSO (one VM exit each) is measured alongside.
#
# Usage: scripts/bench-clock.sh [ROUNDS] [CALLS]     (default 7 rounds of 100000 calls)
# Each run times its own loop (tests/programs/clock.c: `loop N` through the C library,
# `sysloop N` with syscall(2)); prints the median per variant and the ratios to native.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-7}"
calls="${2:-100000}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-clock.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cargo build -q --release -p rypervisor-cli
rv=target/release/rypervisor
gcc -static -O2 -o "$work/clock-glibc" crates/rypervisor/tests/programs/clock.c
variants=(native-glibc exec-glibc)
if command -v musl-gcc >/dev/null; then
  musl-gcc -static -O2 -o "$work/clock-musl" crates/rypervisor/tests/programs/clock.c
  variants+=(native-musl exec-musl)
fi
run() { # variant mode -> nanoseconds for the loop
  local libc="${1#*-}" how="${1%%-*}"
  if [ "$how" = native ]; then
    "$work/clock-$libc" "$2" "$3"
  else
    "$rv" exec -- "$work/clock-$libc" "$2" "$3"
  fi | awk '{print $4}'
}
for ((r = 0; r < rounds; r++)); do
  for v in "${variants[@]}"; do
    echo "$v loop $(run "$v" loop "$calls")" >>"$work/results"
  done
  # The exits are slow here: a tenth of the calls is enough to see their cost.
  echo "exec-glibc sysloop $(run exec-glibc sysloop $((calls / 10)))" >>"$work/results"
done
python3 - "$work/results" "$calls" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
calls = int(sys.argv[2])
med = {}
for v, mode, ns in rows:
    n = calls if mode == "loop" else calls // 10
    med.setdefault((v, mode), []).append(int(ns) / n)
med = {k: statistics.median(x) for k, x in med.items()}
print(f"{'variant':<24}{'ns per call':>12}{'vs native':>12}")
for (v, mode), ns in sorted(med.items()):
    libc = v.split("-")[1]
    base = med.get((f"native-{libc}", "loop"))
    ratio = f"{ns / base:.2f}x" if base else ""
    print(f"{v + ' ' + mode:<24}{ns:>12.1f}{ratio:>12}")
PY
