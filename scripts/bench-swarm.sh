#!/usr/bin/env bash
# Benchmark of a swarm on localhost: one seeder whose upload is capped
# (SWARM_RATE, default 40MB/s) and SWARM_NODES downloaders (default 8, each
# its own home) that start `quorrent get` of one random file at the same
# time; measured: the time until every downloader has the whole file,
# verified. Two modes:
#   partial     downloaders announce themselves as partial owners and fetch
#               from each other while they download (the default of get)
#   no-partial  `get --no-partial`: every byte comes from the seeder, so
#               the bound is NODES x size / rate. Run on a smaller file
#               (SWARM_BASELINE_MIB, default 128) and scaled to the size of
#               the partial run, said so in the table.
# Downloaders keep seeding once they have the file (get without
# --no-seed), as in a real swarm, until the last one is done. Each run uses
# a fresh random file, so owners of an earlier run play no part.
# Prints a Markdown table (medians of SWARM_RUNS runs, default 3; the runs
# in brackets) and how much the seeder sent (sum over the downloaders'
# per-peer reports), ideally the file size once.
# Environment: QUORRENT_BASE_PORT (default 17600), SWARM_SIZE_MIB (1024),
# SWARM_BASELINE_MIB (128), SWARM_NODES (8), SWARM_RATE (40MB/s),
# SWARM_RUNS (3), SWARM_TIMEOUT (seconds per run, 900), SWARM_KEEP (set: keep
# run/bench-swarm for a post-mortem), CARGO_TARGET_DIR.
# Files live in run/bench-swarm; every process it starts is stopped when
# it ends. Not a test: it prints figures, it does not judge them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

BASE="${QUORRENT_BASE_PORT:-17600}"
export QUORRENT_BASE_PORT="$BASE"
SIZE_MIB="${SWARM_SIZE_MIB:-1024}"
BASE_MIB="${SWARM_BASELINE_MIB:-128}"
NODES="${SWARM_NODES:-8}"
RATE="${SWARM_RATE:-40MB/s}"
RUNS="${SWARM_RUNS:-3}"
TIMEOUT="${SWARM_TIMEOUT:-900}"
BIN="${CARGO_TARGET_DIR:-target}/release"
DIR=run/bench-swarm

