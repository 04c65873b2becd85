"""The rules that span several values of a topology: unique names, port clashes, engines and
their endpoints, settings shardctl manages, credentials, exposure and TLS.

Each rule yields ``(location, message)``; :func:`shardctl.config.topology.parse` reports the
first with its line.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from shardctl.config.endpoints import endpoint_problem, engine_key
from shardctl.config.messages import Loc, short
from shardctl.config.schema import (
    HealthSpec,
    Replication,
    ReplicationSpec,
    Spread,
    SSLMode,
    TLSMode,
    TLSSpec,
    TopologySpec,
)

if TYPE_CHECKING:
    from shardctl.config.topology import Topology


def _endpoints_written(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Every Docker endpoint the file spells out, where it is written."""
    for name, engine in spec.engines.items():
        yield ("engines", name, "endpoint"), engine.endpoint
    for i, shard in enumerate(spec.shards):
        if shard.engine is not None and "://" in shard.engine:
            yield ("shards", i, "engine"), shard.engine
        for j, named in enumerate(shard.replica_engines):
            if "://" in named:
                yield ("shards", i, "replica_engines", j), named


def _check_engines(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Engines: endpoints declared once, every engine named by a shard declared, and replicas
    off their primary's engine under ``spread: hosts``."""
    spec = topology.spec
    endpoints: dict[str, str] = {}
    for name, engine in spec.engines.items():
        other = endpoints.setdefault(engine_key(engine.endpoint) or "", name)
        if other != name:
            yield (
                ("engines", name, "endpoint"),
                f"endpoint {engine.endpoint!r} is also engine {other!r} (host names compare "
                "case-insensitively)",
            )
    known = ", ".join(sorted(spec.engines)) or "none declared"

    def unknown(engine: str) -> str:
        import difflib  # only an unknown engine needs a hint

        hint = difflib.get_close_matches(engine, list(spec.engines), n=1)
        return f"unknown engine {engine!r}; " + (
            f"did you mean {hint[0]!r}?" if hint else f"engines: {known}"
        )

    for i, shard in enumerate(spec.shards):
        if (
            shard.engine is not None
            and shard.engine not in spec.engines
            and "://" not in shard.engine
        ):
            yield ("shards", i, "engine"), unknown(shard.engine)
        if len(shard.replica_engines) > shard.replicas:
            yield (
                ("shards", i, "replica_engines"),
                f"{len(shard.replica_engines)} engines listed for {shard.replicas} replica(s)",
            )
        for j, named in enumerate(shard.replica_engines):
            if named not in spec.engines and "://" not in named:
                yield ("shards", i, "replica_engines", j), unknown(named)
    if (
        spec.backup is not None
        and spec.backup.engine is not None
        and spec.backup.engine not in spec.engines
        and "://" not in spec.backup.engine
    ):
        yield ("backup", "engine"), unknown(spec.backup.engine)
    if spec.spread is not Spread.HOSTS:
        return
    for i, shard in enumerate(spec.shards):
        primary = topology.placement(topology.engine_of(shard, 0)).name
        for r in range(1, shard.replicas + 1):
            if topology.placement(topology.engine_of(shard, r)).name == primary:
                where: Loc = (
                    ("shards", i, "replica_engines", r - 1)
                    if r <= len(shard.replica_engines)
                    else ("shards", i)
                )
                yield (
                    where,
                    (
                        f"{shard.name}-replica-{r} is on engine {primary!r} with its primary, "
                        "but spread: hosts asks for another host (set replica_engines)"
                    ),
                )


def check_semantics(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Rules beyond each value's type: unique names, free ports, files that exist, and what
    ``up`` would trip over later (a database initdb made, settings shardctl owns, ...)."""
    yield from _check_security(topology)
    spec = topology.spec
    yield from _check_replication(spec)
    duplicates = list(_check_shard_names(spec))
    yield from duplicates
    if duplicates:
        return  # nodes are named after their shard: nothing below can be judged
    endpoint_problems = [
        (where, f"{problem}")
        for where, endpoint in _endpoints_written(spec)
        if (problem := endpoint_problem(endpoint))
    ]
    engine_problems = endpoint_problems or list(_check_engines(topology))
    yield from engine_problems
    if engine_problems:
        return  # ports are judged per engine host
    yield from _check_ports(topology)
    yield from _check_tables(spec)
    yield from _check_database(spec)
    yield from _check_image(spec.image)
    yield from _check_poolers(spec)
    yield from _check_bind_address(spec.bind_address)
    yield from _check_settings(spec.postgres)
    yield from _check_health(spec.health)
    yield from _check_credentials(topology)
    yield from _check_schema(topology)


def _check_shard_names(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Each shard name once."""
    seen: dict[str, int] = {}
    for i, shard in enumerate(spec.shards):
        if shard.name in seen:
            yield (
                ("shards", i, "name"),
                (f"duplicate shard name {shard.name!r} (also shards[{seen[shard.name]}])"),
            )
        seen.setdefault(shard.name, i)


def _check_ports(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Every published port (servers' and poolers') at most 65535, and once per host."""
    # Host names compare case-insensitively: two engines on one host share its ports.
    owner: dict[tuple[str, int], str] = {}
    for i, shard in enumerate(topology.spec.shards):
        # By index, not shard_nodes(name): ten thousand shards stay linear.
        for node in topology._nodes_of(i, shard):
            where: Loc = ("shards", i, "port") if shard.port is not None else ("shards", i)
            published = [(node.host_port, node.name)]
            if node.pooler_port is not None:
                published.append((node.pooler_port, f"the pooler of {node.name}"))
            for port, what in published:
                taken_by = owner.setdefault((node.placement.advertise.lower(), port), what)
                if port > 65535:
                    yield where, f"port {port} of {what} is above 65535"
                elif taken_by != what:
                    yield (
                        where,
                        f"port {port} of {what} clashes with {taken_by} "
                        f"(both on host {node.placement.advertise})",
                    )


def _check_tables(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Each sharded table listed once."""
    tables: set[str] = set()
    for i, table in enumerate(spec.tables):
        if table.name in tables:
            yield ("tables", i, "name"), f"table {table.name!r} is listed twice"
        tables.add(table.name)


def _check_database(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Not a database initdb already made (``up`` creates the declared one)."""
    if spec.database in INITDB_DATABASES:
        yield (
            ("database",),
            (
                f"{spec.database!r} already exists in every new server; name the database that "
                "holds the sharded tables (default 'app')"
            ),
        )


def _check_poolers(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Poolers take no TLS yet, so no sslmode or tls: that insists on it; their images."""
    pooled = spec.pooler is not None or any(shard.pooler is not None for shard in spec.shards)
    if pooled and spec.sslmode in (SSLMode.REQUIRE, SSLMode.VERIFY_CA, SSLMode.VERIFY_FULL):
        yield (
            ("sslmode",),
            f"{spec.sslmode.value} cannot be kept through the poolers (they take no TLS from "
            "clients yet): remove pooler: or use prefer",
        )
    tls_mode = spec.tls if isinstance(spec.tls, TLSMode) else spec.tls.mode
    if pooled and tls_mode is TLSMode.REQUIRED:
        yield (
            ("tls",),
            "tls: required cannot be kept through the poolers yet (they take no TLS from "
            "clients and give none to servers): remove pooler: or tls:",
        )
    for loc, pooler in [(("pooler",), spec.pooler)] + [
        (("shards", i, "pooler"), shard.pooler) for i, shard in enumerate(spec.shards)
    ]:
        if pooler is not None and pooler.image is not None:
            for _, problem in _check_image(pooler.image):
                yield (*loc, "image"), problem


def _check_schema(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """The schema file, when one is named, exists and can be read."""
    schema = topology.schema_path
    if schema is not None:
        problem = _file_problem(schema)
        if problem:
            yield ("schema",), f"schema file {short(str(schema))} {problem}"


INITDB_DATABASES = frozenset({"postgres", "template0", "template1"})
"""Databases every new server has: CREATE DATABASE of one fails on the first ``up``."""
MANAGED_SETTINGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "password_encryption",
        "wal_level",
        "hot_standby",
        "primary_conninfo",
        "primary_slot_name",
        "synchronous_standby_names",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
    }
)
"""Server settings shardctl sets itself: containers, replication and switchover depend on
them, so ``postgres:`` may not override them."""
RESERVED_ROLES = frozenset({"public", "none", "current_user", "session_user", "current_role"})
"""Role names PostgreSQL refuses to create (besides the ``pg_`` prefix)."""
MAX_HEALTH_SECONDS = 86400.0
"""Longest time a ``health`` threshold or timeout may be: a day."""
MAX_LAG_BYTES = 2**62
"""Largest byte-lag threshold: within PostgreSQL's bigint, where lags are computed."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_USUAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


def _check_image(image: str) -> Iterator[tuple[Loc, str]]:
    if len(image) > 255 or any(c.isspace() for c in image):
        yield (
            ("image",),
            (f"{short(image)} is not an image reference (no spaces, at most 255 characters)"),
        )


def _check_bind_address(address: str) -> Iterator[tuple[Loc, str]]:
    if not address:
        yield (
            ("bind_address",),
            ("is empty; give the IP address ports are published on (127.0.0.1 keeps them local)"),
        )
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        yield (
            ("bind_address",),
            (
                f"{short(address)} is not an IP address (ports are published on an address of "
                "this host, e.g. 127.0.0.1)"
            ),
        )


def _check_settings(settings: Mapping[str, object]) -> Iterator[tuple[Loc, str]]:
    for name, value in settings.items():
        where: Loc = ("postgres", name)
        if not _SETTING_NAME.fullmatch(name):
            yield where, f"{short(name)} is not a server setting name"
        elif name.lower() in MANAGED_SETTINGS:
            yield (
                where,
                (
                    f"{name} is set by shardctl (it runs the containers and replication); "
                    "remove it from postgres:"
                ),
            )
        elif isinstance(value, float) and not math.isfinite(value):
            yield where, f"expected a finite number (got {value})"
        elif isinstance(value, str) and ("\n" in value or "\r" in value or len(value) > 1000):
            yield where, f"{short(value)} is not a server setting value (one line, short)"


def _check_replication(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """``durability`` and ``degrade_after`` mean something only with ``mode: sync``."""
    declared: list[tuple[Loc, object]] = [(("replication",), spec.replication)]
    declared += [(("shards", i, "replication"), s.replication) for i, s in enumerate(spec.shards)]
    for where, value in declared:
        if not isinstance(value, ReplicationSpec) or value.mode is Replication.SYNC:
            continue
        given = value.given & {"durability", "degrade_after"}
        if given:
            yield (
                (*where, sorted(given)[0]),
                f"{', '.join(sorted(given))} applies to mode: sync only (mode is {value.mode})",
            )


def _check_health(health: HealthSpec) -> Iterator[tuple[Loc, str]]:
    for name in ("max_lag_seconds", "canary_timeout", "probe_timeout"):
        seconds = getattr(health, name)
        if not math.isfinite(seconds) or seconds > MAX_HEALTH_SECONDS:
            yield (
                ("health", name),
                (f"{seconds} seconds is out of range (at most {MAX_HEALTH_SECONDS:.0f}, a day)"),
            )
    if health.max_lag_bytes > MAX_LAG_BYTES:
        yield (
            ("health", "max_lag_bytes"),
            f"out of range (at most 2**62, got {short(health.max_lag_bytes)})",
        )


def _check_credentials(topology: Topology) -> Iterator[tuple[Loc, str]]:
    spec = topology.spec.credentials
    for key in ("superuser", "replication_user"):
        role = getattr(spec, key)
        if role.lower().startswith("pg_") or role.lower() in RESERVED_ROLES:
            yield ("credentials", key), f"{role!r} is a name PostgreSQL reserves for itself"
    if spec.superuser == spec.replication_user:
        yield (
            ("credentials", "replication_user"),
            (
                "must differ from the superuser: replicas connect with a role that can only "
                "replicate"
            ),
        )
    if spec.password_env is not None:
        if not _ENV_NAME.fullmatch(spec.password_env):
            # Never echoed: a password written here by mistake must not reach a terminal or log.
            yield (
                ("credentials", "password_env"),
                (
                    "must be the name of an environment variable (letters, digits, '_', e.g. "
                    "PGPASSWORD), not its value; the value is not shown"
                ),
            )
        elif not os.environ.get(spec.password_env):
            # Named only when it looks like a variable: 'hunter2' may be the password itself.
            named = (
                f"${spec.password_env}"
                if _USUAL_ENV_NAME.fullmatch(spec.password_env)
                else "the variable it names (not shown: it does not look like a variable name)"
            )
            yield (
                ("credentials", "password_env"),
                f"{named} is not set (or empty): export it before running shardctl",
            )
    elif spec.password_file is not None:
        problem = _file_problem(topology.path.parent / Path(spec.password_file).expanduser())
        if problem:
            yield (
                ("credentials", "password_file"),
                (f"the file named (relative to the topology) {problem}; the name is not shown"),
            )
    if spec.secrets_file is not None:
        secrets = topology.path.parent / Path(spec.secrets_file).expanduser()
        if not spec.secrets_file.strip() or _too_long(secrets) or secrets.is_dir():
            yield (
                ("credentials", "secrets_file"),
                (f"{short(spec.secrets_file)} cannot be a file shardctl writes passwords to"),
            )


def _too_long(path: Path) -> bool:
    """Longer than any OS accepts: checked before the OS says so with an exception."""
    return len(os.fsencode(path)) > 4095 or any(len(os.fsencode(p)) > 255 for p in path.parts)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable file; None when it is one."""
    if _too_long(path):
        return "has a name too long for the operating system"
    try:
        if path.is_file():
            return None
        return "is a directory, not a file" if path.is_dir() else "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_loopback(address: str) -> bool:
    """Whether ports published on ``address`` are reachable from this machine only."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _check_security(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Exposing the cluster is a decision: three distinct roles, no plaintext beyond loopback."""
    spec = topology.spec
    creds = spec.credentials
    if creds.app_user in (creds.superuser, creds.replication_user):
        yield (
            ("credentials", "app_user"),
            f"the application role {creds.app_user!r} must differ from the superuser and the "
            "replication role",
        )
    yield from _check_tls(topology)
    if spec.allow_plaintext or topology.tls is not None:
        return
    # An engine's own bind_address too; an engine that declares none publishes on 0.0.0.0
    # when advertised beyond loopback (several hosts reach each other so), not checked here.
    exposed: list[tuple[Loc, str]] = [(("bind_address",), spec.bind_address)]
    exposed += [
        (("engines", name, "bind_address"), engine.bind_address)
        for name, engine in spec.engines.items()
        if engine.bind_address is not None
    ]
    for where, address in exposed:
        # An empty or malformed address is its own error.
        if _is_ip(address) and not is_loopback(address):
            yield (
                where,
                f"{address} publishes the nodes' ports beyond this machine without TLS: set "
                "tls: required (certificates made per cluster, or your own), keep 127.0.0.1, or "
                "set allow_plaintext: true to accept queries and data in clear on the network",
            )
            return


TLS_SETTINGS = frozenset({"ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"})
"""Server settings ``tls: required`` sets itself."""
WEAK_SSLMODES = frozenset({SSLMode.DISABLE, SSLMode.ALLOW, SSLMode.PREFER})
"""What a client may ask for that would not insist on TLS."""


def _check_tls(topology: Topology) -> Iterator[tuple[Loc, str]]:
    spec = topology.spec
    declared = spec.tls
    tls = topology.tls
    if isinstance(declared, TLSSpec):
        if declared.mode is TLSMode.OFF and (
            declared.cert_file or declared.key_file or declared.ca_file
        ):
            yield ("tls", "mode"), "is off, so its certificate files would not be used"
        elif (declared.cert_file is None) != (declared.key_file is None):
            missing = "key_file" if declared.key_file is None else "cert_file"
            yield ("tls",), f"gives a certificate without its key: add {missing}"
            return
        elif declared.ca_file is not None and declared.cert_file is None:
            yield (
                ("tls", "ca_file"),
                "names a CA for your own certificate: add cert_file and key_file (without "
                "them shardctl makes the cluster's CA itself)",
            )
            return
    if tls is None:
        return
    if spec.sslmode in WEAK_SSLMODES:
        yield (
            ("sslmode",),
            f"{spec.sslmode} does not insist on TLS, which tls: required refuses: use "
            "verify-full, verify-ca or require (or leave it out)",
        )
    for name in spec.postgres:
        if name.lower() in TLS_SETTINGS:
            yield (
                ("postgres", name),
                f"{name} is set by shardctl with tls: required; remove it from postgres:",
            )
    files = [("cert_file", tls.cert), ("key_file", tls.key)]
    if isinstance(declared, TLSSpec) and declared.ca_file is not None:
        files.append(("ca_file", tls.ca))
    for key, path in files:
        if path is None:
            continue
        problem = _file_problem(path)
        if problem:
            yield ("tls", key), f"the file named (relative to the topology) {problem}"
            return
    if tls.cert is not None and tls.key is not None:
        from shardctl.config import (
            tls as certificates,  # cryptography: loaded for user-given files only
        )

        problem = certificates.problem(tls.cert.read_bytes(), tls.key.read_bytes())
        if problem:
            yield ("tls",), problem
