#!/usr/bin/env bash
# The registry at scale: starts its own tracker cluster and proxy (release
# binaries, ports from QUORRENT_BASE_PORT, default 17600), loads N
# synthetic files through the proxy with OwnMany (quorrent-loadgen bulk),
# and measures, printing a Markdown table beside the targets:
#   - the bulk load rate (files/s through Raft);
#   - each member's RSS before and after the load, and bytes per file;
#   - search latency through the proxy (1,000 varied substrings, limit 50);
#   - a snapshot built on the leader (admin snapshot) under a steady write
#     load: its build time and the longest write seen meanwhile, against
#     the longest write of the same load without a snapshot;
#   - a follower SIGKILLed and restarted: time until it has applied what
#     the leader has;
#   - a follower replaced by an empty one (stopped, removed, data wiped,
#     started with "join", added back, as chaos and tests/roles.rs do):
#     time until it has applied what the leader has, and its peak RSS
#     (VmHWM) against its RSS once settled.
# Usage: scripts/bench-registry.sh [--files N] [--members M] [--clients K]
# Defaults: 10,000,000 files, 3 members, 8 loader clients (--files
# 200000 for a quick try).
# Environment: BENCH_MAX_BATCH (the members' max_batch, default 1024),
# BENCH_STEADY_RATE (writes/s of the steady load, default 200).
# Files live in run/bench-registry (data removed at the end unless
# BENCH_KEEP=1; configs, logs and the loader's JSON stay). Every process
# it starts is stopped when it ends. Not a test: it exits 0 when every
# step ran, whatever the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

FILES=10000000
MEMBERS=3
CLIENTS=8
while [ $# -gt 0 ]; do
  case "$1" in
    --files) FILES="$2"; shift 2 ;;
    --members) MEMBERS="$2"; shift 2 ;;
    --clients) CLIENTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-registry.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BASE="${QUORRENT_BASE_PORT:-17600}"
BIN="${CARGO_TARGET_DIR:-target}/release"
DIR=run/bench-registry
STEADY_RATE="${BENCH_STEADY_RATE:-200}"
MAX_BATCH="${BENCH_MAX_BATCH:-1024}"

die() { echo "bench-registry.sh: $*" >&2; exit 1; }
note() { echo "[$(date +%T)] $*" >&2; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.1f'; }
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }

declare -A TPID=()
OTHER=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${OTHER[@]}" "${TPID[@]}"
  if [ "${BENCH_KEEP:-0}" != 1 ]; then rm -rf "$DIR/data"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq ss bc; do command -v "$tool" >/dev/null || die "$tool is needed"; done
for p in "$BASE" $(seq $((BASE + 1)) $((BASE + MEMBERS))) $(seq $((BASE + 11)) $((BASE + 10 + MEMBERS))); do
  udp_bound "$p" && die "UDP port $p is taken (set QUORRENT_BASE_PORT)"
done

note "building release binaries into $BIN ..."
cargo build --release --quiet -p tracker-cluster -p proxy || die "the build failed"
scripts/gen-certs.sh "$MEMBERS" >/dev/null

rm -rf "$DIR"
mkdir -p "$DIR/data" "$DIR/logs"
members="["
for i in $(seq 1 "$MEMBERS"); do
  [ "$i" -gt 1 ] && members+=","
  members+="{\"id\":$i,\"api\":\"127.0.0.1:$((BASE + i))\",\"raft\":\"127.0.0.1:$((BASE + 10 + i))\"}"
done
members+="]"
# The one user owns every file: its quota is raised. A snapshot keeps only
# 100 entries behind it, so a wiped member must install the snapshot.
tracker_config() {
  local i="$1" extra="${2:-}"
  cat <<JSON
{ "id": $i, "members": $members, $extra
  "data_dir": "$DIR/data/tracker-$i", "log_dir": "$DIR/logs", "certs_dir": "certs",
  "raft": { "keep_after_snapshot": 100 }, "max_batch": $MAX_BATCH,
  "quotas": { "max_files_per_user": 1000000000, "max_peers_per_user": 64 } }
JSON
}
for i in $(seq 1 "$MEMBERS"); do tracker_config "$i" >"$DIR/tracker-$i.json"; done
cat >"$DIR/proxy-1.json" <<JSON
{ "name": "proxy-1", "listen": "127.0.0.1:$BASE", "trackers": $members, "log_dir": "$DIR/logs", "certs_dir": "certs" }
JSON

