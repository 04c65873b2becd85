#!/usr/bin/env bash
# Run the whole test suite (unit + integration against a real Docker engine), installing what
# the machine lacks first: a Docker engine, the test PostgreSQL image, Prometheus and promtool
# (scripts/prometheus.sh), and shardctl with its dev dependencies in its own venv
# (scripts/venv.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

engine_env="$(scripts/engine.sh)"
eval "$engine_env"
scripts/prometheus.sh
venv="$(scripts/venv.sh dev)"
export SHARDCTL_TEST_IMAGE="${SHARDCTL_TEST_IMAGE:-shardctl-test/postgres:15}"
export SHARDCTL_POOLER_IMAGE="${SHARDCTL_POOLER_IMAGE:-shardctl-test/pgbouncer:1}"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
