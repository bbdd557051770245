#!/usr/bin/env bash
# Makes the local CA and the certificates of N trackers (default 3), the
# proxies and the admin tool in certs/ (existing ones are kept; ones made
# before certificates carried roles are re-issued). The CA's private key
# stays in ca/ (mode 0700), which no running process reads.
# Usage: scripts/gen-certs.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-3}"
cargo build --release --quiet -p tracker-cluster
names=()
for i in $(seq 1 "$n"); do names+=("tracker-$i"); done
names+=(proxy-1 proxy-2 admin)
target/release/quorrent-tracker gen-certs --dir certs --ca-dir ca "${names[@]}"
