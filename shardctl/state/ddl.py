"""The protocol's schema on a primary: its objects, the guard triggers, the application's grants.

:func:`install` runs ``sql/fence.sql`` (package data: every table and function of the fence
and of the reshard's record, idempotent) and arms the guard triggers of each sharded table;
:func:`grant_app` gives the application role exactly what a Router needs; :func:`ensure` does
both on every primary (``up``, after the ring catalog) and lifts a role-change fence a dead
switchover left behind.

``guard`` and ``assert_owner`` run as their owner (``SECURITY DEFINER``, the superuser that ran
``up``) with a fixed ``search_path``, and ``check_key`` inside them: the trigger records a
writer's key in ``shardctl.changes``, and ``assert_owner`` reads the range ``FOR SHARE``,
although the application role that writes may neither write ``shardctl.changes`` nor lock
``shardctl.moving`` itself. Nothing in the schema is granted to PUBLIC (functions are, by
default).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from shardctl.config.credentials import Credentials
from shardctl.config.schema import TableSpec
from shardctl.config.topology import Topology
from shardctl.db import pg
from shardctl.state import fence
from shardctl.state.locks import FENCE_INSTALL_LOCK, XACT_LOCK

Conn = psycopg.Connection[Any]

GUARD_TRIGGER = "shardctl_guard"
"""The INSERT guard trigger of a sharded table (``_update``, ``_delete``: the other two)."""


@cache
def schema_sql() -> str:
    """Every table and function of the protocol, as ``sql/fence.sql`` holds them."""
    return resources.files(__package__).joinpath("sql", "fence.sql").read_text(encoding="utf-8")


# (table, trigger name): the guard as this version makes it (a WHEN clause on key::text, the
# ranges as its second argument; an earlier one placed keys by their to_jsonb text)
HAS_GUARD = (
    "SELECT 1 FROM pg_catalog.pg_trigger "
    "WHERE tgrelid = %s::regclass AND tgname = %s AND tgqual IS NOT NULL AND tgnargs = 2 "
    "AND pg_catalog.pg_get_triggerdef(oid) NOT LIKE '%%to_jsonb%%'"
)
# (table, key column)
REGISTER_GUARDED = (
    "INSERT INTO shardctl.guarded (tbl, key) VALUES (%s::regclass, %s) ON CONFLICT (tbl) "
    "DO UPDATE SET key = EXCLUDED.key, armed = CASE WHEN shardctl.guarded.key = EXCLUDED.key "
    "THEN shardctl.guarded.armed END"
)
# (table)
DISARM = "UPDATE shardctl.guarded SET armed = NULL WHERE tbl = %s::regclass"
# no parameters
REARM = "SELECT shardctl.rearm()"


def install(conn: Conn, tables: Sequence[TableSpec]) -> None:
    """Create the protocol's tables and functions, and the guard triggers of each sharded table
    (armed for the ranges listed here; an older, unconditional guard is replaced)."""
    conn.execute(schema_sql().encode())  # bytes: a query read from a file, not a literal
    for table in tables:
        current = conn.execute(HAS_GUARD, (table.name, GUARD_TRIGGER)).fetchone()
        conn.execute(REGISTER_GUARDED, (table.name, table.key))
        if not current:
            conn.execute(DISARM, (table.name,))
    # Rewrites only the triggers whose ranges differ (creating a trigger locks the table
    # against writes for a moment: on every `up`, only when something changed).
    conn.execute(REARM)


ROUTER_READS = ("ring", "moving")
"""The tables of the ``shardctl`` schema a Router reads (the ring and acting roles; the ranges
it dual-writes): SELECT only. They hold no secret."""
ROUTER_CALLS = ("assert_owner(text)",)
"""The functions of the ``shardctl`` schema a Router calls (the trigger needs no grant: a
trigger function's privileges are checked when the trigger is made, not when it fires)."""

# (sharded table) -> the sequences its columns draw defaults from (serial, identity)
TABLE_SEQUENCES = (
    "SELECT d.objid::regclass::text FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class c ON c.oid = d.objid AND c.relkind = 'S' "
    "WHERE d.refobjid = %s::regclass AND d.deptype IN ('a', 'i')"
)


def grant_app(conn: Conn, tables: Sequence[TableSpec], app_user: str) -> None:
    """Give the application role what a Router and ``load`` need, and nothing else: read and
    write the sharded tables (no TRUNCATE: it fires no trigger), read the ring and the moving
    ranges, call ``assert_owner``."""
    role = sql.Identifier(app_user)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA shardctl TO {}").format(role))
    for name in ROUTER_READS:
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(sql.Identifier("shardctl", name), role)
        )
    for function in ROUTER_CALLS:
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION shardctl.{} TO {}").format(sql.SQL(function), role)
        )
    for table in tables:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(
                sql.Identifier(table.name), role
            )
        )
        for (sequence,) in conn.execute(TABLE_SEQUENCES, (table.name,)).fetchall():
            conn.execute(
                sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(sequence), role)
            )


def ensure(topology: Topology, credentials: Credentials) -> None:
    """Install the protocol's schema on every primary, and the application role's grants
    (idempotent; done by ``up``, after the ring catalog)."""

    def one(conn: Conn) -> None:
        with pg.bookkeeping(conn):  # never waits for a synchronous standby
            conn.execute(XACT_LOCK, (FENCE_INSTALL_LOCK,))
            install(conn, topology.spec.tables)
            grant_app(conn, topology.spec.tables, topology.spec.credentials.app_user)
        fence.lift_abandoned_role_fence(conn)

    pg.on_nodes(
        topology,
        credentials,
        topology.primaries(),
        one,
        timeout=10.0,
        strict=True,
        doing="installing the reshard fence",
    )
