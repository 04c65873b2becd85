#!/usr/bin/env bash
# Make (or reuse) shardctl's virtual environment and install the project into it, so nothing
# depends on what this machine happens to have system-wide. Prints the venv's path on stdout.
#
#   scripts/venv.sh [EXTRAS]      e.g. `scripts/venv.sh dev` for the test and lint tools
#   SHARDCTL_VENV   where the venv lives (default .venv in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${SHARDCTL_VENV:-$PWD/.venv}"
extras="${1:-}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x "$venv/bin/python" ]; then
    printf 'venv.sh: creating %s (no system site packages)\n' "$venv" >&2
    python3 -m venv "$venv"
fi
target="."
[ -n "$extras" ] && target=".[$extras]"
"$venv/bin/python" -m pip install -q -e "$target" >&2
echo "$venv"
