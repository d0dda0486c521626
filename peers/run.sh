#!/usr/bin/env bash
# A Firecracker device next to rypervisor's, at device level: alternating runs of our
# benchmark (benches/block.rs or benches/vsock.rs) and the peer harness in
# peers/firecracker-NAME/, each printing its ratios to a floor measured in the same run.
# Fetches Firecracker and micro-http at pinned revisions into that directory's vendor/ on
# first use (git and network to GitHub), or takes them from FIRECRACKER_SRC and MICRO_HTTP_SRC.
#
# Usage: peers/run.sh blk|vsock [PAIRS]   Env: ROUNDS (default 7), PAIRS (default 3)
set -euo pipefail
case "${1:-}" in
  blk) bench=block ;;
  vsock) bench=vsock ;;
  *) echo "usage: peers/run.sh blk|vsock [PAIRS]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "$0")" && pwd)/firecracker-$1"
root="$here/../.."
fc_rev=81b38b9dad6056d7a48073e95ac5a9aed51cb2ab
http_rev=7975fe0e59000e8c41cb1d58fbd39ffa102e5b27
fetch() { # NAME REPO REV SRC
  local dir="$here/vendor/$1"
  [ -e "$dir" ] && return
  mkdir -p "$here/vendor"
  if [ -n "${4:-}" ]; then
    ln -s "$4" "$dir"
  else
    git init -q "$dir" && git -C "$dir" fetch -q --depth 1 "$2" "$3" && git -C "$dir" checkout -q FETCH_HEAD
  fi
}
fetch firecracker https://github.com/firecracker-microvm/firecracker "$fc_rev" "${FIRECRACKER_SRC:-}"
fetch micro-http https://github.com/firecracker-microvm/micro-http "$http_rev" "${MICRO_HTTP_SRC:-}"
# (Firecracker's crates warn about their own docs on every build: the log is shown on failure.)
log="$here/target/build.log"
mkdir -p "$here/target"
(cd "$here" && cargo build --release >"$log" 2>&1) || { cat "$log" >&2; exit 1; }
# Our benchmark's binary, as cargo names it (whatever CARGO_TARGET_DIR says).
ours="$(cd "$root" && cargo bench -p rypervisor --bench "$bench" --no-run --message-format=json 2>"$log" \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$bench")" || { cat "$log" >&2; exit 1; }
[ -x "$ours" ] || { cat "$log" >&2; echo "benches/$bench.rs did not build" >&2; exit 1; }
peer="$here/target/release/fc-$1-harness"
for i in $(seq "${2:-${PAIRS:-3}}"); do
  echo "rypervisor, run $i:"; ROUNDS="${ROUNDS:-7}" "$ours" | grep '^|'
  echo "Firecracker, run $i:"; ROUNDS="${ROUNDS:-7}" "$peer" | grep '^|'
done
