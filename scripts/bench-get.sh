#!/usr/bin/env bash
# Benchmark of the whole `quorrent get` on localhost: from starting the
# command to its exit (tracker lookup through the proxy, dialling peers,
# transfer, verification, writing and renaming the file, registering as an
# owner). Starts a tracker cluster and proxy with scripts/cluster.sh, makes
# a random file, shares it from 4 seeder nodes and times
# `quorrent get --no-seed --json` from one downloader node: first with 1
# seeder, then with 4, RUNS times each (the downloaded file is deleted
# between runs). Prints a Markdown table: MB/s (file size / wall time),
# the transfer phase alone (the `seconds` get reports), the downloader's
# CPU seconds and peak RSS (from /usr/bin/time -v, else /proc).
# Environment: QUORRENT_BASE_PORT (default 17500), BENCH_SIZE_MIB (default
# 1024), BENCH_RUNS (default 3), CARGO_TARGET_DIR (where the release
# binaries are built and run from; default target). Files live in
# run/bench-get; every process it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

BASE="${QUORRENT_BASE_PORT:-17500}"
export QUORRENT_BASE_PORT="$BASE"
SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
RUNS="${BENCH_RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release"
DIR=run/bench-get
NAME="bench-${SIZE_MIB}MiB.bin"
SEEDERS=(s1 s2 s3 s4)

die() { echo "bench-get.sh: $*" >&2; exit 1; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
q() { local u="$1"; shift; "$BIN/quorrent" --home "$DIR/$u" "$@"; }

PIDS=()
STARTED_CLUSTER=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if [ "$STARTED_CLUSTER" = 1 ]; then scripts/cluster.sh stop >/dev/null 2>&1 || true; fi
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq ss; do command -v "$tool" >/dev/null || die "$tool is needed"; done
# Never take over a cluster that this checkout runs on other ports.
for f in run/*.pid; do
  [ -e "$f" ] || continue
  if kill -0 "$(cat "$f")" 2>/dev/null; then
    die "a cluster already runs from this checkout (run/*.pid); stop it with scripts/cluster.sh stop"
  fi
done

echo "building release binaries into $BIN ..." >&2
cargo build --release --quiet -p tracker-cluster -p proxy -p node || die "the build failed"
scripts/cluster.sh stop --wipe >/dev/null 2>&1 || true
STARTED_CLUSTER=1
scripts/cluster.sh start >/dev/null || die "the cluster did not start"

rm -rf "$DIR"
mkdir -p "$DIR" logs
declare -A LISTEN=([dl]=0)
i=0
for u in "${SEEDERS[@]}"; do i=$((i + 1)); LISTEN[$u]=$((BASE + 60 + i)); done
PW="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TAG="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for u in "${SEEDERS[@]}" dl; do
  [ "${LISTEN[$u]}" != 0 ] && udp_bound "${LISTEN[$u]}" && die "UDP port ${LISTEN[$u]} is taken"
  mkdir -p "$DIR/$u/files"
  cat >"$DIR/$u/config.json" <<JSON
{
  "proxies": ["127.0.0.1:$BASE"],
  "ca_cert": "certs/ca.pem",
  "log_dir": "logs",
  "log_level": "warn",
  "storage_dir": "$DIR/$u/files",
  "listen": "127.0.0.1:${LISTEN[$u]}"
}
JSON
  printf '%s\n' "$PW" | q "$u" register "bench-$u-$TAG" --password-stdin >/dev/null
  QUORRENT_PASSWORD="$PW" q "$u" login "bench-$u-$TAG" >/dev/null
done

echo "making a ${SIZE_MIB} MiB random file ..." >&2
SRC="$DIR/s1/files/$NAME"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$SRC"
for u in "${SEEDERS[@]:1}"; do ln "$SRC" "$DIR/$u/files/$NAME"; done

start_seed() {
  local u="$1" port="${LISTEN[$1]}"
  "$BIN/quorrent" --home "$DIR/$u" seed >"$DIR/$u-seed.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    udp_bound "$port" && return 0
    kill -0 "$!" 2>/dev/null || die "$u's seed exited: $(tail -n 3 "$DIR/$u-seed.out")"
    sleep 0.1
  done
  die "$u's seed did not listen within 10 s"
}

# Shares with timing (hashing throughput), then seeds.
T=$(date +%s.%N)
FILE_ID="$(q s1 --json share "$SRC" | jq -r .file_id)"
SHARE_S=$(echo "$(date +%s.%N) - $T" | bc -l)
start_seed s1

ROWS=()
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

bench() {
  local seeders="$1" r rates=() xfer=() cpus=() rsss=() walls=()
  for r in $(seq 1 "$RUNS"); do
    rm -f "$DIR/dl/files/$NAME"
    sync
    local tv="$DIR/time-$seeders-$r.txt" out="$DIR/get-$seeders-$r.json" t0 t1
    t0=$(date +%s.%N)
    if [ -x /usr/bin/time ]; then
      /usr/bin/time -v -o "$tv" "$BIN/quorrent" --home "$DIR/dl" --json get "$FILE_ID" --no-seed >"$out" \
        || die "get failed: $(cat "$out")"
    else
      "$BIN/quorrent" --home "$DIR/dl" --json get "$FILE_ID" --no-seed >"$out" || die "get failed"
    fi
    t1=$(date +%s.%N)
    local wall size secs peers cpu rss
    wall=$(echo "$t1 - $t0" | bc -l)
    size=$(jq -r .size "$out")
    secs=$(jq -r .seconds "$out")
    peers=$(jq -r .peers "$out")
    [ "$peers" = "$seeders" ] || echo "note: run $r used $peers peers, expected $seeders" >&2
    if [ -f "$tv" ]; then
      cpu=$(awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$tv")
      rss=$(awk -F': ' '/Maximum resident/ {printf "%d", $2/1024}' "$tv")
    else
      cpu=NA rss=NA
    fi
    rates+=("$(echo "$size / $wall / 1000000" | bc -l | xargs printf '%.0f')")
    xfer+=("$(echo "$size / $secs / 1000000" | bc -l | xargs printf '%.0f')")
    walls+=("$(printf '%.2f' "$wall")")
    cpus+=("$(echo "$cpu / ($size / 1073741824)" | bc -l | xargs printf '%.2f')")
    rsss+=("$rss")
    echo "  $seeders seeder(s) run $r: ${walls[-1]} s wall, ${rates[-1]} MB/s whole get, ${xfer[-1]} MB/s transfer, ${cpus[-1]} CPU s/GiB, ${rss} MiB peak RSS" >&2
  done
  ROWS+=("| $seeders -> 1 | $(median "${walls[@]}") | $(median "${rates[@]}") (${rates[*]}) | $(median "${xfer[@]}") (${xfer[*]}) | $(median "${cpus[@]}") | $(median "${rsss[@]}") |")
}

echo "timing get from 1 seeder ..." >&2
bench 1
for u in "${SEEDERS[@]:1}"; do
  q "$u" --json share "$DIR/$u/files/$NAME" >/dev/null
  start_seed "$u"
done
echo "timing get from 4 seeders ..." >&2
bench 4

echo
echo "quorrent get, ${SIZE_MIB} MiB random file, loopback, medians of $RUNS (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "share (hashing + register) of the file: $(printf '%.2f' "$SHARE_S") s = $(echo "$SIZE_MIB * 1048576 / $SHARE_S / 1000000" | bc -l | xargs printf '%.0f') MB/s"
echo
echo "| seeders | whole get, s | whole get, MB/s (runs) | transfer phase, MB/s (runs) | downloader CPU s/GiB | peak RSS, MiB |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
