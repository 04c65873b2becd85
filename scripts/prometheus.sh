#!/usr/bin/env bash
# Make sure `prometheus` and `promtool` are on PATH (Debian's `prometheus` package), for the
# metrics tests, which start their own Prometheus on 127.0.0.1 with a config they write.
# Skipped when both are present. The package's own service is never left running: its
# start is refused while installing (policy-rc.d), and it is stopped and disabled afterwards,
# since it listens on every interface (:9090).
set -euo pipefail
log() { printf 'prometheus.sh: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi
log "installing Debian's prometheus (prometheus, promtool)"
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    # 101: "action forbidden": invoke-rc.d and deb-systemd-invoke start no service.
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=1
fi
cleanup() { [ -n "$made_policy" ] && as_root rm -f "$policy"; return 0; }
trap cleanup EXIT
as_root apt-get update -qq >/tmp/shardctl-apt-prometheus.log 2>&1 || true
# --no-install-recommends: the recommended node exporter would listen on every interface too.
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >>/tmp/shardctl-apt-prometheus.log 2>&1 \
    || { log "apt-get failed; see /tmp/shardctl-apt-prometheus.log"; exit 3; }
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# Without systemd the package starts nothing; a daemon started anyway is stopped by its pid.
if [ -f /run/prometheus.pid ]; then
    as_root kill "$(cat /run/prometheus.pid)" 2>/dev/null || true
fi
command -v promtool >/dev/null 2>&1 || { log "promtool missing after install"; exit 3; }
log "installed $(prometheus --version 2>&1 | head -1)"