start_tracker() {
  local i="$1" config="${2:-$DIR/tracker-$1.json}"
  "$BIN/quorrent-tracker" --config "$config" >>"$DIR/tracker-$i.out" 2>&1 &
  TPID[$i]=$!
}
admin() { "$BIN/quorrent-tracker" --config "$DIR/tracker-1.json" admin "$@"; }
loadgen() { "$BIN/quorrent-loadgen" --proxy "127.0.0.1:$BASE" --certs certs "$@"; }
# "ID ROLE APPLIED" per member that answers, from each member's own view.
applied() { admin members 2>/dev/null | awk 'NR > 1 && $4 == "up" {print $1, $5, $7}'; }
leader() { admin leader 2>/dev/null; }
# Waits until member $1 has applied at least what the leader has; prints
# the seconds since $2. One `admin members` a poll (a member that is not
# up yet costs that poll up to 1.5 s, so the figure may be that late).
wait_caught_up() {
  local id="$1" t0="$2" l rows mine theirs
  for _ in $(seq 1 3000); do
    rows="$(applied)"
    l="$(awk '$2 == "leader" {print $1}' <<<"$rows" | head -n 1)"
    if [ -n "$l" ] && [ "$l" != "$id" ]; then
      mine="$(awk -v i="$id" '$1 == i {print $3}' <<<"$rows")"
      theirs="$(awk -v i="$l" '$1 == i {print $3}' <<<"$rows")"
      if [[ "$mine" =~ ^[0-9]+$ && "$theirs" =~ ^[0-9]+$ ]] && [ "$mine" -ge "$theirs" ]; then
        since "$t0"
        return 0
      fi
    fi
    sleep 0.2
  done
  return 1
}

note "starting $MEMBERS members and a proxy on 127.0.0.1:$BASE-$((BASE + 10 + MEMBERS))"
for i in $(seq 1 "$MEMBERS"); do start_tracker "$i"; done
"$BIN/quorrent-proxy" --config "$DIR/proxy-1.json" >"$DIR/proxy-1.out" 2>&1 &
OTHER+=($!)
for _ in $(seq 1 100); do leader >/dev/null && break; sleep 0.2; done
L="$(leader)" || die "no leader elected within 20 s (see $DIR/logs)"
# Sign-up first (the leader's argon2 threads take their memory at their
# first job), so that "empty" differs from "loaded" by the files alone.
loadgen bulk --files 0 >/dev/null || die "signing up the loader failed"
sleep 2
declare -A EMPTY=() LOADED=()
for i in $(seq 1 "$MEMBERS"); do EMPTY[$i]="$(kib "${TPID[$i]}" VmRSS)"; done

note "loading $FILES files with $CLIENTS clients ..."
loadgen bulk --files "$FILES" --clients "$CLIENTS" >"$DIR/bulk.json" || die "the bulk load failed"
sleep 3
for i in $(seq 1 "$MEMBERS"); do LOADED[$i]="$(kib "${TPID[$i]}" VmRSS)"; done
note "bulk: $(cat "$DIR/bulk.json")"

note "1,000 searches ..."
loadgen search --count 1000 --limit 50 --files "$FILES" >"$DIR/search.json" || die "the searches failed"
note "search: $(cat "$DIR/search.json")"

L="$(leader)" || die "no leader"
note "steady writes ($STEADY_RATE/s) without a snapshot, 8 s ..."
loadgen steady --seconds 8 --rate "$STEADY_RATE" --start 2000000000 >"$DIR/steady-quiet.json" || die "steady load failed"
note "steady writes while the leader (tracker $L) builds a snapshot ..."
rm -f "$DIR/stop-steady"
loadgen steady --seconds 3600 --stop-file "$DIR/stop-steady" --rate "$STEADY_RATE" --start 3000000000 \
  >"$DIR/steady-snapshot.json" &
steady=$!
OTHER+=("$steady")
sleep 3
admin snapshot --member "$L" >"$DIR/snapshot-$L.json" || die "the snapshot on the leader failed"
sleep 2
touch "$DIR/stop-steady"
wait "$steady" || die "the steady load failed"
note "snapshot: $(cat "$DIR/snapshot-$L.json"); steady: $(cat "$DIR/steady-snapshot.json")"
SNAP_BYTES="$(grep -h 'snapshot built' "$DIR/logs/tracker-$L.log" | tail -n 1 | sed -E 's/.*bytes=([0-9]+).*/\1/')"
FOLLOWERS=()
for i in $(seq 1 "$MEMBERS"); do [ "$i" != "$L" ] && FOLLOWERS+=("$i"); done
for f in "${FOLLOWERS[@]}"; do
  admin snapshot --member "$f" >"$DIR/snapshot-$f.json" || die "the snapshot on member $f failed"
done

F1="${FOLLOWERS[0]}"
note "SIGKILL of follower $F1 and restart ..."
kill -KILL "${TPID[$F1]}"; wait "${TPID[$F1]}" 2>/dev/null || true
t0="$(now)"
start_tracker "$F1"
RESTART_S="$(wait_caught_up "$F1" "$t0")" || die "member $F1 did not catch up after its restart"
note "restarted member $F1 caught up in $RESTART_S s"
sleep 3
RESTARTED_RSS="$(kib "${TPID[$F1]}" VmRSS)"

