#!/usr/bin/env bash
# Make sure a Docker engine answers and a PostgreSQL image exists, installing what is missing.
#
# Prints `export DOCKER_HOST=...` lines on stdout (eval them); progress goes to stderr.
# Idempotent: an engine that already answers and an image that already exists are reused.
#   SHARDCTL_IMAGE   image to make available (default shardctl-test/postgres:15)
#   SHARDCTL_POOLER_IMAGE  PgBouncer image the pooler tests use (default shardctl-test/pgbouncer:1)
#   SHARDCTL_DOCKER_ROOT  where a private engine keeps its state (default /var/lib/shardctl-docker)
set -euo pipefail

IMAGE="${SHARDCTL_IMAGE:-shardctl-test/postgres:15}"
POOLER_IMAGE="${SHARDCTL_POOLER_IMAGE:-shardctl-test/pgbouncer:1}"
ROOT="${SHARDCTL_DOCKER_ROOT:-/var/lib/shardctl-docker}"
SOCK="${SHARDCTL_DOCKER_SOCK:-/run/shardctl-docker.sock}"
log() { printf 'engine.sh: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    as_root apt-get update -qq >/tmp/shardctl-apt.log 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        >>/tmp/shardctl-apt.log 2>&1 || { log "apt-get failed; see /tmp/shardctl-apt.log"; exit 3; }
}

engine_answers() { docker info >/dev/null 2>&1; }

# The several-hosts tests (scripts/second-host.sh) run engines in network namespaces: they need
# ip (iproute2), iptables inside the namespaces, and nsenter (util-linux).
command -v ip >/dev/null 2>&1 || apt_install iproute2
command -v iptables >/dev/null 2>&1 || apt_install iptables
command -v nsenter >/dev/null 2>&1 || apt_install util-linux

if ! engine_answers; then
    export DOCKER_HOST="unix://$SOCK"
    if ! engine_answers; then
        command -v dockerd >/dev/null 2>&1 || apt_install docker.io
        as_root mkdir -p "$ROOT" "/run/shardctl-docker"
        log "starting a private Docker engine on $DOCKER_HOST"
        # No iptables/bridge: these machines have no NAT; user-defined networks still work.
        as_root sh -c "nohup dockerd --iptables=false --ip-forward=false --bridge=none \
            --data-root '$ROOT' --exec-root /run/shardctl-docker \
            -H '$DOCKER_HOST' >/tmp/shardctl-dockerd.log 2>&1 &"
        for _ in $(seq 1 60); do engine_answers && break; sleep 1; done
        engine_answers || { log "engine did not start; see /tmp/shardctl-dockerd.log"; exit 3; }
    fi
    echo "export DOCKER_HOST=$DOCKER_HOST"
fi

# build_image IMAGE PACKAGES PATH: a Debian image made by debootstrap from packages (no
# registry needed), skipped when the engine already has it.
build_image() {
    local image="$1" packages="$2" path="$3" rootfs
    docker image inspect "$image" >/dev/null 2>&1 && return 0
    apt_install debootstrap
    rootfs="$(mktemp -d /tmp/shardctl-rootfs.XXXXXX)"
    log "building $image from Debian packages (about a minute)"
    as_root debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" \
        >/tmp/shardctl-debootstrap.log 2>&1 || { log "debootstrap failed; see /tmp/shardctl-debootstrap.log"; exit 3; }
    as_root tar -C "$rootfs" -c . | docker import -c "ENV PATH=$path" - "$image" >&2
    as_root rm -rf "$rootfs"
}

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    if [ "$IMAGE" != "shardctl-test/postgres:15" ] && docker pull "$IMAGE" >&2 2>/dev/null; then
        log "pulled $IMAGE"
    else
        build_image "$IMAGE" postgresql-15 \
            /usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    fi
fi
# The PgBouncer image the pooler tests use (users default to a public one: docs/topology.md).
build_image "$POOLER_IMAGE" pgbouncer /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log "engine ready, images $IMAGE and $POOLER_IMAGE present"
