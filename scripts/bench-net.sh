#!/usr/bin/env bash
# virtio-net device benchmark on real taps: makes a network namespace of its own with two
# taps (one for the device, one for the raw floor), then runs benches/net.rs in it. Needs
# root (namespaces, taps, AF_PACKET). Prints a Markdown table.
#
# Usage: scripts/bench-net.sh    Env: ROUNDS (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p rypervisor --bench net --no-run >/dev/null 2>&1
bench="$(ls -t target/release/deps/net-* | grep -v '\.d$' | head -1)"
exec unshare -n -- bash -c "
  set -e
  for t in rvbench0 rvbench1; do ip tuntap add \$t mode tap; ip link set \$t up; done
  TAPS=rvbench0,rvbench1 ROUNDS=${ROUNDS:-7} '$bench'
"
