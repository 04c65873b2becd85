#!/usr/bin/env bash
# A second Docker "host" on this machine: its own network namespace, address and engine.
#
#   scripts/second-host.sh [--name NAME] [--address IP] [--image IMAGE]   start (idempotent)
#   scripts/second-host.sh --name NAME --stop    power it off: engine stopped, link down, data kept
#   scripts/second-host.sh --name NAME --down    remove its containers, engine, data and namespace
#
# Start prints `export` lines on stdout (eval them); progress goes to stderr:
#   export SHARDCTL_HOST_<NAME>_ENDPOINT=unix:///run/shardctl-hosts/<name>/docker.sock
#   export SHARDCTL_HOST_<NAME>_ADDRESS=10.213.7.x
# Use them as an engine of the topology:  engines: {<name>: {endpoint: ..., advertise: ...}}.
#
# Network: every host made here is a namespace with one veth into a private "lan" namespace
# that holds a bridge; the root namespace joins that bridge too, as 10.213.7.1. So this
# machine reaches every host's published ports, and each host's containers reach every other
# host's (the engine in a namespace NATs its containers out of it). Addresses are 10.213.7.0/24,
# used only inside these namespaces; no namespace gets a default route, so nothing made here
# can reach any other address. Run several with different --name and --address to simulate
# several hosts (containers of an engine outside these namespaces cannot reach them).
#
# The engine needs the image: it is copied from the engine at $DOCKER_HOST (docker save | load)
# unless the host has it already.
set -euo pipefail

NAME=hostb
ADDRESS=10.213.7.2
IMAGE="${SHARDCTL_IMAGE:-${SHARDCTL_TEST_IMAGE:-shardctl-test/postgres:15}}"
ACTION=start
LAN=shardctl-lan
SUBNET_PREFIX=10.213.7
ROOT_ADDRESS="$SUBNET_PREFIX.1"
log() { printf 'second-host.sh: %s\n' "$*" >&2; }
trap 'rc=$?; [ $rc -eq 0 ] || log "failed (exit $rc) at line $LINENO"' EXIT
die() { log "$*"; exit 3; }
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --name) NAME="${2:?--name needs a value}"; shift 2 ;;
        --address) ADDRESS="${2:?--address needs a value}"; shift 2 ;;
        --image) IMAGE="${2:?--image needs a value}"; shift 2 ;;
        --stop) ACTION=stop; shift ;;
        --down) ACTION=down; shift ;;
        -h|--help) usage ;;
        *) log "unknown argument $1"; usage ;;
    esac
done
case "$NAME" in
    *[!a-z0-9-]*|"") log "--name: lowercase letters, digits and '-' only"; exit 2 ;;
esac
[ "${#NAME}" -le 12 ] || { log "--name: at most 12 characters (interface names)"; exit 2; }
case "$ADDRESS" in
    "$SUBNET_PREFIX".*) ;;
    *) log "--address must be in $SUBNET_PREFIX.0/24 (the private range of these namespaces)"; exit 2 ;;
esac
[ "$ADDRESS" != "$ROOT_ADDRESS" ] || { log "--address: $ROOT_ADDRESS is this machine's end"; exit 2; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, a Docker engine)"

STATE="/run/shardctl-hosts/$NAME"
DATA="/var/lib/shardctl-hosts/$NAME"
SOCK="$STATE/docker.sock"
PIDFILE="$STATE/dockerd.pid"
VETH="sc-$NAME"
VAR="$(printf '%s' "$NAME" | tr 'a-z-' 'A-Z_')"
in_ns() { nsenter --net="/run/netns/$1" "${@:2}"; }
engine() { docker -H "unix://$SOCK" "$@"; }
engine_answers() { [ -S "$SOCK" ] && engine info >/dev/null 2>&1; }

ensure_tools() {
    local missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    apt-get update -qq >/tmp/shardctl-apt.log 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        >>/tmp/shardctl-apt.log 2>&1 || die "apt-get failed; see /tmp/shardctl-apt.log"
}

ensure_lan() {
    [ -e "/run/netns/$LAN" ] || ip netns add "$LAN"
    in_ns "$LAN" ip link set lo up
    in_ns "$LAN" ip link show br0 >/dev/null 2>&1 || in_ns "$LAN" ip link add br0 type bridge
    in_ns "$LAN" ip link set br0 up
    if ! ip link show sclan0 >/dev/null 2>&1; then
        ip link add sclan0 type veth peer name root0 netns "$LAN"
    fi
    in_ns "$LAN" ip link set root0 master br0 up
    ip addr replace "$ROOT_ADDRESS/24" dev sclan0
    ip link set sclan0 up
    # Should the lan go while a host's address is still asked for, the answer is "no route",
    # never the machine's default route (another network may answer there).
    ip route replace unreachable "$SUBNET_PREFIX.0/24" metric 4000
}

