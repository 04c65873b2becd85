"""Server-side change capture and fencing on a resharding source.

Installed on every primary by ``up``. One BEFORE ROW trigger per sharded table looks the
written key up in ``shardctl.moving`` (empty, so one index probe, until a reshard):

- ``capturing`` range: the key is recorded in ``shardctl.changes`` in the writer's own
  transaction (whoever the writer is: Router, psql, another service);
- ``fenced`` or ``moved`` range: the write is refused with SQLSTATE ``SC001`` (key not owned);
  a Router refreshes its ring and retries on the new owner.

The Router also calls ``shardctl.assert_owner(key)`` first in every write transaction, so the
fence holds even for an UPDATE or DELETE that matches no row (the trigger never fires then).
The range row is read ``FOR SHARE``, so marking a range ``fenced`` waits for every in-flight
writer of that range to finish: that is the cut-over's handshake. shardctl's own copy, re-sync
and clean-up write with ``session_replication_role = replica``, which skips the trigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from shardctl import catalog
from shardctl.catalog import FENCE_SQLSTATE
from shardctl.credentials import Credentials
from shardctl.topology import TableSpec, Topology

NOT_OWNED_SQLSTATE = FENCE_SQLSTATE
INSTALL_LOCK = 0x5C_A7A1_07

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS shardctl;
CREATE TABLE IF NOT EXISTS shardctl.moving (
    reshard_id bigint NOT NULL,
    lo         text COLLATE "C" NOT NULL,
    hi         text COLLATE "C",
    target     text NOT NULL,
    state      text NOT NULL CHECK (state IN ('capturing', 'fenced', 'moved')),
    copied     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (reshard_id, lo)
);
CREATE INDEX IF NOT EXISTS moving_lo ON shardctl.moving (lo);
CREATE TABLE IF NOT EXISTS shardctl.changes (
    id     bigserial PRIMARY KEY,
    target text NOT NULL,
    tbl    text NOT NULL,
    key    text NOT NULL
);
CREATE TABLE IF NOT EXISTS shardctl.reshard (
    id         bigint PRIMARY KEY,
    phase      text NOT NULL,
    flipped    boolean NOT NULL DEFAULT false,
    plan       jsonb NOT NULL,
    report     jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardctl.copied (
    reshard_id bigint NOT NULL,
    chunk      text NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (reshard_id, chunk)
);
CREATE OR REPLACE FUNCTION shardctl.check_key(k text, capture_table text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    pos   text := md5(k) COLLATE "C";
    found record;
BEGIN
    -- FOR SHARE: marking the range fenced waits until this transaction ends.
    SELECT m.state, m.target INTO found FROM shardctl.moving m
     WHERE m.lo <= pos AND (m.hi IS NULL OR pos < m.hi)
     ORDER BY m.lo DESC LIMIT 1
     FOR SHARE;
    IF found.state IN ('fenced', 'moved') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SC001',
            MESSAGE = format('shardctl: key %s is not owned by this shard', k),
            HINT = format('it moved to %s; refresh the ring and retry there', found.target);
    ELSIF found.state = 'capturing' AND capture_table IS NOT NULL THEN
        INSERT INTO shardctl.changes (target, tbl, key) VALUES (found.target, capture_table, k);
    END IF;
END
$fn$;
CREATE OR REPLACE FUNCTION shardctl.assert_owner(k text) RETURNS void
LANGUAGE sql AS $fn$ SELECT shardctl.check_key(k, NULL) $fn$;
CREATE OR REPLACE FUNCTION shardctl.guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    old_key text;
    new_key text;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_key := to_jsonb(OLD) ->> TG_ARGV[0]; END IF;
    IF TG_OP <> 'DELETE' THEN new_key := to_jsonb(NEW) ->> TG_ARGV[0]; END IF;
    IF old_key IS NOT NULL THEN
        PERFORM shardctl.check_key(old_key, TG_TABLE_NAME);
    END IF;
    IF new_key IS NOT NULL AND new_key IS DISTINCT FROM old_key THEN
        PERFORM shardctl.check_key(new_key, TG_TABLE_NAME);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$fn$;
"""


def install(conn: psycopg.Connection[Any], tables: tuple[TableSpec, ...]) -> None:
    """Create the capture tables, the guard function and one trigger per sharded table."""
    conn.execute(SCHEMA_SQL.encode())
    for table in tables:
        present = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_trigger "
            "WHERE tgrelid = %s::regclass AND tgname = 'shardctl_guard'",
            (table.name,),
        ).fetchone()
        if present:
            continue  # creating a trigger locks the table against writes: only when missing
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER shardctl_guard "
                "BEFORE INSERT OR UPDATE OR DELETE ON {} "
                "FOR EACH ROW EXECUTE FUNCTION shardctl.guard({})"
            ).format(sql.Identifier(table.name), sql.Literal(table.key))
        )


def ensure(topology: Topology, credentials: Credentials) -> None:
    """Install capture and fencing on every primary (idempotent; done by ``up``)."""

    def one(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(%s)", (INSTALL_LOCK,))
            install(conn, topology.spec.tables)

    catalog.on_primaries(
        topology,
        credentials,
        topology.primaries(),
        one,
        timeout=10.0,
        strict=True,
        doing="installing the reshard fence",
    )


@dataclass(frozen=True)
class Moving:
    """A range a source is giving away while its rows are copied: ``[start, end)`` to target."""

    source: str
    start_hex: str
    end_hex: str | None
    target: str

    def contains(self, position_hex: str) -> bool:
        """Whether a key at ``position_hex`` lies in this range."""
        return self.start_hex <= position_hex and (
            self.end_hex is None or position_hex < self.end_hex
        )


def moving_ranges(conn: psycopg.Connection[Any], source: str) -> list[Moving]:
    """The ranges ``source`` (the shard ``conn`` reaches) is capturing and has copied: those a
    Router dual-writes. Before its copy a range takes no dual writes: they would only collide
    with the copy, which brings those rows anyway (newer changes are in the change log)."""
    rows = conn.execute(
        "SELECT lo, hi, target FROM shardctl.moving "
        "WHERE state = 'capturing' AND copied ORDER BY lo"
    ).fetchall()
    return [Moving(source, lo, hi, target) for lo, hi, target in rows]


def is_not_owned(exc: BaseException) -> bool:
    """Whether a database error is the fence refusing a key this shard no longer owns."""
    return isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) == NOT_OWNED_SQLSTATE


def trusted_writes(conn: psycopg.Connection[Any]) -> None:
    """Let this transaction write without firing the guard (shardctl's own copy and clean-up)."""
    conn.execute("SET LOCAL session_replication_role = replica")
