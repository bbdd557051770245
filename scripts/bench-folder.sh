#!/usr/bin/env bash
# Benchmark of sharing and getting a folder against one tar of the same
# folder, on localhost. Starts a tracker cluster and proxy with
# scripts/cluster.sh, makes a folder of BENCH_FILES random files (sizes
# log-uniform from 4 KiB to 1 MiB, in folders of 100; mean about 190 KiB)
# and a tar of it, shares both from 4 seeder nodes (all four serve the
# same files on disk) and times, RUNS times each: `share` of the folder and
# of the tar (hash and register, by the first seeder), and `get --no-seed`
# of each from the 4 seeders by one downloader (the download is deleted
# between runs, and checked: `diff -r` for the folder, `cmp` for the tar).
# Prints a Markdown table of medians.
# Environment: QUORRENT_BASE_PORT (default 17800), BENCH_FILES (default
# 10000), BENCH_RUNS (default 3), CARGO_TARGET_DIR (where the release
# binaries are built and run from; default target). Files live in
# run/bench-folder; every process it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

BASE="${QUORRENT_BASE_PORT:-17800}"
export QUORRENT_BASE_PORT="$BASE"
FILES="${BENCH_FILES:-10000}"
RUNS="${BENCH_RUNS:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release"
DIR=run/bench-folder
SEEDERS=(s1 s2 s3 s4)

die() { echo "bench-folder.sh: $*" >&2; exit 1; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
q() { local u="$1"; shift; "$BIN/quorrent" --home "$DIR/$u" "$@"; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc -l)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

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

for tool in cargo jq ss od awk bc tar python3 diff; do command -v "$tool" >/dev/null || die "$tool is needed"; done
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
mkdir -p "$DIR/src" logs
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

TREE="$DIR/src/dataset-$TAG"
echo "making $FILES random files (4 KiB to 1 MiB, log-uniform) and a tar of them ..." >&2
python3 - "$TREE" "$FILES" <<'PY'
import math, os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
for i in range(n):
    d = os.path.join(root, f"part-{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    size = int(math.exp(rng.uniform(math.log(4096), math.log(1 << 20))))
    with open(os.path.join(d, f"sample-{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
TAR="$DIR/src/dataset-$TAG.tar"
tar -cf "$TAR" -C "$DIR/src" "$(basename "$TREE")"
BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
TAR_BYTES=$(stat -c %s "$TAR")

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

# share: timed RUNS times on s1 (each hashes everything again; the
# registration is idempotent), then once by every other seeder.
declare -A SHARE_T ID
for what in folder tar; do
  path="$TREE"; [ "$what" = tar ] && path="$TAR"
  times=()
  for r in $(seq 1 "$RUNS"); do
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now)
    ID[$what]="$(q s1 --json share "$path" | jq -r 'if type == "array" then .[0] else . end | .file_id')"
    times+=("$(since "$t0")")
    echo "  share $what run $r: ${times[-1]} s" >&2
  done
  SHARE_T[$what]="$(median "${times[@]}") (${times[*]})"
  for u in "${SEEDERS[@]:1}"; do q "$u" --json share "$path" >/dev/null; done
done
for u in "${SEEDERS[@]}"; do start_seed "$u"; done

declare -A GET_T RATE
for what in folder tar; do
  times=()
  for r in $(seq 1 "$RUNS"); do
    out="$DIR/dl/out"
    rm -rf "$out"
    mkdir -p "$out"
    sync
    t0=$(now)
    res="$(q dl --json get "${ID[$what]}" --no-seed -o "$out")" || die "get $what failed: $res"
    times+=("$(since "$t0")")
    got="$(echo "$res" | jq -r .path)"
    if [ "$what" = folder ]; then
      diff -r "$TREE" "$got" >/dev/null || die "the folder download differs from the source"
    else
      cmp -s "$TAR" "$got" || die "the tar download differs from the source"
    fi
    echo "  get $what run $r: ${times[-1]} s ($(echo "$res" | jq -r .peers) peers)" >&2
    # The next run fetches again: forget the copy.
    q dl --json unshare "${ID[$what]}" >/dev/null
  done
  m=$(median "${times[@]}")
  GET_T[$what]="$m (${times[*]})"
  b=$BYTES; [ "$what" = tar ] && b=$TAR_BYTES
  RATE[$what]=$(printf '%.0f' "$(echo "$b / $m / 1000000" | bc -l)")
done

echo
echo "A folder of $FILES files ($((BYTES >> 20)) MiB) against one tar of it ($((TAR_BYTES >> 20)) MiB), 4 seeders, loopback, medians of $RUNS (runs in brackets; share with a cold page cache where it could be dropped; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| item | share (hash + register), s | get from 4 seeders, s | get rate, MB/s |"
echo "|---|---|---|---|"
echo "| folder, $FILES files | ${SHARE_T[folder]} | ${GET_T[folder]} | ${RATE[folder]} |"
echo "| one tar of it | ${SHARE_T[tar]} | ${GET_T[tar]} | ${RATE[tar]} |"
