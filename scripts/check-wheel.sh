#!/usr/bin/env bash
# Prove the package a user installs works: build the wheel, install it (not editable) into a
# fresh venv without system site packages, and run the CLI from there -- once with the newest
# dependencies and once with the oldest typer pyproject.toml allows. A missing dependency or a
# file missing from the wheel (schema, SQL, anything read at run time) fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1

work="$(mktemp -d /tmp/shardctl-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/build"
"$work/build/bin/pip" wheel -q --no-deps -w "$work/dist" . >&2
wheel="$(ls "$work"/dist/shardctl-*.whl)"
oldest_typer="$(sed -n 's/^ *"typer>=\([0-9.]*\)".*/\1/p' pyproject.toml)"

try() {  # try NAME [PIP-ARGS...]: a fresh venv with the wheel, then the CLI from outside the repo
    local name="$1"; shift
    python3 -m venv "$work/$name"
    "$work/$name/bin/pip" install -q "$wheel" "$@" >&2
    (
        cd "$work"
        "$work/$name/bin/shardctl" --version
        "$work/$name/bin/shardctl" validate -f "$OLDPWD/topology.yaml" >/dev/null
        "$work/$name/bin/shardctl" schema >/dev/null
        code=0; "$work/$name/bin/shardctl" status --no-such-option 2>/dev/null || code=$?
        [ "$code" -eq 2 ] || { echo "check-wheel: bad usage exited $code, not 2 ($name)" >&2; exit 1; }
    )
    echo "check-wheel: $name ok ($("$work/$name/bin/pip" list 2>/dev/null | awk '$1=="typer"{print "typer " $2}'))" >&2
}
try newest
try oldest "typer==$oldest_typer"
