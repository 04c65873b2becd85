"""PostgreSQL administration shardctl does on its nodes: roles, slots, the database, the schema,
who a standby follows and when a commit waits for one.

Each function takes an open superuser connection (:func:`shardctl.db.pg.connect`) and is a
no-op when the node already is as asked; none of them touches Docker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.errors import ProvisioningError

Conn = psycopg.Connection[Any]

REPLICATION_ROLE = "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
"""The replication role: it streams WAL and nothing else."""
APP_ROLE = "LOGIN NOREPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT"
"""The application role: logs in; what it may touch is granted, object by object."""


def ensure_role(conn: Conn, name: str, password: str, options: str) -> None:
    """Create the role ``name`` with ``options`` (a constant above) and ``password``, or make an
    existing one match them."""
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if exists.fetchone() else "CREATE"
    conn.execute(
        sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(name), sql.SQL(options), sql.Literal(password)
        )
    )


def ensure_database(conn: Conn, name: str) -> None:
    """Create the database ``name`` unless it exists."""
    if not conn.execute(
        "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (name,)
    ).fetchone():
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def create_slot(conn: Conn, replica: Node) -> None:
    """The replica's physical slot, reserving WAL from now; nothing when it exists."""
    conn.execute(
        "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s)",
        (replica.slot, replica.slot),
    )


def reset_slot(conn: Conn, replica: Node) -> None:
    """A replica cloned afresh gets a fresh slot, so no stale WAL is held for it."""
    conn.execute(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
        "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND NOT active",
        (replica.slot,),
    )
    create_slot(conn, replica)


def apply_schema(conn: Conn, path: Path, node: str) -> None:
    """Run a schema file (it must be idempotent) over ``conn``, to the topology's database."""
    text = path.read_text(encoding="utf-8")
    try:
        conn.execute(text.encode())
    except psycopg.Error as exc:
        raise ProvisioningError(
            f"{path}: applying the schema on {node} failed: {pg.first_line(exc)}"
        ) from None


def in_recovery(conn: Conn) -> bool:
    """Whether the server is a standby (``pg_is_in_recovery()``)."""
    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


def upstream(conn: Conn) -> tuple[bool, dict[str, str | int | None], str]:
    """A server's recovery state, ``primary_conninfo`` (parsed) and ``primary_slot_name``."""
    row = conn.execute(
        "SELECT pg_catalog.pg_is_in_recovery(), "
        "pg_catalog.current_setting('primary_conninfo'), "
        "pg_catalog.current_setting('primary_slot_name')"
    ).fetchone()
    assert row is not None
    return bool(row[0]), conninfo_to_dict(str(row[1])), str(row[2])


def set_upstream(conn: Conn, conninfo: str, slot: str) -> None:
    """Point a standby at another upstream: ``ALTER SYSTEM`` and a reload, no restart."""
    conn.execute(sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(conninfo)))
    conn.execute(sql.SQL("ALTER SYSTEM SET primary_slot_name = {}").format(sql.Literal(slot)))
    conn.execute("SELECT pg_catalog.pg_reload_conf()")


def commit_waits_for_replicas(conn: Conn, wanted: str) -> None:
    """Make the primary ``conn`` reaches acknowledge commits as ``wanted`` (its
    ``synchronous_standby_names``, :func:`shardctl.health.durability.standby_names`) says: a
    reload, no restart; nothing when it already does."""
    row = conn.execute("SELECT pg_catalog.current_setting('synchronous_standby_names')").fetchone()
    if row is not None and row[0] == wanted:
        return
    conn.execute(
        sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(wanted))
    )
    conn.execute("SELECT pg_catalog.pg_reload_conf()")


def pending_restart(conn: Conn) -> list[str]:
    """The settings changed in the configuration that only a restart applies (sorted)."""
    rows = conn.execute(
        "SELECT name FROM pg_catalog.pg_settings WHERE pending_restart ORDER BY name"
    ).fetchall()
    return [str(row[0]) for row in rows]


STANDBY_MINIMUMS = (
    "max_connections",
    "max_locks_per_transaction",
    "max_prepared_transactions",
    "max_wal_senders",
    "max_worker_processes",
)
"""Settings a hot standby must have at least as high as its primary: a standby restarted
with less than its primary refuses to replay."""


def lowered_by_restart(conn: Conn) -> list[str]:
    """The :data:`STANDBY_MINIMUMS` whose value after the next restart (the configuration
    files as they are now) is lower than the running one (sorted)."""
    rows = conn.execute(
        "SELECT s.name FROM pg_catalog.pg_settings s"
        " LEFT JOIN LATERAL (SELECT f.setting FROM pg_catalog.pg_file_settings f"
        "  WHERE f.name = s.name ORDER BY f.seqno DESC LIMIT 1) f ON true"
        " WHERE s.name = ANY(%s)"
        " AND CASE WHEN s.source IN ('default', 'configuration file')"  # else: command line
        "  THEN COALESCE(f.setting, s.boot_val) ELSE s.setting END::bigint < s.setting::bigint"
        " ORDER BY s.name",
        (list(STANDBY_MINIMUMS),),
    ).fetchall()
    return [str(row[0]) for row in rows]


def flush_lsn(conn: Conn) -> int:
    """How far the primary's WAL is flushed (``pg_current_wal_flush_lsn()``), in bytes: what a
    standby can have received and replayed at most."""
    row = conn.execute(
        "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_flush_lsn(), '0/0')::bigint"
    ).fetchone()
    assert row is not None
    return int(row[0])


def reload(conn: Conn) -> None:
    """Re-read the configuration files (``pg_reload_conf()``): no restart."""
    conn.execute("SELECT pg_catalog.pg_reload_conf()")


def postmaster_start(conn: Conn) -> float:
    """When the server's postmaster started (epoch seconds): unchanged by a reload."""
    row = conn.execute(
        "SELECT extract(epoch FROM pg_catalog.pg_postmaster_start_time())::float8"
    ).fetchone()
    assert row is not None
    return float(row[0])


def configured(conn: Conn, managed: frozenset[str]) -> dict[str, str]:
    """What ``ALTER SYSTEM`` gave the server (``postgresql.auto.conf`` as on disk now), names
    lower-case, without the ``managed`` ones."""
    rows = conn.execute(
        "SELECT name, setting FROM pg_catalog.pg_file_settings "
        "WHERE sourcefile LIKE %s AND error IS NULL ORDER BY seqno",
        ("%/postgresql.auto.conf",),
    ).fetchall()
    return {str(n).lower(): str(v) for n, v in rows if str(n).lower() not in managed}


def apply_settings(conn: Conn, wanted: dict[str, str], managed: frozenset[str]) -> list[str]:
    """Make the server's ``ALTER SYSTEM`` settings (``managed`` ones aside) exactly ``wanted``
    (name → value text) and reload; the names changed (nothing done when none)."""
    have = configured(conn, managed)
    wanted = {name.lower(): value for name, value in wanted.items()}
    names = sorted(n for n in set(have) | set(wanted) if have.get(n) != wanted.get(n))
    for name in names:
        identifier = sql.Identifier(*name.split("."))
        if name in wanted:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(identifier, sql.Literal(wanted[name]))
            )
        else:
            conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(identifier))
    if names:
        reload(conn)
    return names
