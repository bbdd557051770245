#!/usr/bin/env bash
# Test hosts on this machine: one network namespace per tracker, proxy and
# client host, joined by a private bridge (needs root).
#   scripts/testnet.sh up   [--name NAME] [--prefix 10.X.Y] [--trackers N] [--proxies N] [--clients N]
#   scripts/testnet.sh down [--name NAME]
#   scripts/testnet.sh exec [--name NAME] HOST CMD...   runs CMD in host HOST's namespace
#   scripts/testnet.sh hosts [--name NAME]              prints "HOST IP" per line
# Defaults: NAME qnet (at most 6 characters), prefix 10.77.0, 3 trackers,
# 2 proxies, 2 clients. Hosts t1..tN, p1..pN, c1..cN live in namespaces
# NAME-t1 ...; the bridge NAMEbr (root namespace) is PREFIX.1/24, tracker i
# PREFIX.(10+i), proxy i PREFIX.(20+i), client i PREFIX.(30+i); each host
# has lo up and a default route via PREFIX.1. What `up` makes is written to
# /run/quorrent-testnet/NAME; `down` removes exactly that (and leftovers of
# a half-made `up`) and never fails on missing pieces. nft is installed if
# missing (the chaos runner puts its rules inside the namespaces).
set -uo pipefail

STATE_DIR=/run/quorrent-testnet
NAME=qnet
PREFIX=10.77.0
TRACKERS=3
PROXIES=2
CLIENTS=2

die() { echo "testnet.sh: $*" >&2; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd="${1:-}"; shift || true
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
    --trackers) TRACKERS="${2:?--trackers needs a value}"; shift 2 ;;
    --proxies) PROXIES="${2:?--proxies needs a value}"; shift 2 ;;
    --clients) CLIENTS="${2:?--clients needs a value}"; shift 2 ;;
    --help|-h) usage ;;
    *) break ;;
  esac
done

[[ "$NAME" =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "--name $NAME: 1-6 lower-case letters and digits, starting with a letter (interface names are at most 15 bytes)"
[[ "$PREFIX" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "--prefix $PREFIX: three numbers, e.g. 10.77.0"
for n in "$TRACKERS" "$PROXIES" "$CLIENTS"; do
  [[ "$n" =~ ^[0-9]$ ]] || die "--trackers/--proxies/--clients: 0 to 9 each"
done

BR="${NAME}br"
STATE="$STATE_DIR/$NAME"
NFT_COMMENT="quorrent-testnet-$NAME"

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "testnet.sh: needs root (network namespaces, veth pairs, a bridge); run it with sudo" >&2
    exit 2
  fi
  command -v ip >/dev/null || die "the ip command (iproute2) is missing"
}

# host -> IP: tI -> .(10+I), pI -> .(20+I), cI -> .(30+I)
host_ip() {
  local h="$1" kind="${1:0:1}" i="${1:1}"
  case "$kind" in
    t) echo "$PREFIX.$((10 + i))" ;;
    p) echo "$PREFIX.$((20 + i))" ;;
    c) echo "$PREFIX.$((30 + i))" ;;
    *) die "unknown host $h" ;;
  esac
}

all_hosts() {
  local i
  for i in $(seq 1 "$TRACKERS"); do echo "t$i"; done
  for i in $(seq 1 "$PROXIES"); do echo "p$i"; done
  for i in $(seq 1 "$CLIENTS"); do echo "c$i"; done
}

record() { echo "$*" >> "$STATE"; }

ensure_nft() {
  command -v nft >/dev/null && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null 2>&1 \
    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null 2>&1; } \
    || die "nft is missing and apt-get install nftables failed"
}