die() { echo "bench-swarm.sh: $*" >&2; exit 1; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
q() { local u="$1"; shift; "$BIN/quorrent" --home "$DIR/$u" "$@"; }
now() { date +%s.%N; }

PIDS=()
STARTED_CLUSTER=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if [ "$STARTED_CLUSTER" = 1 ]; then scripts/cluster.sh stop >/dev/null 2>&1 || true; fi
  [ -n "${SWARM_KEEP:-}" ] || rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq ss bc; do command -v "$tool" >/dev/null || die "$tool is needed"; done
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
SEED_PORT=$((BASE + 60))
udp_bound "$SEED_PORT" && die "UDP port $SEED_PORT is taken"
PW="swarm-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TAG="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# make_home NAME LISTEN
make_home() {
  mkdir -p "$DIR/$1/files"
  cat >"$DIR/$1/config.json" <<JSON
{
  "proxies": ["127.0.0.1:$BASE"],
  "ca_cert": "certs/ca.pem",
  "log_dir": "logs",
  "log_level": "warn",
  "storage_dir": "$DIR/$1/files",
  "listen": "$2"
}
JSON
  printf '%s\n' "$PW" | q "$1" register "swarm-$1-$TAG" --password-stdin >/dev/null
  QUORRENT_PASSWORD="$PW" q "$1" login "swarm-$1-$TAG" >/dev/null
}

make_home seeder "127.0.0.1:$SEED_PORT"
DOWNLOADERS=()
for i in $(seq 1 "$NODES"); do DOWNLOADERS+=("d$i"); make_home "d$i" "127.0.0.1:0"; done
SEEDER_ID="$(q seeder --json status | jq -r .peer_id)"

SEED_PID=
start_seed() {
  "$BIN/quorrent" --home "$DIR/seeder" seed --max-upload-rate "$RATE" >"$DIR/seeder.out" 2>&1 &
  SEED_PID=$!
  PIDS+=("$SEED_PID")
  for _ in $(seq 1 100); do
    udp_bound "$SEED_PORT" && return 0
    kill -0 "$SEED_PID" 2>/dev/null || die "the seeder exited: $(tail -n 3 "$DIR/seeder.out")"
    sleep 0.1
  done
  die "the seeder did not listen within 10 s"
}
stop_seed() { [ -n "$SEED_PID" ] && stop_pids "$SEED_PID"; SEED_PID=; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# one_run MODE SIZE_MIB RUN: sets RUN_ALL and RUN_FIRST (seconds from the
# start of the gets until the slowest / fastest node printed its report)
# and RUN_SENT (MiB the seeder sent). Not in a subshell: it keeps PIDS.
one_run() {
  local mode="$1" mib="$2" run="$3" name file_id u t0 i
  name="swarm-$mode-$run-$TAG.bin"
  stop_seed
  head -c "$((mib << 20))" /dev/urandom >"$DIR/seeder/files/$name"
  file_id="$(q seeder --json share "$DIR/seeder/files/$name" | jq -r .file_id)"
  start_seed
  for u in "${DOWNLOADERS[@]}"; do rm -rf "$DIR/$u/files" && mkdir -p "$DIR/$u/files"; done
  local flags=()
  [ "$mode" = no-partial ] && flags+=(--no-partial)
  local pids=() done_at=()
  t0=$(now)
  for u in "${DOWNLOADERS[@]}"; do
    "$BIN/quorrent" --home "$DIR/$u" --json get "$file_id" "${flags[@]}" >"$DIR/$u-$mode-$run.json" 2>"$DIR/$u-$mode-$run.err" &
    pids+=($!)
  done
  PIDS+=("${pids[@]}")
  local left=$NODES
  while [ "$left" -gt 0 ]; do
    sleep 0.2
    left=0
    for i in "${!DOWNLOADERS[@]}"; do
      [ -n "${done_at[$i]:-}" ] && continue
      u="${DOWNLOADERS[$i]}"
      if grep -q '"file_id"' "$DIR/$u-$mode-$run.json" 2>/dev/null; then
        done_at[$i]=$(echo "$(now) - $t0" | bc -l)
      elif ! kill -0 "${pids[$i]}" 2>/dev/null; then
        die "$u's get failed ($mode, run $run): $(tail -n 2 "$DIR/$u-$mode-$run.err") $(cat "$DIR/$u-$mode-$run.json")"
      else
        left=$((left + 1))
      fi
    done
    if [ "$(echo "$(now) - $t0 > $TIMEOUT" | bc -l)" = 1 ]; then die "$mode run $run: not done after $TIMEOUT s"; fi
  done
  stop_pids "${pids[@]}"
  local seeder_bytes=0 b
  for u in "${DOWNLOADERS[@]}"; do
    b=$(jq -r --arg s "$SEEDER_ID" '[.per_peer[] | select(.peer_id == $s) | .bytes] | add // 0' "$DIR/$u-$mode-$run.json")
    seeder_bytes=$((seeder_bytes + b))
  done
  rm -f "$DIR/seeder/files/$name"
  for u in "${DOWNLOADERS[@]}"; do rm -rf "$DIR/$u/files"; done
  # The slowest node is the figure; the fastest for scale.
  RUN_ALL=$(printf '%s\n' "${done_at[@]}" | sort -g | tail -n 1 | xargs printf '%.1f')
  RUN_FIRST=$(printf '%s\n' "${done_at[@]}" | sort -g | head -n 1 | xargs printf '%.1f')
  RUN_SENT=$((seeder_bytes >> 20))
}

ROWS=()
bench() {
  local mode="$1" mib="$2" r alls=() firsts=() sent=() all first mibs scale
  for r in $(seq 1 "$RUNS"); do
    echo "  $mode, ${mib} MiB, run $r ..." >&2
    one_run "$mode" "$mib" "$r"
    all=$RUN_ALL first=$RUN_FIRST mibs=$RUN_SENT
    alls+=("$all"); firsts+=("$first"); sent+=("$mibs")
    echo "    all $NODES done in $all s (first after $first s); the seeder sent $mibs MiB" >&2
  done
  scale=$(echo "$SIZE_MIB / $mib" | bc -l)
  if [ "$mib" = "$SIZE_MIB" ]; then
    ROWS+=("| $mode | $SIZE_MIB MiB | $(median "${alls[@]}") (${alls[*]}) | $(median "${firsts[@]}") | $(median "${sent[@]}") |")
  else
    local scaled
    scaled=$(echo "$(median "${alls[@]}") * $scale" | bc -l | xargs printf '%.0f')
    ROWS+=("| $mode | $mib MiB, x$(printf '%.0f' "$scale") = $SIZE_MIB MiB | $(median "${alls[@]}") (${alls[*]}), scaled: $scaled | $(median "${firsts[@]}") | $(median "${sent[@]}") |")
  fi
}

echo "swarm: 1 seeder capped at $RATE, $NODES downloaders, $RUNS run(s) per mode" >&2
bench partial "$SIZE_MIB"
bench no-partial "$BASE_MIB"

echo
echo "quorrent swarm on loopback: 1 seeder capped at $RATE upload, $NODES nodes start get at once; medians of $RUNS (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| mode | file | all $NODES have it, s (runs) | first done, s | seeder sent, MiB |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
