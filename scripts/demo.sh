#!/usr/bin/env bash
# The whole quorrent tour on localhost, in one command (run from anywhere;
# it works from the repository root):
#   1. builds the release binaries, starts 3 trackers and a proxy;
#   2. makes node homes for alice, carol, dave (seeders) and bob;
#   3. accounts for all four; alice shares a random file, carol and dave
#      download it and seed it too: three owners;
#   4. bob searches and sees the file with its three live owners;
#   5. bob downloads it from all three at once while the tracker leader is
#      SIGKILLed; the download must succeed and the bytes must match;
#   6. the killed member is restarted and rejoins as a follower;
#   7. a summary. Exit status 0 only if every step held.
# Environment: QUORRENT_BASE_PORT (default 7400; the proxy's port, as in
# scripts/cluster.sh), DEMO_SIZE_MIB (default 256), DEMO_KEEP=1 keeps the
# demo's files in run/demo afterwards (they are removed on success).
# Everything it starts is stopped when it ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/procs.sh

BASE="${QUORRENT_BASE_PORT:-7400}"
export QUORRENT_BASE_PORT="$BASE"
SIZE_MIB="${DEMO_SIZE_MIB:-256}"
# cluster.sh runs what `cargo build --release` puts in target/release.
unset CARGO_TARGET_DIR
BIN=target/release
DEMO=run/demo
NAME="demo-${SIZE_MIB}MiB.bin"
T0=$SECONDS

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; D=$'\e[2m'; N=$'\e[0m'; else B= G= R= D= N=; fi
step() { printf '\n%s==> [%s] %s%s  %s(t+%ss)%s\n' "$B" "$1" "$2" "$N" "$D" "$((SECONDS - T0))" "$N"; }
say() { printf '    %s\n' "$*"; }
ok() { printf '    %sok%s %s\n' "$G" "$N" "$*"; }
die() { printf '\n%sdemo failed:%s %s\n' "$R" "$N" "$*" >&2; exit 1; }
# Shows a node command, then runs it as USER: quorrent --home run/demo/USER.
q() {
  local user="$1"; shift
  printf '    %s$ quorrent --home %s/%s %s%s\n' "$D" "$DEMO" "$user" "$*" "$N" >&2
  "$BIN/quorrent" --home "$DEMO/$user" "$@"
}
json_field() { jq -r ".$2" <<<"$1"; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }

# --- what runs, and the clean-up that stops all of it -------------------
PIDS=()
STARTED_CLUSTER=0
SUCCESS=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if [ "$STARTED_CLUSTER" = 1 ]; then scripts/cluster.sh stop >/dev/null 2>&1 || true; fi
  if [ "$SUCCESS" = 1 ] && [ "${DEMO_KEEP:-0}" != 1 ]; then rm -rf "$DEMO"; fi
  if [ "$SUCCESS" != 1 ] && [ -d "$DEMO" ]; then
    echo "the demo's homes and outputs are kept in $DEMO; logs in logs/" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq ss cmp head; do command -v "$tool" >/dev/null || die "$tool is needed"; done
