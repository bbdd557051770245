# Sourced by the bench scripts: what each does before it measures, and the
# nodes it measures with. Set before sourcing: BENCH (the script's name, for
# messages), DIR (its folder under run/, removed at the end unless
# BENCH_KEEP is set), BASE (the cluster's base port); the script's own
# tools in BENCH_TOOLS. Gives: die, q NAME ARGS... (quorrent in a node's
# home), now, since T0, median, bench_home, bench_seed, bench_daemon, PIDS
# (what it started; stopped at the end with the cluster), PW and TAG.
. scripts/lib/procs.sh

export QUORRENT_BASE_PORT="$BASE"
BIN="${CARGO_TARGET_DIR:-target}/release"

die() { echo "$BENCH: $*" >&2; exit 1; }
q() { local u="$1"; shift; "$BIN/quorrent" --home "$DIR/$u" "$@"; }
now() { date +%s.%N; }
since() { printf '%.2f' "$(echo "$(now) - $1" | bc -l)"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
udp_bound() { ss -Hlun "sport = :$1" 2>/dev/null | grep -q .; }

PIDS=()
STARTED_CLUSTER=0
bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pids "${PIDS[@]}"
  if [ "$STARTED_CLUSTER" = 1 ]; then scripts/cluster.sh stop >/dev/null 2>&1 || true; fi
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$DIR"
  exit "$rc"
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in cargo jq ss od bc $BENCH_TOOLS; do command -v "$tool" >/dev/null || die "$tool is needed"; done
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
PW="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TAG="$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"

# bench_home NAME LISTEN: a node home (storage in DIR/NAME/files, peer
# server on LISTEN, `127.0.0.1:0` for any port; its daemon's HTTP address
# chosen by the system), with an account of its own, logged in.
bench_home() {
  mkdir -p "$DIR/$1/files"
  cat >"$DIR/$1/config.json" <<JSON
{
  "proxies": ["127.0.0.1:$BASE"],
  "ca_cert": "certs/ca.pem",
  "log_dir": "logs",
  "log_level": "warn",
  "storage_dir": "$DIR/$1/files",
  "listen": "$2",
  "http_addr": "127.0.0.1:0"
}
JSON
  printf '%s\n' "$PW" | q "$1" register "bench-$1-$TAG" --password-stdin >/dev/null
  QUORRENT_PASSWORD="$PW" q "$1" login "bench-$1-$TAG" >/dev/null
}

# bench_daemon NAME: starts `quorrent seed` in the home and waits for its
# daemon.json; sets HTTP_<NAME> to its API address.
bench_daemon() {
  local u="$1" pid
  rm -f "$DIR/$u/daemon.json"
  "$BIN/quorrent" --home "$DIR/$u" seed >"$DIR/$u-seed.out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do
    if [ -s "$DIR/$u/daemon.json" ]; then
      printf -v "HTTP_$u" '%s' "$(jq -r .http "$DIR/$u/daemon.json")"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || die "$u's daemon exited: $(tail -n 3 "$DIR/$u-seed.out")"
    sleep 0.1
  done
  die "$u's daemon wrote no daemon.json within 10 s"
}
