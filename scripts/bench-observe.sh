#!/usr/bin/env bash
# What watching the cluster costs and how fast it shows a failover (issue
# 10's benchmark). Starts its own tracker cluster and proxy (release
# binaries, ports from QUORRENT_BASE_PORT, default 17700) and prints a
# Markdown table beside the targets:
#   1. write throughput with metrics on vs off: RUNS interleaved pairs
#      (off, on, off, on, ...), each on a fresh 3-member cluster, 64
#      clients writing through the proxy for SECONDS (quorrent-loadgen
#      run); "off" is `"http_addr": "off"` on every tracker and the proxy
#      (nothing recorded, no dashboard polling); medians each way;
#   2. /metrics scrape time on the leader holding FILES files (bulk-loaded
#      with OwnMany), median and p95 of 50 scrapes (curl time_total), and
#      the proxy's /status (the dashboard's data) the same way;
#   3. SIGKILL of the leader -> the dashboard in headless Chromium shows
#      the new leader (proxy/examples/dashboard_failover.rs), ROUNDS kills,
#      each member restarted before the next.
# Usage: scripts/bench-observe.sh [--runs N] [--seconds S] [--files N] [--rounds N]
# Defaults: 3 runs, 10 s, 1,000,000 files, 5 rounds.
# Not a test: exits 0 when every step ran, whatever the figures. Every
# process it starts is stopped when it ends; data in run/bench-observe is
# removed.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

RUNS=3; SECONDS_=10; FILES=1000000; ROUNDS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --seconds) SECONDS_="$2"; shift 2 ;;
    --files) FILES="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-observe.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BASE="${QUORRENT_BASE_PORT:-17700}"
BIN="${CARGO_TARGET_DIR:-target}/release"
DIR=run/bench-observe
note() { echo "[$(date +%T)] $*" >&2; }
die() { echo "bench-observe.sh: $*" >&2; exit 1; }

