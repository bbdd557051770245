#!/usr/bin/env bash
# The kill-the-primary demo: 32 clients write through the proxy, the Raft
# leader is SIGKILLed in the middle, and the script shows the longest
# pause any client saw, the number of errors (must be 0), checks that
# every acknowledged write is there, then restarts the killed member and
# shows it back as a follower. Exits 0 only if every claim held.
# A download is under way at the same moment: bob fetches a 256 MiB file
# from alice's seeding node, and it must complete with identical bytes.
# Env: QUORRENT_BASE_PORT (default 7400), CLIENTS (32), SECONDS_OF_LOAD (6).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh
BASE="${QUORRENT_BASE_PORT:-7400}"
CLIENTS="${CLIENTS:-32}"
SECS="${SECONDS_OF_LOAD:-6}"
OUT=run/failover
BIN="${CARGO_TARGET_DIR:-target}/release"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }
PIDS=()
cleanup() {
  stop_pids "${PIDS[@]}"
  scripts/cluster.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Building and starting 3 trackers and a proxy"
cargo build --release --quiet -p tracker-cluster -p proxy -p node
scripts/cluster.sh stop --wipe >/dev/null 2>&1 || true
scripts/cluster.sh start
rm -rf "$OUT"; mkdir -p "$OUT"
scripts/cluster.sh status

say "alice seeds a 256 MiB file; bob will download it during the failover"
q() { local u="$1"; shift; "$BIN/quorrent" --home "$OUT/$u" "$@"; }
PW="fo-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for u in alice bob; do
  port=$([ "$u" = alice ] && echo $((BASE + 61)) || echo 0)
  mkdir -p "$OUT/$u/files"
  printf '{ "proxies": ["127.0.0.1:%s"], "ca_cert": "certs/ca.pem", "log_dir": "logs", "storage_dir": "%s", "listen": "127.0.0.1:%s" }\n' \
    "$BASE" "$OUT/$u/files" "$port" >"$OUT/$u/config.json"
  printf '%s\n' "$PW" | q "$u" register "$u" --password-stdin >/dev/null
  printf '%s\n' "$PW" | q "$u" login "$u" --password-stdin >/dev/null
done
SRC="$OUT/alice/files/failover-256MiB.bin"
head -c $((256 << 20)) /dev/urandom >"$SRC"
q alice share "$SRC"
"$BIN/quorrent" --home "$OUT/alice" seed >"$OUT/alice-seed.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do ss -Hlun "sport = :$((BASE + 61))" | grep -q . && break; sleep 0.1; done

say "$CLIENTS clients register files through the proxy for ${SECS}s"
"$BIN/quorrent-loadgen" --proxy "127.0.0.1:$BASE" run --clients "$CLIENTS" --seconds "$SECS" --acked "$OUT/acked.txt" >"$OUT/report.json" &
load=$!
PIDS+=("$load")
# Let the load run a while before the kill (a demo, not a test: a fixed
# moment in the middle of the run is what we want to show).
sleep "$(awk "BEGIN{print $SECS/3}")"
"$BIN/quorrent" --home "$OUT/bob" --json get failover-256MiB.bin --no-seed >"$OUT/bob-get.json" 2>"$OUT/bob-get.err" &
PIDS+=($!)
get=$!
for _ in $(seq 1 500); do
  compgen -G "$OUT/bob/files/.quorrent/*.part" >/dev/null && break
  kill -0 "$get" 2>/dev/null || break
  sleep 0.01
done
old="$(scripts/cluster.sh kill-leader)"
echo "SIGKILLed the leader: tracker $old (at $(date +%T.%N | cut -c1-12)), bob's download running: $(kill -0 "$get" 2>/dev/null && echo yes || echo no)"
get_rc=0; wait "$get" || get_rc=$?
wait "$load" || fail "the load generator failed"
new="$("$BIN/quorrent-tracker" --config run/tracker-1.json admin leader 2>/dev/null || true)"
[ -z "$new" ] && new="$("$BIN/quorrent-tracker" --config run/tracker-2.json admin leader)"
echo "new leader: tracker $new"

report="$(cat "$OUT/report.json")"
field() { echo "$report" | sed -E "s/.*\"$1\":([^,}]*).*/\1/"; }
acked="$(field acknowledged)"; errors="$(field errors)"; pause="$(field longest_pause_ms)"
echo "acknowledged writes: $acked   errors: $errors   longest pause: ${pause} ms   (p50 $(field p50_ms) ms, p99 $(field p99_ms) ms)"

download=no
if [ "$get_rc" = 0 ] && cmp -s "$SRC" "$(jq -r .path "$OUT/bob-get.json")"; then download=yes; fi
echo "bob's download: exit $get_rc, $(jq -c '{seconds, peers}' "$OUT/bob-get.json" 2>/dev/null), identical bytes: $download"

say "Checking every acknowledged write is there (linearizable reads through the proxy)"
verify="$("$BIN/quorrent-loadgen" --proxy "127.0.0.1:$BASE" verify --acked "$OUT/acked.txt")" || true
echo "$verify"

say "Restarting tracker $old from its data folder"
scripts/cluster.sh restart "$old"
back=no
for _ in $(seq 1 100); do
  row="$(scripts/cluster.sh status | awk -v id="$old" '$1 == id')"
  if echo "$row" | grep -q " follower "; then back=yes; break; fi
  sleep 0.2
done
scripts/cluster.sh status

say "Summary"
ok=yes
[ "$errors" = "0" ] && echo "  errors seen by clients: 0" || { echo "  errors seen by clients: $errors"; ok=no; }
echo "  longest pause a client saw: ${pause} ms"
echo "$verify" | grep -q '"missing":0' && echo "  every one of $acked acknowledged writes is there" || { echo "  acknowledged writes missing!"; ok=no; }
[ "$back" = yes ] && echo "  tracker $old rejoined as a follower" || { echo "  tracker $old did not rejoin as follower"; ok=no; }
[ "$download" = yes ] && echo "  bob's download under way during the kill completed, bytes identical" || { echo "  bob's download failed: $(cat "$OUT/bob-get.err")"; ok=no; }
[ "$ok" = yes ] || fail "a claim did not hold"
echo "  all claims held"
