#!/usr/bin/env bash
# Run the whole test suite (unit + integration against a real Docker engine), installing what
# the machine lacks first: a Docker engine, the test PostgreSQL image, Prometheus and promtool
# (scripts/prometheus.sh), and shardctl with its dev dependencies in its own venv
# (scripts/venv.sh).
#
# Without a selection: the unit tests in parallel (pytest-xdist, $SHARDCTL_UNIT_WORKERS workers,
# default 2), then the integration tests in parallel too ($SHARDCTL_INTEGRATION_WORKERS workers,
# default 2; 0 runs them in one process), a whole module per worker (--dist loadfile: a module's
# shared cluster is made once; ports and simulated hosts are reserved per process, see
# docs/testing.md); extra arguments such as -q go to both runs. With a selection (-m, -k or a
# path under tests/) pytest runs it as given, in parallel when it is exactly the unit tests
# (-m "not integration").
set -euo pipefail
cd "$(dirname "$0")/.."

engine_env="$(scripts/engine.sh)"
eval "$engine_env"
scripts/prometheus.sh
venv="$(scripts/venv.sh dev)"
export SHARDCTL_TEST_IMAGE="${SHARDCTL_TEST_IMAGE:-shardctl-test/postgres:15}"
export SHARDCTL_POOLER_IMAGE="${SHARDCTL_POOLER_IMAGE:-shardctl-test/pgbouncer:1}"
pytest=("$venv/bin/python" -m pytest -p no:cacheprovider)
workers=(-n "${SHARDCTL_UNIT_WORKERS:-2}")
integration_workers=(-n "${SHARDCTL_INTEGRATION_WORKERS:-2}" --dist loadfile)

selected="" unit_only="" previous=""
for arg in "$@"; do
    case "$arg" in
        -m | -k | -m* | -k* | tests* | ./tests*) selected=1 ;;
    esac
    [ "$previous" = "-m" ] && [ "$arg" = "not integration" ] && unit_only=1
    previous="$arg"
done
if [ -n "$selected" ]; then
    [ -n "$unit_only" ] && exec "${pytest[@]}" "${workers[@]}" "$@"
    exec "${pytest[@]}" "$@"
fi
"${pytest[@]}" -m "not integration" "${workers[@]}" "$@"
exec "${pytest[@]}" -m integration "${integration_workers[@]}" "$@"
