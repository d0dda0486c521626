#!/usr/bin/env bash
# Whole-process cost of `rypervisor demo` next to /bin/true (the cost of any process here):
# wall time over 100 runs (perf stat) and peak RSS (GNU time). Usage: scripts/demo-process.sh [BINARY]
set -euo pipefail
bin=${1:-target/release/rypervisor}
for cmd in /bin/true "$bin demo"; do
  echo "== $cmd"
  perf stat -r 100 -e task-clock,page-faults $cmd 2>&1 >/dev/null | grep -E "task-clock|page-faults|elapsed"
  /usr/bin/time -f "  peak RSS %M KiB" $cmd 2>&1 >/dev/null | tail -1
done