# Never take over a cluster that this checkout runs on other ports.
if [ -f run/proxy-1.json ] && ! grep -q "\"127.0.0.1:$BASE\"" run/proxy-1.json; then
  for f in run/*.pid; do
    [ -e "$f" ] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then
      die "a cluster on other ports runs from this checkout (run/*.pid); stop it with scripts/cluster.sh stop, or set QUORRENT_BASE_PORT to its ports"
    fi
  done
fi

# --- 1 ------------------------------------------------------------------
step 1/7 "build, and start 3 trackers and a proxy on 127.0.0.1:$BASE"
say "cargo build --release -p tracker-cluster -p proxy -p node"
cargo build --release --quiet -p tracker-cluster -p proxy -p node || die "the build failed"
scripts/cluster.sh stop --wipe >/dev/null
STARTED_CLUSTER=1
scripts/cluster.sh start | sed 's/^/    /'
[ "${PIPESTATUS[0]}" = 0 ] || die "the cluster did not start"

# --- 2 ------------------------------------------------------------------
step 2/7 "node homes in $DEMO (configs, storage), logs in logs/"
rm -rf "$DEMO"
mkdir -p "$DEMO" logs
declare -A LISTEN=([alice]=$((BASE + 51)) [carol]=$((BASE + 52)) [dave]=$((BASE + 53)) [bob]=0)
for u in alice carol dave bob; do
  mkdir -p "$DEMO/$u"
  # Seeders listen on fixed ports, so the address they register when
  # they share or download is the one their `seed` serves on.
  cat >"$DEMO/$u/config.json" <<JSON
{
  "proxies": ["127.0.0.1:$BASE"],
  "ca_cert": "certs/ca.pem",
  "log_dir": "logs",
  "storage_dir": "$DEMO/$u/files",
  "listen": "127.0.0.1:${LISTEN[$u]}",
  "sharing": { "heartbeat_secs": 5 }
}
JSON
  say "$DEMO/$u/config.json  (listen 127.0.0.1:${LISTEN[$u]}, proxy 127.0.0.1:$BASE)"
done
for u in alice carol dave; do
  udp_bound "${LISTEN[$u]}" && die "UDP port ${LISTEN[$u]} is taken; pick another QUORRENT_BASE_PORT"
done

# --- 3 ------------------------------------------------------------------
step 3/7 "accounts; alice shares a ${SIZE_MIB} MiB random file; carol and dave fetch it and seed"
PW="demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for u in alice carol dave bob; do
  # The password goes on standard input or in the environment, never argv.
  printf '%s\n' "$PW" | q "$u" register "$u" --password-stdin | sed 's/^/    /'
  QUORRENT_PASSWORD="$PW" q "$u" login "$u" | sed 's/^/    /'
done
mkdir -p "$DEMO/alice/files"
SRC="$DEMO/alice/files/$NAME"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$SRC"
say "made $SRC"
SHARED="$(q alice --json share "$SRC")" || die "alice's share failed"
FILE_ID="$(json_field "$SHARED" file_id)"
say "$SHARED"

# Starts `quorrent seed` for USER in the background and waits (bounded)
# until its peer server is up on the user's port.
start_seed() {
  local u="$1" port="${LISTEN[$1]}"
  printf '    %s$ quorrent --home %s/%s seed &%s\n' "$D" "$DEMO" "$u" "$N"
  "$BIN/quorrent" --home "$DEMO/$u" seed >"$DEMO/$u-seed.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    udp_bound "$port" && { ok "$u seeds on 127.0.0.1:$port (pid $!)"; return 0; }
    kill -0 "$!" 2>/dev/null || die "$u's seed exited: $(tail -n 3 "$DEMO/$u-seed.out")"
    sleep 0.1
  done
  die "$u's seed did not listen within 10 s"
}
start_seed alice
for u in carol dave; do
  GOT="$(q "$u" --json get "$NAME" --no-seed)" || die "$u's download failed"
  say "$GOT"
  cmp -s "$SRC" "$(json_field "$GOT" path)" || die "$u's copy differs from alice's file"
  ok "$u has an identical copy (from $(json_field "$GOT" peers) peer(s))"
  start_seed "$u"
done

# --- 4 ------------------------------------------------------------------
step 4/7 "bob searches"
q bob search demo | sed 's/^/    /'
OWNERS=0
for _ in $(seq 1 50); do
  HITS="$(q bob --json search "$NAME" 2>/dev/null)" || die "bob's search failed"
  OWNERS="$(jq -r --arg id "$FILE_ID" '[.[] | select(.file_id == $id)][0].owners // 0' <<<"$HITS")"
  [ "$OWNERS" = 3 ] && break
  sleep 0.2
done
[ "$OWNERS" = 3 ] || die "bob sees $OWNERS live owners, not 3"
ok "bob sees $NAME with 3 live owners"

# --- 5 ------------------------------------------------------------------
step 5/7 "bob downloads from all three at once; the leader is killed meanwhile"
LEADER_BEFORE="$(scripts/cluster.sh status | awk '$5 == "leader" { print $1; exit }')"
say "leader now: tracker ${LEADER_BEFORE:-?}"
printf '    %s$ quorrent --home %s/bob --json get %s --no-seed &%s\n' "$D" "$DEMO" "$NAME" "$N"
"$BIN/quorrent" --home "$DEMO/bob" --json get "$NAME" --no-seed >"$DEMO/bob-get.json" 2>"$DEMO/bob-get.err" &
GET_PID=$!
PIDS+=("$GET_PID")
# Bounded wait until the download has begun: its part file (or its
# verified-chunk set) appears in bob's storage.
PART=""
for _ in $(seq 1 1000); do
  PART="$(compgen -G "$DEMO/bob/files/.quorrent/*.part" || compgen -G "$DEMO/bob/files/.quorrent/*.have" || true)"
  [ -n "$PART" ] && break
  kill -0 "$GET_PID" 2>/dev/null || break
  sleep 0.01
done
[ -n "$PART" ] || die "bob's download never started: $(cat "$DEMO/bob-get.err")"
say "download under way: ${PART%%$'\n'*}"
KILLED="$(scripts/cluster.sh kill-leader)" || die "kill-leader failed"
if kill -0 "$GET_PID" 2>/dev/null; then DURING=yes; else DURING=no; fi
ok "SIGKILLed the leader, tracker $KILLED (bob's get still running: $DURING)"
GET_RC=0
wait "$GET_PID" || GET_RC=$?
[ "$GET_RC" = 0 ] || die "bob's get failed (exit $GET_RC): $(cat "$DEMO/bob-get.err")"
[ -s "$DEMO/bob-get.err" ] && die "bob's get printed errors: $(cat "$DEMO/bob-get.err")"
GOT="$(cat "$DEMO/bob-get.json")"
say "$(jq -c 'del(.per_peer)' <<<"$GOT")"
jq -r '.per_peer[] | "      from \(.peer_id[0:12])…  \(.chunks) chunks  \(.bytes / 1048576 | floor) MiB"' <<<"$GOT" >&2
BOB_PATH="$(json_field "$GOT" path)"
PEERS="$(json_field "$GOT" peers)"
SECS="$(json_field "$GOT" seconds)"
cmp "$SRC" "$BOB_PATH" || die "bob's file differs from alice's"
ok "bob's file is identical to alice's (cmp $SRC $BOB_PATH)"
[ "$PEERS" = 3 ] || die "bob downloaded from $PEERS peer(s), not 3"
ok "chunks came from $PEERS peers"
[ "$DURING" = yes ] || die "bob's get ended before the leader was killed; try a bigger DEMO_SIZE_MIB"
NEW_LEADER=""
for _ in $(seq 1 50); do
  NEW_LEADER="$(scripts/cluster.sh status 2>/dev/null | awk -v k="$KILLED" '$5 == "leader" && $1 != k { print $1; exit }')"
  [ -n "$NEW_LEADER" ] && break
  sleep 0.2
done
[ -n "$NEW_LEADER" ] || die "no new leader after the kill"
ok "new leader: tracker $NEW_LEADER"
HITS="$(q bob --json search "$NAME" 2>/dev/null)" || die "bob's search failed"
OWNERS="$(jq -r --arg id "$FILE_ID" '[.[] | select(.file_id == $id)][0].owners // 0' <<<"$HITS")"
[ "$OWNERS" = 4 ] || die "after the failover the tracker lists $OWNERS owners, not 4 (bob's registration lost?)"
ok "bob's registration as an owner went through the new leader: 4 owners"

# --- 6 ------------------------------------------------------------------
step 6/7 "restart tracker $KILLED; it rejoins as a follower"
scripts/cluster.sh restart "$KILLED" | sed 's/^/    /'
ROLE=""
for _ in $(seq 1 50); do
  STATUS="$(scripts/cluster.sh status 2>/dev/null)" || true
  ROLE="$(awk -v k="$KILLED" '$1 == k { print $4 "/" $5 }' <<<"$STATUS")"
  [ "$ROLE" = up/follower ] && break
  sleep 0.2
done
printf '%s\n' "$STATUS" | sed 's/^/    /'
[ "$ROLE" = up/follower ] || die "tracker $KILLED is $ROLE, not a follower"
ok "tracker $KILLED is back, as a follower"

# --- 7 ------------------------------------------------------------------
step 7/7 "summary"
BYTES="$(json_field "$GOT" size)"
RATE="$(awk -v b="$BYTES" -v s="$SECS" 'BEGIN { printf "%.0f", (s > 0 ? b / s / 1e6 : 0) }')"
printf '    file          %s, %s bytes (%s MiB), id %s…\n' "$NAME" "$BYTES" "$SIZE_MIB" "${FILE_ID:0:16}"
printf '    download      %.2f s, %s MB/s, from %s peers (alice, carol, dave)\n' "$SECS" "$RATE" "$PEERS"
printf '    failover      leader tracker %s killed during the download; new leader tracker %s\n' "$KILLED" "$NEW_LEADER"
printf '    restart       tracker %s rejoined as a follower\n' "$KILLED"
printf '    verified      OK (cmp: identical bytes; bob registered as the 4th owner)\n'
printf '    took          %s s in all\n' "$((SECONDS - T0))"
SUCCESS=1
printf '\n%sdemo OK%s — stopping the seeders and the cluster\n' "$G" "$N"
