#!/usr/bin/env bash
# Compares the VMM benchmarks of two checkouts of rypervisor in the same session, interleaved
# (A B, B A, A B, ...) so that this machine's drift and noise fall on both alike.
#
# Usage: scripts/bench-compare.sh OLD_DIR NEW_DIR [ROUNDS]     (default 5 rounds)
# Runs, in each round and for each side: benches/vmm.rs (create → first exit, PIO and MMIO
# exit round trips) and benches/sandbox.rs (create → first system call, reset → next system
# call, a warm request, and a whole `exec` process making 20 000 getpid calls), with short
# criterion measurements. Prints, per benchmark, the median over rounds of each run's
# median, the ratio new/old, and the spread of the ratios between rounds.
set -euo pipefail
old="$(cd "$1" && pwd)"
new="$(cd "$2" && pwd)"
rounds="${3:-5}"
work="$(mktemp -d "${TMPDIR:-/tmp}/rypervisor-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT

build() { # dir -> prints "vmm_exe sandbox_exe"
  (cd "$1" && cargo build -q --release -p rypervisor-cli >&2 &&
    cargo bench -q -p rypervisor --no-run --message-format=json 2>/dev/null) |
    python3 -c '
import json, sys
exes = {}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        exes[m["target"]["name"]] = m["executable"]
print(exes["vmm"], exes["sandbox"])'
}
read -r old_vmm old_sandbox < <(build "$old")
read -r new_vmm new_sandbox < <(build "$new")

filter_vmm='create_to_first_exit|round_trip'
filter_sandbox='sandbox/|process/getpid/rypervisor'
run_side() { # side dir vmm sandbox round
  local out="$work/$1/$5"
  mkdir -p "$out"
  for pair in "$3:$filter_vmm" "$4:$filter_sandbox"; do
    (cd "$2/crates/rypervisor" && CRITERION_HOME="$out" "${pair%%:*}" --bench \
      --warm-up-time 1 --measurement-time 2 --noplot "${pair#*:}" >/dev/null 2>&1)
  done
}
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
  for side in $order; do
    if [ "$side" = old ]; then run_side old "$old" "$old_vmm" "$old_sandbox" "$r"
    else run_side new "$new" "$new_vmm" "$new_sandbox" "$r"; fi
  done
  echo "round $r of $rounds done" >&2
done

python3 - "$work" <<'EOF'
import json, pathlib, statistics, sys
work = pathlib.Path(sys.argv[1])
def medians(side):
    out = {}
    for est in (work / side).glob("*/**/new/estimates.json"):
        rnd = est.relative_to(work / side).parts[0]
        name = "/".join(est.relative_to(work / side).parts[1:-2])
        out.setdefault(name, {})[rnd] = json.loads(est.read_text())["median"]["point_estimate"]
    return out
old, new = medians("old"), medians("new")
def fmt(ns):
    return f"{ns/1e6:.3f} ms" if ns >= 1e5 else f"{ns/1e3:.2f} µs"
print("| benchmark | old main | new main | new/old | ratio range over rounds |")
print("|---|---|---|---|---|")
for name in sorted(set(old) & set(new)):
    rounds = sorted(set(old[name]) & set(new[name]))
    ratios = [new[name][r] / old[name][r] for r in rounds]
    o = statistics.median(old[name][r] for r in rounds)
    n = statistics.median(new[name][r] for r in rounds)
    print(f"| {name} | {fmt(o)} | {fmt(n)} | {n/o:.2f}× | {min(ratios):.2f}–{max(ratios):.2f} |")
EOF