F2="${FOLLOWERS[1]:-${FOLLOWERS[0]}}"
note "replacing follower $F2 with an empty one ..."
stop_pids "${TPID[$F2]}"
admin remove "$F2" >/dev/null || die "removing member $F2 failed"
rm -rf "$DIR/data/tracker-$F2"
tracker_config "$F2" "\"join\": true, \"api_addr\": \"127.0.0.1:$((BASE + F2))\", \"raft_addr\": \"127.0.0.1:$((BASE + 10 + F2))\"," \
  >"$DIR/tracker-$F2-join.json"
t0="$(now)"
start_tracker "$F2" "$DIR/tracker-$F2-join.json"
admin add "$F2" "127.0.0.1:$((BASE + F2))" "127.0.0.1:$((BASE + 10 + F2))" >"$DIR/add.json" 2>&1 &
add=$!
OTHER+=("$add")
WIPED_S="$(wait_caught_up "$F2" "$t0")" || die "the wiped member $F2 did not catch up"
# admin add gives up waiting after 60 s; the catch-up goes on regardless.
wait "$add" || note "admin add of member $F2 did not finish: $(tail -n 1 "$DIR/add.json")"
note "wiped member $F2 caught up in $WIPED_S s"
sleep 5
WIPED_PEAK="$(kib "${TPID[$F2]}" VmHWM)"
WIPED_STEADY="$(kib "${TPID[$F2]}" VmRSS)"

# The table.
j() { jq -r "$2" "$DIR/$1"; }
per_file() { awk -v a="$1" -v b="$2" -v n="$FILES" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}'; }
rss_row="" bpf_row="" worst_bpf=0
for i in $(seq 1 "$MEMBERS"); do
  b="$(per_file "${EMPTY[$i]}" "${LOADED[$i]}")"
  role=$([ "$i" = "$L" ] && echo "leader" || echo "follower")
  rss_row+="$i ($role): $(mib "${EMPTY[$i]}") -> $(mib "${LOADED[$i]}") MiB; "
  bpf_row+="$b / "
  [ "$b" -gt "$worst_bpf" ] && worst_bpf="$b"
done
snap_ms="$(j "snapshot-$L.json" .millis)"
follower_snaps=""
for f in "${FOLLOWERS[@]}"; do follower_snaps+="$(j "snapshot-$f.json" .millis) / "; done
ratio="$(awk -v p="$WIPED_PEAK" -v s="$WIPED_STEADY" 'BEGIN {printf "%.2f", p / s}')"

echo
echo "Registry at scale: $FILES files, $MEMBERS members, one proxy, release build, loopback; $(nproc) cores,"
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%F)"
echo
echo "| figure | target | measured |"
echo "|---|---|---|"
echo "| bulk load through the proxy and Raft ($CLIENTS clients, OwnMany of $(j bulk.json .batch) files, max_batch $MAX_BATCH) | - | $(j bulk.json .files_per_s) files/s ($(j bulk.json .seconds) s; request p50 $(j bulk.json .request_p50_ms) ms, p99 $(j bulk.json .request_p99_ms) ms) |"
echo "| RSS per member, empty -> loaded | - | ${rss_row%; } |"
echo "| RAM per file per member (members 1..$MEMBERS) | <= 300 B | ${bpf_row% / } B (worst $worst_bpf) |"
echo "| search through the proxy, 1,000 varied substrings, limit 50: p99 | <= 20 ms | $(j search.json .p99_ms) ms (p50 $(j search.json .p50_ms), p90 $(j search.json .p90_ms), max $(j search.json .max_ms); $(j search.json .full_pages) full pages) |"
echo "| snapshot build on the leader (admin snapshot, $((${SNAP_BYTES:-0} / 1048576)) MiB) | - | $snap_ms ms (followers: ${follower_snaps% / } ms) |"
echo "| longest write of a steady $STEADY_RATE/s Own load while the leader builds it | <= 50 ms | $(j steady-snapshot.json .max_ms) ms at $(j steady-snapshot.json .max_at_s) s (p99 $(j steady-snapshot.json .p99_ms) ms; without a snapshot: longest $(j steady-quiet.json .max_ms) ms, p99 $(j steady-quiet.json .p99_ms) ms; errors $(j steady-snapshot.json .errors)) |"
echo "| follower SIGKILLed and restarted -> applied what the leader has | <= 30 s | $RESTART_S s |"
echo "| follower wiped and added back -> applied what the leader has | <= 60 s | $WIPED_S s |"
echo "| its peak RSS during the install vs settled RSS | <= 1.5x | $(mib "$WIPED_PEAK") / $(mib "$WIPED_STEADY") MiB = ${ratio}x |"
echo "| RSS of a member whose registry comes from a snapshot: restarted $F1, wiped $F2 (bytes per file over the empty RSS) | - | $(mib "$RESTARTED_RSS") MiB ($(per_file "${EMPTY[$F1]}" "$RESTARTED_RSS") B), $(mib "$WIPED_STEADY") MiB ($(per_file "${EMPTY[$F2]}" "$WIPED_STEADY") B) |"
