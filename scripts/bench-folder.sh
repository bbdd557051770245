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

BENCH=bench-folder.sh
BASE="${QUORRENT_BASE_PORT:-17800}"
DIR=run/bench-folder
BENCH_TOOLS="tar python3 diff"
. scripts/lib/bench.sh
FILES="${BENCH_FILES:-10000}"
RUNS="${BENCH_RUNS:-3}"
SEEDERS=(s1 s2 s3 s4)
mkdir -p "$DIR/src"
for u in "${SEEDERS[@]}" dl; do bench_home "$u" 127.0.0.1:0; done

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
for u in "${SEEDERS[@]}"; do bench_daemon "$u"; done

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
