"""Ask an image's own server what it knows: its version, its settings, and its verdict on the
values a topology gives them.

One throw-away container (no network, the ``postgres`` user) runs ``postgres --version``,
``postgres --describe-config`` and, per setting, ``postgres -C name -c name=value`` against an
empty configuration: the server parses the value exactly as it would at start, units and ranges
included, and says why it refuses one. The answer is kept per image and settings for the
process's life.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from shardctl.config.settings import (
    ServerCatalog,
    parse_describe,
    parse_major,
    value_text,
)
from shardctl.docker.clients import Endpoint
from shardctl.docker.engine import Engines

PROBE = r"""set -u
postgres --version
echo '@@describe'
postgres --describe-config
dir=$(mktemp -d)
: > "$dir/postgresql.conf"
for setting in "$@"; do
    printf '@@check %s\n' "${setting%%=*}"
    postgres -D "$dir" -C "${setting%%=*}" -c "$setting" 2>&1 || :
done
rm -rf "$dir"
exit 0
"""

_cache: dict[tuple[str, str, tuple[tuple[str, str], ...]], ServerCatalog] = {}
_lock = threading.Lock()


def catalog(
    engines: Engines, image: str, settings: Mapping[str, object], endpoint: Endpoint = None
) -> ServerCatalog:
    """What ``image``'s server knows, and which of ``settings`` it refuses (name → why)."""
    given = tuple(sorted((name, value_text(value)) for name, value in settings.items()))
    key = (str(endpoint), image, given)
    with _lock:
        if key in _cache:
            return _cache[key]
    output = engines.run_once(image, PROBE, [f"{name}={value}" for name, value in given], endpoint)
    found = parse_probe(image, output)
    with _lock:
        _cache[key] = found
    return found


def parse_probe(image: str, output: str) -> ServerCatalog:
    """The probe's output as a :class:`ServerCatalog`."""
    head, _, rest = output.partition("@@describe\n")
    version_line = next((line for line in head.splitlines() if "(PostgreSQL)" in line), head)
    describe, *checks = rest.split("@@check ")
    refused: dict[str, str] = {}
    for check in checks:
        name, _, said = check.partition("\n")
        fatal = [
            line.split("FATAL:", 1)[1].strip() for line in said.splitlines() if "FATAL:" in line
        ]
        hint = [line.split("HINT:", 1)[1].strip() for line in said.splitlines() if "HINT:" in line]
        if fatal:
            refused[name.strip()] = " ".join(fatal[:1] + hint[:1])
    version = version_line.split("(PostgreSQL)")[-1].strip().split()[0] if version_line else "?"
    return ServerCatalog(
        image=image,
        major=parse_major(version_line),
        version=version,
        settings=parse_describe(describe),
        refused=refused,
    )