PIDS=()
stop_cluster() {
  local f pids=()
  for f in "$DIR"/*.pid; do [ -e "$f" ] && pids+=("$(cat "$f")"); done
  [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
  rm -f "$DIR"/*.pid
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_cluster
  rm -rf "$DIR/data"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq curl; do command -v "$tool" >/dev/null || die "$tool is needed"; done
note "building release binaries and the browser example ..."
cargo build --release --quiet -p tracker-cluster -p proxy --example dashboard_failover || die "the build failed"
scripts/gen-certs.sh 3 >/dev/null
scripts/install-chromium.sh >/dev/null

members="[{\"id\":1,\"api\":\"127.0.0.1:$((BASE + 1))\",\"raft\":\"127.0.0.1:$((BASE + 11))\"},{\"id\":2,\"api\":\"127.0.0.1:$((BASE + 2))\",\"raft\":\"127.0.0.1:$((BASE + 12))\"},{\"id\":3,\"api\":\"127.0.0.1:$((BASE + 3))\",\"raft\":\"127.0.0.1:$((BASE + 13))\"}]"

# start_cluster on|off: a fresh cluster with HTTP on (ports BASE+80..83) or off.
start_cluster() {
  local http="$1" i h
  stop_cluster
  rm -rf "$DIR/data"; mkdir -p "$DIR/data" "$DIR/logs"
  for i in 1 2 3; do
    if [ "$http" = on ]; then h="\"127.0.0.1:$((BASE + 80 + i))\""; else h='"off"'; fi
    cat >"$DIR/tracker-$i.json" <<JSON
{ "id": $i, "members": $members, "data_dir": "$DIR/data/tracker-$i", "log_dir": "$DIR/logs", "certs_dir": "certs",
  "http_addr": $h, "quotas": { "max_files_per_user": 1000000000, "max_peers_per_user": 64 } }
JSON
    "$BIN/quorrent-tracker" --config "$DIR/tracker-$i.json" >>"$DIR/tracker-$i.out" 2>&1 &
    echo $! >"$DIR/tracker-$i.pid"
  done
  if [ "$http" = on ]; then h="\"127.0.0.1:$((BASE + 80))\""; else h='"off"'; fi
  cat >"$DIR/proxy-1.json" <<JSON
{ "name": "proxy-1", "listen": "127.0.0.1:$BASE", "trackers": $members, "log_dir": "$DIR/logs", "certs_dir": "certs", "http_addr": $h }
JSON
  "$BIN/quorrent-proxy" --config "$DIR/proxy-1.json" >>"$DIR/proxy-1.out" 2>&1 &
  echo $! >"$DIR/proxy-1.pid"
  for _ in $(seq 1 100); do
    "$BIN/quorrent-tracker" --config "$DIR/tracker-1.json" admin leader >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "no leader within 20 s (see $DIR/logs)"
}
loadgen() { "$BIN/quorrent-loadgen" --proxy "127.0.0.1:$BASE" --certs certs "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else print a[int((NR+1)/2)]}'; }
p95() { sort -n | awk '{a[NR]=$1} END {i=int(NR*0.95+0.999); if (i<1) i=1; print a[i]}'; }

# 1. Write throughput, metrics off vs on, interleaved.
declare -A RATE=([off]="" [on]="")
for r in $(seq 1 "$RUNS"); do
  for mode in off on; do
    start_cluster "$mode"
    out="$(loadgen run --clients 64 --seconds "$SECONDS_" --run "$r" --acked "$DIR/acked-$mode-$r")"
    rate="$(jq -r .writes_per_s <<<"$out")"
    note "run $r, metrics $mode: $rate writes/s ($(jq -c '{errors, p50_ms, p99_ms}' <<<"$out"))"
    RATE[$mode]+="$rate"$'\n'
  done
done
off="$(printf '%s' "${RATE[off]}" | median)"; on="$(printf '%s' "${RATE[on]}" | median)"
cost="$(awk -v a="$off" -v b="$on" 'BEGIN {printf "%.1f", (a - b) / a * 100}')"

# 2. Scrape time with FILES files.
start_cluster on
L="$("$BIN/quorrent-tracker" --config "$DIR/tracker-1.json" admin leader)"
note "loading $FILES files ..."
loadgen bulk --files "$FILES" --clients 8 >/dev/null
scrape() { for _ in $(seq 1 50); do curl -s -o /dev/null -w '%{time_total}\n' "$1"; done | awk '{printf "%.2f\n", $1 * 1000}'; }
m_times="$(scrape "http://127.0.0.1:$((BASE + 80 + L))/metrics")"
s_times="$(scrape "http://127.0.0.1:$((BASE + 80))/status")"
files_seen="$(curl -s "http://127.0.0.1:$((BASE + 80 + L))/status" | jq .registry.files)"
bytes="$(curl -s "http://127.0.0.1:$((BASE + 80 + L))/metrics" | wc -c)"

# 3. Kill the leader, watch the dashboard.
note "killing the leader $ROUNDS times with the dashboard open ..."
fail_out="$("$BIN/examples/dashboard_failover" "http://127.0.0.1:$((BASE + 80))/" "$DIR" "$BIN/quorrent-tracker" "$ROUNDS")"
echo "$fail_out" | sed 's/^/  /' >&2
summary="$(tail -n 1 <<<"$fail_out")"

echo
echo "| figure | target | measured |"
echo "|---|---|---|"
echo "| write throughput, metrics off → on (64 clients, ${SECONDS_} s, median of $RUNS) | ≤ 2% cost | $off → $on writes/s: ${cost}% |"
echo "| /metrics scrape on the leader, $files_seen files ($bytes bytes) | ≤ 5 ms | median $(median <<<"$m_times") ms, p95 $(p95 <<<"$m_times") ms |"
echo "| proxy /status (dashboard data) | – | median $(median <<<"$s_times") ms, p95 $(p95 <<<"$s_times") ms |"
echo "| SIGKILL of the leader → dashboard shows the new leader ($ROUNDS kills) | ≤ 1 s | median $(jq .median_ms <<<"$summary") ms, max $(jq .max_ms <<<"$summary") ms |"
