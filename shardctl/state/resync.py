"""Re-sync of keys: make a few keys' rows on a target equal to the source's, row for row.

The reshard's drain and verification (:mod:`shardctl.ops.reshard`) and a Router's dual writes
(:mod:`shardctl.router.router`) share it: the source row is locked ``FOR SHARE`` (waiting out an
in-flight writer), then the key is replaced on the target with the source's committed state,
or deleted there when the source has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from shardctl.config.schema import TableSpec
from shardctl.state.fence import trusted_writes
from shardctl.util.waiting import retrying

Conn = psycopg.Connection[Any]


def key_type(conn: Conn, table: TableSpec) -> str:
    """The SQL type of a table's key column, as PostgreSQL spells it."""
    row = conn.execute(
        "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped",
        (table.name, table.key),
    ).fetchone()
    if row is None:
        raise psycopg.ProgrammingError(f"table {table.name} has no column {table.key}")
    return str(row[0])


def keys_in(table: TableSpec, type_name: str, keys: Sequence[str]) -> sql.Composable:
    """``key IN (keys)``, the keys given as text and cast to the key's type.

    A literal rather than a parameter because COPY statements take no parameters.
    """
    return sql.SQL("{} IN (SELECT k::{} FROM pg_catalog.unnest({}::text[]) AS k)").format(
        sql.Identifier(table.key), sql.SQL(type_name), sql.Literal(list(keys))
    )


PIPE_BUFFER = 128 * 1024
"""Bytes of COPY data gathered before one write to the target. A binary ``COPY TO`` sends one
message per row, and each write is a round of psycopg's waiting machinery: written one by one,
the client's CPU per row was the pipe's limit (a 1M-user removal, 192k rows: 1.4 s of client
CPU per row-by-row pipe, 0.6 s gathered)."""


def pipe(
    source: Conn, copy_out: sql.Composed | sql.SQL, into: psycopg.Cursor[Any], table: sql.Identifier
) -> int:
    """Stream ``copy_out`` (a binary COPY TO STDOUT) on the source into ``table`` through the
    target cursor ``into``, in writes of about :data:`PIPE_BUFFER` bytes; the bytes moved."""
    moved = 0
    with (
        source.cursor().copy(copy_out) as out,
        into.copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(table)) as copy_in,
    ):
        gathered = bytearray()
        for block in out:
            gathered += block
            if len(gathered) >= PIPE_BUFFER:
                moved += len(gathered)
                copy_in.write(gathered)
                gathered = bytearray()
        if gathered:
            moved += len(gathered)
            copy_in.write(gathered)
    return moved


RESYNC_ATTEMPTS = 5


def resync_keys(
    source: Conn,
    target: Conn,
    table: TableSpec,
    type_name: str,
    keys: Sequence[str],
    *,
    trusted: bool = True,
) -> None:
    """Make ``keys`` on the target equal to the source; call inside a source transaction.

    ``trusted`` (shardctl's drain, as the superuser) writes past the target's guard; a Router's
    dual write (the application role, which may not) goes through it, which lets it pass: the
    target gives away no range holding a key moving to it.

    The source rows are locked FOR SHARE, so their committed state cannot change under us.
    Another re-sync of the same key (a router's dual write, the drain) or the bulk copy may
    insert it on the target between our DELETE and COPY: both copied the same committed
    state, so we simply try again.
    """
    name = sql.Identifier(table.name)
    match = keys_in(table, type_name, keys)
    source.execute(sql.SQL("SELECT 1 FROM {} WHERE {} FOR SHARE").format(name, match))
    copy_out = sql.SQL("COPY (SELECT * FROM {} WHERE {}) TO STDOUT (FORMAT binary)").format(
        name, match
    )

    def replace() -> None:
        with target.transaction(), target.cursor() as cur:
            if trusted:
                trusted_writes(target)
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(name, match))
            pipe(source, copy_out, cur, name)

    retrying(replace, retry_on=psycopg.errors.UniqueViolation, attempts=RESYNC_ATTEMPTS)
