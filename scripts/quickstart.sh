#!/usr/bin/env bash
# Bring up the example cluster (topology.yaml) on this machine, installing what is missing:
# a Docker engine if none answers, the shardctl package, and -- where postgres:17 cannot be
# pulled (no registry) -- a locally built PostgreSQL image used in its place. shardctl goes into
# its own virtual environment (.venv, see scripts/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

engine_env="$(scripts/engine.sh)"   # exports DOCKER_HOST when it starts its own engine
eval "$engine_env"
if ! docker image inspect postgres:17 >/dev/null 2>&1 && ! docker pull -q postgres:17 >/dev/null 2>&1; then
    echo "quickstart: postgres:17 cannot be pulled here; using the locally built image" >&2
    export SHARDCTL_IMAGE=shardctl-test/postgres:15
    SHARDCTL_IMAGE=$SHARDCTL_IMAGE scripts/engine.sh >/dev/null
fi
venv="$(scripts/venv.sh)"   # shardctl in its own venv (.venv), not in the system Python

"$venv/bin/shardctl" up
"$venv/bin/shardctl" status
echo
echo "The cluster is up. To use shardctl in this shell:" >&2
echo "  source $venv/bin/activate" >&2
[ -n "${DOCKER_HOST:-}" ] && echo "  export DOCKER_HOST=$DOCKER_HOST" >&2
[ -n "${SHARDCTL_IMAGE:-}" ] && echo "  export SHARDCTL_IMAGE=$SHARDCTL_IMAGE" >&2
echo "  shardctl status; shardctl down --volumes --yes   # when done" >&2
