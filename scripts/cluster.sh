#!/usr/bin/env bash
# Runs a local quorrent tracker cluster and its proxy in the background.
#   scripts/cluster.sh start [N]     N trackers (default 3) and proxy-1
#   scripts/cluster.sh status        each member's view, the proxy
#   scripts/cluster.sh kill-leader   SIGKILL the leader, print its id
#   scripts/cluster.sh restart ID    start member ID again from its data
#   scripts/cluster.sh stop [--wipe] stop everything (--wipe: drop data)
# Configs and pid files live in run/, data in data/, logs in logs/.
# QUORRENT_BASE_PORT (default 7400) moves every port: proxy BASE,
# tracker API BASE+i, tracker Raft BASE+10+i, HTTP (metrics, health,
# status): proxy and dashboard BASE+80, tracker i BASE+80+i.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=run
BIN="${CARGO_TARGET_DIR:-target}/release"
BASE="${QUORRENT_BASE_PORT:-7400}"

die() { echo "cluster.sh: $*" >&2; exit 1; }

build() {
  cargo build --release --quiet -p tracker-cluster -p proxy
}

members_json() {
  local n="$1" out="" i
  for i in $(seq 1 "$n"); do
    [ -n "$out" ] && out+=","
    out+="{\"id\":$i,\"api\":\"127.0.0.1:$((BASE + i))\",\"raft\":\"127.0.0.1:$((BASE + 10 + i))\"}"
  done
  echo "[$out]"
}

write_configs() {
  local n="$1" i members
  mkdir -p "$RUN" data logs
  members="$(members_json "$n")"
  echo "$n" > "$RUN/size"
  for i in $(seq 1 "$n"); do
    cat > "$RUN/tracker-$i.json" <<JSON
{ "id": $i, "members": $members, "data_dir": "data/tracker-$i", "log_dir": "logs", "certs_dir": "certs",
  "http_addr": "127.0.0.1:$((BASE + 80 + i))" }
JSON
  done
  cat > "$RUN/proxy-1.json" <<JSON
{ "name": "proxy-1", "listen": "127.0.0.1:$BASE", "trackers": $members, "log_dir": "logs", "certs_dir": "certs",
  "http_addr": "127.0.0.1:$((BASE + 80))" }
JSON
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_tracker() {
  local i="$1"
  alive "$RUN/tracker-$i.pid" && { echo "tracker $i already running"; return; }
  nohup "$BIN/quorrent-tracker" --config "$RUN/tracker-$i.json" >"$RUN/tracker-$i.out" 2>&1 &
  echo $! > "$RUN/tracker-$i.pid"
}

start_proxy() {
  alive "$RUN/proxy-1.pid" && return
  nohup "$BIN/quorrent-proxy" --config "$RUN/proxy-1.json" >"$RUN/proxy-1.out" 2>&1 &
  echo $! > "$RUN/proxy-1.pid"
}

admin() { "$BIN/quorrent-tracker" --config "$RUN/tracker-1.json" admin "$@"; }

wait_leader() {
  local i leader
  for i in $(seq 1 100); do
    if leader="$(admin leader 2>/dev/null)"; then echo "$leader"; return 0; fi
    sleep 0.2
  done
  return 1
}

cmd="${1:-}"; shift || true
case "$cmd" in
  start)
    n="${1:-3}"
    build
    # Idempotent: makes what is missing, re-issues certificates without a role.
    scripts/gen-certs.sh "$n" >/dev/null
    write_configs "$n"
    for i in $(seq 1 "$n"); do start_tracker "$i"; done
    start_proxy
    leader="$(wait_leader)" || die "no leader elected within 20 s (see logs/tracker-*.log)"
    echo "proxy: 127.0.0.1:$BASE"
    echo "dashboard: http://127.0.0.1:$((BASE + 80))/"
    echo "leader: tracker $leader"
    ;;
  status)
    [ -f "$RUN/size" ] || die "no cluster started here"
    admin members
    if alive "$RUN/proxy-1.pid"; then
      ready="$(command -v curl >/dev/null && curl -s --max-time 2 "http://127.0.0.1:$((BASE + 80))/readyz" || true)"
      case "$ready" in *'"ok":true'*) r="ready" ;; *) r="not ready" ;; esac
      echo "proxy-1  127.0.0.1:$BASE  up, $r  dashboard http://127.0.0.1:$((BASE + 80))/"
    else
      echo "proxy-1  127.0.0.1:$BASE  down"
    fi
    ;;
  kill-leader)
    leader="$(admin leader)" || die "no leader to kill"
    alive "$RUN/tracker-$leader.pid" || die "leader $leader is not a process started here"
    kill -9 "$(cat "$RUN/tracker-$leader.pid")"
    rm -f "$RUN/tracker-$leader.pid"
    echo "$leader"
    ;;
  restart)
    id="${1:?usage: cluster.sh restart ID}"
    [ -f "$RUN/tracker-$id.json" ] || die "no member $id"
    start_tracker "$id"
    echo "tracker $id started"
    ;;
  stop)
    for f in "$RUN"/*.pid; do
      [ -e "$f" ] || continue
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
    done
    for f in "$RUN"/*.pid; do
      [ -e "$f" ] || continue
      pid="$(cat "$f")"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$f"
    done
    if [ "${1:-}" = "--wipe" ]; then rm -rf data "$RUN"; fi
    echo "stopped"
    ;;
  *)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