ensure_namespace() {
    [ -e "/run/netns/$NAME" ] || ip netns add "$NAME"
    in_ns "$NAME" ip link set lo up
    if ! in_ns "$NAME" ip link show eth0 >/dev/null 2>&1; then
        in_ns "$LAN" ip link del "$VETH" >/dev/null 2>&1 || true
        in_ns "$LAN" ip link add "$VETH" type veth peer name eth0 netns "$NAME"
    fi
    in_ns "$LAN" ip link set "$VETH" master br0 up
    in_ns "$NAME" ip addr replace "$ADDRESS/24" dev eth0
    in_ns "$NAME" ip link set eth0 up
}

start_engine() {
    engine_answers && return 0
    mkdir -p "$STATE" "$DATA"
    log "starting the engine of $NAME on unix://$SOCK"
    # nsenter, not `ip netns exec`: that remounts /sys and dockerd then finds no cgroups.
    # Its own iptables/NAT stay inside the namespace.
    nsenter --net="/run/netns/$NAME" setsid nohup dockerd \
        --data-root "$DATA" --exec-root "$STATE/exec" --pidfile "$PIDFILE" \
        -H "unix://$SOCK" >"$STATE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 60); do engine_answers && return 0; sleep 0.5; done
    die "the engine of $NAME did not start; see $STATE/dockerd.log"
}

stop_engine() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$PIDFILE"
}

ensure_image() {
    engine image inspect "$IMAGE" >/dev/null 2>&1 && return 0
    docker image inspect "$IMAGE" >/dev/null 2>&1 \
        || die "image $IMAGE is not on the engine at ${DOCKER_HOST:-the default socket} (scripts/engine.sh makes it)"
    log "copying image $IMAGE to $NAME"
    docker save "$IMAGE" | engine load -q >&2
}

case "$ACTION" in
start)
    ensure_tools
    ensure_lan
    ensure_namespace
    start_engine
    ensure_image
    log "$NAME ready: engine unix://$SOCK, address $ADDRESS"
    echo "export SHARDCTL_HOST_${VAR}_ENDPOINT=unix://$SOCK"
    echo "export SHARDCTL_HOST_${VAR}_ADDRESS=$ADDRESS"
    ;;
stop)
    # A lost host: the engine and its containers stop, and its address stops answering.
    stop_engine
    [ -e "/run/netns/$NAME" ] && in_ns "$NAME" ip link set eth0 down 2>/dev/null || true
    log "$NAME stopped (data kept; start it again with the same --name and --address)"
    ;;
down)
    if engine_answers; then
        ids="$(engine ps -aq)"
        [ -z "$ids" ] || engine rm -f $ids >/dev/null
    fi
    stop_engine
    # The engine may leave its data root (overlay, netns) mounted; unmount before removing.
    for root in "$DATA" "$STATE"; do
        { grep -o " $root[^ ]*" /proc/mounts || true; } | sort -r | while read -r mnt; do
            umount -l "$mnt" || true
        done
    done
    rm -rf "$DATA" "$STATE"
    rmdir --ignore-fail-on-non-empty /run/shardctl-hosts /var/lib/shardctl-hosts 2>/dev/null || true
    if [ -e "/run/netns/$LAN" ]; then
        in_ns "$LAN" ip link del "$VETH" >/dev/null 2>&1 || true
    fi
    [ -e "/run/netns/$NAME" ] && ip netns del "$NAME"
    # The lan goes with its last host. The links are read whole before grep looks: under
    # pipefail, `ip ... | grep -q` fails when grep stops at the first match and ip then dies of
    # SIGPIPE, which took the lan from another process's hosts while they were in use.
    links=""
    [ -e "/run/netns/$LAN" ] && links="$(in_ns "$LAN" ip -o link show type veth)"
    if [ -e "/run/netns/$LAN" ] && ! grep -q ' sc-' <<<"$links"; then
        ip link del sclan0 >/dev/null 2>&1 || true
        ip route del unreachable "$SUBNET_PREFIX.0/24" metric 4000 >/dev/null 2>&1 || true
        ip netns del "$LAN"
    fi
    log "$NAME removed"
    ;;
esac
