"""Server-side change capture and fencing on a resharding source.

On every primary that gives away ranges, one BEFORE ROW trigger per sharded table looks the
written key up in ``shardctl.moving``:

- ``capturing`` range: the key is recorded in ``shardctl.changes`` in the writer's own
  transaction (whoever the writer is: Router, psql, another service);
- ``fenced`` or ``moved`` range: the write is refused with SQLSTATE ``SC001`` (key not owned);
  a Router refreshes its ring and retries on the new owner.

The range row is read ``FOR SHARE``, so marking a range ``fenced`` waits for every in-flight
writer of that range to finish: that is the cut-over's handshake. shardctl's own copy, re-sync
and clean-up write with ``session_replication_role = replica``, which skips the trigger.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from shardctl.topology import TableSpec

NOT_OWNED_SQLSTATE = "SC001"

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS shardctl;
CREATE TABLE IF NOT EXISTS shardctl.moving (
    reshard_id bigint NOT NULL,
    lo         text COLLATE "C" NOT NULL,
    hi         text COLLATE "C",
    target     text NOT NULL,
    state      text NOT NULL CHECK (state IN ('capturing', 'fenced', 'moved')),
    PRIMARY KEY (reshard_id, lo)
);
CREATE INDEX IF NOT EXISTS moving_lo ON shardctl.moving (lo);
CREATE TABLE IF NOT EXISTS shardctl.changes (
    id     bigserial PRIMARY KEY,
    target text NOT NULL,
    tbl    text NOT NULL,
    key    text NOT NULL
);
CREATE TABLE IF NOT EXISTS shardctl.copied (
    reshard_id bigint NOT NULL,
    chunk      text NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (reshard_id, chunk)
);
CREATE OR REPLACE FUNCTION shardctl.guard() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    old_key text;
    new_key text;
    k       text;
    pos     text;
    found   record;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_key := to_jsonb(OLD) ->> TG_ARGV[0]; END IF;
    IF TG_OP <> 'DELETE' THEN new_key := to_jsonb(NEW) ->> TG_ARGV[0]; END IF;
    FOREACH k IN ARRAY ARRAY[old_key, CASE WHEN new_key IS DISTINCT FROM old_key THEN new_key END]
    LOOP
        CONTINUE WHEN k IS NULL;
        pos := md5(k) COLLATE "C";
        SELECT m.state, m.target INTO found FROM shardctl.moving m
         WHERE m.lo <= pos AND (m.hi IS NULL OR pos < m.hi)
         ORDER BY m.lo DESC LIMIT 1
         FOR SHARE;
        IF found.state IN ('fenced', 'moved') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'SC001',
                MESSAGE = format('shardctl: key %s of %s is not owned by this shard',
                                 k, TG_TABLE_NAME),
                HINT = format('it moved to %s; refresh the ring and retry there', found.target);
        ELSIF found.state = 'capturing' THEN
            INSERT INTO shardctl.changes (target, tbl, key) VALUES (found.target, TG_TABLE_NAME, k);
        END IF;
    END LOOP;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$fn$;
"""


def install(conn: psycopg.Connection[Any], tables: tuple[TableSpec, ...]) -> None:
    """Create the capture tables, the guard function and one trigger per sharded table."""
    conn.execute(SCHEMA_SQL.encode())
    for table in tables:
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE TRIGGER shardctl_guard "
                "BEFORE INSERT OR UPDATE OR DELETE ON {} "
                "FOR EACH ROW EXECUTE FUNCTION shardctl.guard({})"
            ).format(sql.Identifier(table.name), sql.Literal(table.key))
        )


def is_not_owned(exc: BaseException) -> bool:
    """Whether a database error is the fence refusing a key this shard no longer owns."""
    return isinstance(exc, psycopg.Error) and getattr(exc, "sqlstate", None) == NOT_OWNED_SQLSTATE


def trusted_writes(conn: psycopg.Connection[Any]) -> None:
    """Let this transaction write without firing the guard (shardctl's own copy and clean-up)."""
    conn.execute("SET LOCAL session_replication_role = replica")
