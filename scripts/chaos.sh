#!/usr/bin/env bash
# The fault-injection test of the tracker cluster (issue 8): trackers,
# proxies and clients on their own test hosts (network namespaces), faults
# from a seeded schedule, every operation recorded and checked for
# linearizability. Needs root (it makes network namespaces and nftables
# rules); installs nftables when missing.
#   scripts/chaos.sh [--time SECS] [--faults partition,loss,delay,pause,kill,replace]
#                    [--seed N] [--trackers 3|5] [--clients K] [--out DIR]
# Prints the report (also in DIR/report.txt, default chaos-out/); exit 1
# when a check fails. See `quorrent-chaos run --help` for every option.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespaces, nftables)" >&2; exit 2; }
cargo build --release --quiet -p tracker-cluster -p proxy -p chaos
BIN="${CARGO_TARGET_DIR:-target}/release"
out=chaos-out
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--out" ] && out="${args[$((i + 1))]}"
done
rm -rf "$out"
[[ " $* " == *" --out "* ]] || set -- --out "$out" "$@"
exec "$BIN/quorrent-chaos" run --root . --bins "$BIN" "$@"
