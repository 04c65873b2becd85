#!/usr/bin/env bash
# Run the whole test suite (unit + integration against a real Docker engine), installing what
# the machine lacks first: a Docker engine, the test PostgreSQL image, the package with its
# dev dependencies. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

engine_env="$(scripts/engine.sh)"
eval "$engine_env"
python3 -m pip install -q -e '.[dev]' >&2
export SHARDCTL_TEST_IMAGE="${SHARDCTL_TEST_IMAGE:-shardctl-test/postgres:15}"
exec python3 -m pytest -p no:cacheprovider "$@"
