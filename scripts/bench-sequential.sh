#!/usr/bin/env bash
# Benchmark of `quorrent get --sequential` against the default order
# (rarest first, random ties) on localhost. Starts a tracker cluster and
# proxy with scripts/cluster.sh, makes a random file, shares it from 4
# seeder nodes and times `quorrent get --no-seed --json` from one
# downloader node, RUNS times in each order (the downloaded file is deleted
# between runs). While a get runs, its verified-chunk set
# (DIR/.quorrent/ID.have, saved every 32 chunks) is polled to find when
# 10 % of the chunks were held and when the chunks held from the start of
# the file with no gap (what a player can read) reached 10 % of it.
# Prints a Markdown table of medians: total time, time to 10 % held, time
# to 10 % contiguous from the start. Times run from starting the command.
# Environment: QUORRENT_BASE_PORT (default 17700), BENCH_SIZE_MIB (default
# 512), BENCH_RUNS (default 3), CARGO_TARGET_DIR (where the release
# binaries are built and run from; default target). Files live in
# run/bench-sequential; every process it starts is stopped when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH=bench-sequential.sh
BASE="${QUORRENT_BASE_PORT:-17700}"
DIR=run/bench-sequential
BENCH_TOOLS="awk"
. scripts/lib/bench.sh
SIZE_MIB="${BENCH_SIZE_MIB:-512}"
RUNS="${BENCH_RUNS:-3}"
NAME="stream-${SIZE_MIB}MiB.bin"
SEEDERS=(s1 s2 s3 s4)
for u in "${SEEDERS[@]}" dl; do bench_home "$u" 127.0.0.1:0; done

echo "making a ${SIZE_MIB} MiB random file, shared by ${#SEEDERS[@]} seeders ..." >&2
SRC="$DIR/s1/files/$NAME"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$SRC"
for u in "${SEEDERS[@]:1}"; do ln "$SRC" "$DIR/$u/files/$NAME"; done

FILE_ID=""
for u in "${SEEDERS[@]}"; do
  FILE_ID="$(q "$u" --json share "$DIR/$u/files/$NAME" | jq -r .file_id)"
  bench_daemon "$u"
done
HAVE="$DIR/dl/files/.quorrent/$FILE_ID.have"

# "HELD PREFIX" of a have file: chunks set, and chunks set from chunk 0
# with no gap (bit i of the file is chunk i, least significant bit first).
have_counts() {
  od -An -v -tu1 "$1" 2>/dev/null | awk '
    { for (i = 1; i <= NF; i++) { b = $i
        for (k = 0; k < 8; k++) { bit = int(b / 2 ^ k) % 2
          held += bit; if (!bit) gap = 1; if (!gap) prefix++ } } }
    END { printf "%d %d\n", held, prefix }'
}

ROWS=()
CHUNKS=""

bench() {
  local mode="$1" r totals=() helds=() prefixes=()
  local flags=()
  [ "$mode" = sequential ] && flags=(--sequential)
  for r in $(seq 1 "$RUNS"); do
    rm -f "$DIR/dl/files/$NAME"
    sync
    local out="$DIR/get-$mode-$r.json" t0 t_held="" t_prefix="" t_end pid
    t0=$(now)
    "$BIN/quorrent" --home "$DIR/dl" --json get "$FILE_ID" --no-seed "${flags[@]}" >"$out" &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      if [ -z "$t_prefix" ] && [ -s "$HAVE" ]; then
        local t held prefix
        t=$(now)
        read -r held prefix < <(have_counts "$HAVE")
        # Ten per cent of the chunks, rounded up.
        local tenth=$(((CHUNKS + 9) / 10))
        [ -z "$t_held" ] && [ "$held" -ge "$tenth" ] && t_held=$(echo "$t - $t0" | bc -l)
        [ "$prefix" -ge "$tenth" ] && t_prefix=$(echo "$t - $t0" | bc -l)
      fi
      sleep 0.01
    done
    wait "$pid" || die "get failed: $(cat "$out")"
    t_end=$(echo "$(now) - $t0" | bc -l)
    cmp -s "$SRC" "$(jq -r .path "$out")" || die "the $mode download differs from the source"
    # Not seen while it ran (the last save came before): the file is whole
    # at the end.
    [ -n "$t_held" ] || t_held=$t_end
    [ -n "$t_prefix" ] || t_prefix=$t_end
    totals+=("$(printf '%.2f' "$t_end")")
    helds+=("$(printf '%.2f' "$t_held")")
    prefixes+=("$(printf '%.2f' "$t_prefix")")
    echo "  $mode run $r: total ${totals[-1]} s, 10% held ${helds[-1]} s, 10% contiguous from the start ${prefixes[-1]} s ($(jq -r .peers "$out") peers)" >&2
  done
  ROWS+=("| $mode | $(median "${totals[@]}") (${totals[*]}) | $(median "${helds[@]}") (${helds[*]}) | $(median "${prefixes[@]}") (${prefixes[*]}) |")
}

CHUNKS=$(q s1 --json list | jq -r --arg id "$FILE_ID" '.[] | select(.file_id == $id) | .chunks')
[ -n "$CHUNKS" ] && [ "$CHUNKS" -gt 0 ] || die "cannot read the chunk count of $FILE_ID"
echo "timing get, default order and --sequential, $RUNS runs each ..." >&2
bench default
bench sequential

echo
echo "quorrent get of a ${SIZE_MIB} MiB random file ($CHUNKS chunks) from ${#SEEDERS[@]} seeders, loopback, medians of $RUNS (runs in brackets; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| order | total, s | 10% of the chunks held, s | 10% contiguous from the start, s |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
