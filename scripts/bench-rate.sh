#!/usr/bin/env bash
# Benchmark of rate-limit accuracy on localhost: two node daemons
# (`quorrent seed`), a seeder and a downloader, and one transfer per
# direction and run. The cap is set on the running daemon with
# `quorrent limits` (the daemon's PUT /api/limits): first on the seeder's
# upload (`--up`), then, on a fresh file, on the downloader's download
# (`--down`), at each of RATE_CAPS in turn (default 10, 50 and 200 MB/s)
# while the transfer runs. After each change the script lets
# RATE_SETTLE seconds pass (default 1) and then measures the achieved rate
# over RATE_WINDOW seconds (default 10): verified bytes the downloader's
# API reports at both ends of the window, over the time between them.
# Prints a Markdown table: cap, direction, the median measured rate of
# RATE_RUNS runs (default 3; the runs in brackets) and its error against
# the cap; and, for scale, the rate with no cap in the same set-up (the
# ceiling of this machine at the time; RATE_CEILING=0 leaves it out).
# The files are sparse (zeros, no disk space on the seeder); the chunks
# still cross QUIC encrypted, are hashed and are written by the downloader.
# Environment: QUORRENT_BASE_PORT (default 17700), RATE_CAPS, RATE_RUNS,
# RATE_WINDOW, RATE_SETTLE, RATE_CEILING, RATE_KEEP (set: keep run/bench-rate for a
# post-mortem), CARGO_TARGET_DIR. Files live in run/bench-rate; every
# process it starts is stopped when it ends. Not a test: it prints
# figures, it does not judge them.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH=bench-rate.sh
BASE="${QUORRENT_BASE_PORT:-17700}"
DIR=run/bench-rate
BENCH_TOOLS="curl"
BENCH_KEEP="${RATE_KEEP:-}"
. scripts/lib/bench.sh
read -r -a CAPS <<<"${RATE_CAPS:-10 50 200}"
RUNS="${RATE_RUNS:-3}"
WINDOW="${RATE_WINDOW:-10}"
SETTLE="${RATE_SETTLE:-1}"
CEILING="${RATE_CEILING:-1}"

# The file must outlast every window at its cap, plus the starts.
TOTAL_MB=0
for cap in "${CAPS[@]}"; do TOTAL_MB=$((TOTAL_MB + cap * (WINDOW + SETTLE + 1))); done
# No cap: room for 500 MB/s.
[ "$CEILING" = 0 ] || TOTAL_MB=$((TOTAL_MB + 500 * (WINDOW + SETTLE + 1)))
SIZE=$(((TOTAL_MB * 1000000 * 5 / 4 + (1 << 20)) >> 20 << 20))

bench_home seeder 127.0.0.1:0
bench_home dl 127.0.0.1:0
bench_daemon seeder
bench_daemon dl

# verified ID: "BYTES STATE" of the download in the downloader.
verified() {
  { curl -sf "http://$HTTP_dl/api/files/$1" || echo '{}'; } |
    jq -r 'if .chunks > 0 then "\((.have * .size / .chunks) | floor) \(.state)" else "0 \(.state)" end'
}


declare -A MEASURED
# one_run DIRECTION RUN: one transfer, the caps in turn; fills MEASURED.
one_run() {
  local dir="$1" run="$2" name file_id cap b0 b1 s1 t0 t1 rate flag who
  name="rate-$dir-$run-$TAG.bin"
  truncate -s "$SIZE" "$DIR/seeder/files/$name"
  file_id="$(q seeder --json share "$DIR/seeder/files/$name" | jq -r .file_id)"
  [ "$dir" = upload ] && who=seeder flag=--up || who=dl flag=--down
  q "$who" limits "$flag" "${CAPS[0]}MB/s" >/dev/null
  curl -sf -X POST -H 'Content-Type: application/json' -d "{\"id\": \"$file_id\"}" \
    "http://$HTTP_dl/api/downloads" >/dev/null || die "the download did not start"
  # Past the start: a few chunks in.
  for _ in $(seq 1 300); do
    read -r b0 s1 < <(verified "$file_id")
    [ "$b0" -ge $((2 << 20)) ] && break
    sleep 0.1
  done
  [ "$b0" -ge $((2 << 20)) ] || die "$dir run $run: the transfer did not start"
  local phases=("${CAPS[@]}")
  [ "$CEILING" = 0 ] || phases+=(none)
  for cap in "${phases[@]}"; do
    if [ "$cap" = none ]; then
      q "$who" limits "$flag" none >/dev/null
    else
      q "$who" limits "$flag" "${cap}MB/s" >/dev/null
    fi
    sleep "$SETTLE"
    read -r b0 _ < <(verified "$file_id")
    t0=$(now)
    sleep "$WINDOW"
    read -r b1 s1 < <(verified "$file_id")
    t1=$(now)
    [ "$s1" = downloading ] || die "$dir run $run: the transfer ended inside the window of cap ${cap}"
    rate=$(echo "($b1 - $b0) / ($t1 - $t0) / 1000000" | bc -l)
    MEASURED["$cap,$dir"]+="$(printf '%.2f' "$rate") "
    echo "    $dir cap ${cap}: $(printf '%.2f' "$rate") MB/s" >&2
  done
  curl -sf -X DELETE "http://$HTTP_dl/api/files/$file_id?delete_data=true" >/dev/null || true
  q "$who" limits "$flag" none >/dev/null
  q seeder unshare "$file_id" >/dev/null || true
  rm -f "$DIR/seeder/files/$name"
}

echo "rate limits: caps ${CAPS[*]} MB/s, a window of $WINDOW s each, $RUNS run(s), files of $((SIZE >> 20)) MiB" >&2
for r in $(seq 1 "$RUNS"); do
  for dir in upload download; do
    echo "  $dir, run $r ..." >&2
    one_run "$dir" "$r"
  done
done

echo
echo "quorrent rate limits on loopback: one seeder daemon, one downloader daemon, the cap changed live with \`quorrent limits\`; achieved rate over $WINDOW s, medians of $RUNS (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| cap | direction | measured, MB/s (runs) | error |"
echo "|---|---|---|---|"
for cap in "${CAPS[@]}"; do
  for dir in upload download; do
    read -r -a runs <<<"${MEASURED["$cap,$dir"]}"
    m=$(median "${runs[@]}")
    err=$(echo "($m / $cap - 1) * 100" | bc -l)
    printf '| %s MB/s | %s | %.2f (%s) | %+.1f %% |\n' "$cap" "$dir" "$m" "${runs[*]}" "$err"
  done
done
if [ "$CEILING" != 0 ]; then
  for dir in upload download; do
    read -r -a runs <<<"${MEASURED["none,$dir"]}"
    printf '| none | %s | %.2f (%s) | (the ceiling) |\n' "$dir" "$(median "${runs[@]}")" "${runs[*]}"
  done
fi
