"""The PgBouncer in front of a node: where it listens and points, and what its admin console says.

A node's pooler runs on the node's engine and always points at that node's server (its
container on the engine's network), whatever the node's role: roles move between nodes, each
pooler stays with its node, and a client that wants the acting primary picks the pooler of the
node the catalog names (the Router does). So a switchover or failover never re-points a pooler;
the demoted server's restart closes the pooler's server connections to it, and PgBouncer opens
new ones on the next transaction.

What is read, per pooler, over its admin console (user
:data:`~shardctl.config.credentials.POOLER_ADMIN`,
simple query protocol): ``SHOW DATABASES`` (where it points), ``SHOW POOLS`` (clients waiting,
server connections); and, through the pooler as the application role, whether the server it
reaches is in recovery, which must match the node's acting role.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psycopg

from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Node
from shardctl.db.pg import conninfo
from shardctl.util import fanout
from shardctl.util.text import first_line

ADMIN_DATABASE = "pgbouncer"
"""PgBouncer's admin console database."""


@dataclass(frozen=True)
class PoolerFacts:
    """What one pooler said: where it points, its pools, and the server behind it."""

    host: str
    port: int
    pool_mode: str
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    max_wait_seconds: float
    server_in_recovery: bool | None
    """What the server reached through the pooler says (None: that query failed)."""
    server_error: str | None = None


@dataclass(frozen=True)
class PoolerObservation:
    """A pooled node, its pooler container's state, and what the pooler said (or why not)."""

    node: Node
    container: str
    """The container's state (running, exited, missing, ...)."""
    facts: PoolerFacts | None
    error: str | None


def admin_connect(
    node: Node, credentials: Credentials, *, timeout: float = 5.0
) -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the admin console of ``node``'s pooler (simple query protocol, which
    the console requires); psycopg.OperationalError when it does not answer."""
    info = conninfo(
        node, credentials, ADMIN_DATABASE, timeout=timeout, login=Login.POOLER_ADMIN, via="pooler"
    )
    return psycopg.connect(info, autocommit=True, cursor_factory=psycopg.ClientCursor)


def _rows(conn: psycopg.Connection[tuple[object, ...]], command: str) -> list[dict[str, object]]:
    """An admin ``SHOW`` as rows by column name (columns differ between PgBouncer versions)."""
    cur = conn.execute(command)
    names = [column.name for column in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _int(value: object) -> int:
    return int(str(value)) if value is not None else 0


def probe(node: Node, credentials: Credentials, database: str, *, timeout: float) -> PoolerFacts:
    """Read the pooler of ``node``: its admin console, then one query through it."""
    console = read_console(node, credentials, database, timeout=timeout)
    in_recovery, error = server_in_recovery(node, credentials, database, timeout=timeout)
    return dataclasses.replace(console, server_in_recovery=in_recovery, server_error=error)


def read_console(
    node: Node, credentials: Credentials, database: str, *, timeout: float
) -> PoolerFacts:
    """What the admin console of ``node``'s pooler says (it answers even when every server
    connection is taken); the server behind it not asked (``server_in_recovery`` None)."""
    with admin_connect(node, credentials, timeout=timeout) as admin:
        databases = [r for r in _rows(admin, "SHOW DATABASES") if r.get("name") == database]
        pools = [r for r in _rows(admin, "SHOW POOLS") if r.get("database") == database]
    if not databases:
        raise LookupError(f"the pooler serves no database {database!r}")
    entry = databases[0]
    return PoolerFacts(
        host=str(entry.get("host") or ""),
        port=_int(entry.get("port")),
        pool_mode=str(entry.get("pool_mode") or (pools[0].get("pool_mode") if pools else "")),
        clients_active=sum(_int(p.get("cl_active")) for p in pools),
        clients_waiting=sum(_int(p.get("cl_waiting")) for p in pools),
        servers_active=sum(_int(p.get("sv_active")) for p in pools),
        servers_idle=sum(_int(p.get("sv_idle")) for p in pools),
        max_wait_seconds=max(
            (_int(p.get("maxwait")) + _int(p.get("maxwait_us")) / 1e6 for p in pools),
            default=0.0,
        ),
        server_in_recovery=None,
        server_error="not asked",
    )


def server_in_recovery(
    node: Node, credentials: Credentials, database: str, *, timeout: float
) -> tuple[bool | None, str | None]:
    """Whether the server reached through ``node``'s pooler (as the application role) is in
    recovery, or why that could not be asked. A full pool makes this wait for a server."""
    info = conninfo(node, credentials, database, timeout=timeout, login=Login.APP, via="pooler")
    try:
        with psycopg.connect(info, autocommit=True, prepare_threshold=None) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            return (bool(row[0]) if row is not None else None), None
    except psycopg.Error as exc:
        return None, first_line(exc)


def observe(
    nodes: Sequence[Node],
    states: Mapping[str, str],
    credentials: Callable[[], Credentials],
    database: str,
    *,
    timeout: float,
) -> tuple[PoolerObservation, ...]:
    """Probe the pooler of every node in ``nodes`` whose container runs (``states``: pooler
    container name -> state), all at once."""
    running = [n for n in nodes if states.get(n.pooler_container) == "running"]
    login = credentials() if running else None

    def task(node: Node) -> Callable[[], PoolerFacts]:
        def run() -> PoolerFacts:
            assert login is not None
            return probe(node, login, database, timeout=timeout)

        return run

    answers = fanout.gather({n.name: task(n) for n in running}, timeout=timeout + 1.0)
    found = []
    for node in nodes:
        state = states.get(node.pooler_container, "missing")
        answer = answers.get(node.name)
        if answer is None:
            found.append(PoolerObservation(node, state, None, f"container {state}"))
        elif isinstance(answer, BaseException):
            why = first_line(answer) if isinstance(answer, psycopg.Error) else str(answer)
            found.append(PoolerObservation(node, state, None, why or type(answer).__name__))
        else:
            found.append(PoolerObservation(node, state, answer, None))
    return tuple(found)