# With br_netfilter loaded and net.bridge.bridge-nf-call-iptables=1 (as
# docker sets it), frames crossing our bridge go through the root
# namespace's IP forward chains, whose policy may be DROP. Rather than turn
# the global switch off (other bridges rely on it), accept traffic that
# enters and leaves our bridge, in each forward chain, and record it.
open_bridge_filter() {
  local v
  v="$(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo 0)"
  [ "$v" = 1 ] || return 0
  local ipt
  for ipt in iptables ip6tables; do
    if command -v "$ipt" >/dev/null && "$ipt" -S FORWARD >/dev/null 2>&1; then
      "$ipt" -I FORWARD -i "$BR" -o "$BR" -j ACCEPT -m comment --comment "$NFT_COMMENT" 2>/dev/null \
        && record "ipt $ipt"
    fi
  done
  # Forward chains of nftables tables not made through iptables.
  command -v nft >/dev/null || return 0
  local fam table chain
  while read -r fam table chain; do
    [ -n "$chain" ] || continue
    nft insert rule "$fam" "$table" "$chain" iifname "$BR" oifname "$BR" accept comment "\"$NFT_COMMENT\"" 2>/dev/null \
      && record "nft $fam $table $chain"
  done < <(nft list chains 2>/dev/null | awk '
    /^table / { fam = $2; table = $3 }
    /^[ \t]*chain / { chain = $2 }
    /hook forward/ && (fam == "ip" || fam == "ip6" || fam == "inet") { print fam, table, chain }
  ')
}

close_bridge_filter() {
  local ipt fam table chain handle
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    while "$ipt" -D FORWARD -i "$BR" -o "$BR" -j ACCEPT -m comment --comment "$NFT_COMMENT" 2>/dev/null; do :; done
  done
  command -v nft >/dev/null || return 0
  # Every rule carrying our comment, in any chain.
  nft -a list ruleset 2>/dev/null | awk -v c="\"$NFT_COMMENT\"" '
    /^table / { fam = $2; table = $3 }
    /^\tchain / { chain = $2 }
    index($0, "comment " c) && /# handle / { print fam, table, chain, $NF }
  ' | while read -r fam table chain handle; do
    nft delete rule "$fam" "$table" "$chain" handle "$handle" 2>/dev/null || true
  done
}

down() {
  # What the state file says was made, then anything of this NAME that a
  # half-made `up` left behind.
  local kind what ns pids h
  if [ -f "$STATE" ]; then
    while read -r kind what _; do
      case "$kind" in
        netns)
          pids="$(ip netns pids "$what" 2>/dev/null)"
          [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
          ip netns delete "$what" 2>/dev/null ;;
        link) ip link delete "$what" 2>/dev/null ;;
      esac
    done < "$STATE"
  fi
  # Processes still running inside our namespaces go with them.
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NAME}-[tpc][0-9]+$"); do
    pids="$(ip netns pids "$ns" 2>/dev/null)"
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    ip netns delete "$ns" 2>/dev/null
  done
  # Root-side veth ends (deleting the namespace removes the pair, but a
  # half-made `up` may have left one outside).
  for h in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${NAME}(-[tpc][0-9]+|[tpc][0-9]+(h|n)?)$"); do
    ip link delete "$h" 2>/dev/null
  done
  ip link delete "$BR" 2>/dev/null
  close_bridge_filter
  rm -f "$STATE"
  return 0
}

up() {
  need_root
  [ -e "$STATE" ] && die "testnet $NAME is already up (scripts/testnet.sh down --name $NAME first)"
  ip link show "$BR" >/dev/null 2>&1 && die "interface $BR exists already (another testnet named $NAME?)"
  ip -o addr show 2>/dev/null | grep -q " inet $PREFIX\." && die "prefix $PREFIX is already in use on this machine"
  ensure_nft
  modprobe br_netfilter 2>/dev/null || true
  mkdir -p "$STATE_DIR"
  echo "# quorrent testnet $NAME prefix $PREFIX" > "$STATE"
  # From here on, a failure takes down everything made so far.
  trap 'set +e; trap - ERR; echo "testnet.sh: up failed; removing what it made" >&2; down; exit 1' ERR
  set -E -e
  ip link add "$BR" type bridge
  record "link $BR"
  ip addr add "$PREFIX.1/24" dev "$BR"
  ip link set "$BR" up
  open_bridge_filter
  local h ns ip
  for h in $(all_hosts); do
    ns="$NAME-$h"
    ip="$(host_ip "$h")"
    ip netns add "$ns"
    record "netns $ns"
    # Root end NAMEhost (<= 10 bytes), namespace end renamed to eth0.
    ip link add "$NAME$h" type veth peer name "$NAME${h}n"
    record "link $NAME$h"
    ip link set "$NAME${h}n" netns "$ns"
    ip -n "$ns" link set "$NAME${h}n" name eth0
    ip link set "$NAME$h" master "$BR"
    ip link set "$NAME$h" up
    ip -n "$ns" addr add "$ip/24" dev eth0
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$PREFIX.1"
    record "host $h $ip"
  done
  trap - ERR
  set +e
  # Wait until every host's address is usable (duplicate address detection
  # is IPv6 only; the links come up within milliseconds).
  for h in $(all_hosts); do
    for _ in $(seq 1 50); do
      ip -n "$NAME-$h" -o link show eth0 2>/dev/null | grep -q "state UP" && break
      sleep 0.1
    done
  done
  hosts
}

hosts() {
  if [ -f "$STATE" ]; then
    awk '$1 == "host" { print $2, $3 }' "$STATE"
  else
    die "testnet $NAME is not up"
  fi
}

case "$cmd" in
  up) up ;;
  down) need_root; down ;;
  exec)
    need_root
    [ $# -ge 2 ] || die "usage: testnet.sh exec [--name NAME] HOST CMD..."
    h="$1"; shift
    ip netns list | awk '{print $1}' | grep -qx "$NAME-$h" || die "no host $h in testnet $NAME"
    exec ip netns exec "$NAME-$h" "$@"
    ;;
  hosts) hosts ;;
  *) usage ;;
esac
