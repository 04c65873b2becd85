"""Comparing a table's rows across servers: one checksum, one row hash, one list of differences.

Resharding verification (source against target, per moved range) and ``verify-replication
--deep`` (primary against replica, per table) compare with the same three things:

- :data:`CHECKSUM`: a row count and an order-independent checksum, the sum of the first 60 bits
  of each row text's md5, so no sort and no memory grows with the table;
- :func:`row_hashes`: key → md5 of the row's text, to name the keys behind a mismatch;
- :func:`differing_keys`: the keys whose row differs or exists on one side only.

Row text must not depend on a session's settings: every connection that compares runs
:data:`SESSION_SETTINGS` first (:func:`prepare`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from shardctl.config.schema import TableSpec

Conn = psycopg.Connection[Any]

SESSION_SETTINGS = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1"
"""Settings under which a row's text, and so its hash, is the same on every server."""

CHECKSUM = sql.SQL(
    "count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)::bigint), 0)"
)
"""Two aggregates over rows aliased ``t``: their count and their checksum."""


def prepare(conn: Conn) -> None:
    """Apply :data:`SESSION_SETTINGS` to a connection that hashes rows."""
    conn.execute(SESSION_SETTINGS)


def checksum_query(table: TableSpec) -> sql.Composed:
    """``SELECT`` the row count and checksum of a whole table."""
    return sql.SQL("SELECT {} FROM {} t").format(CHECKSUM, sql.Identifier(table.name))


def row_hashes(conn: Conn, table: TableSpec, where: sql.Composable | None = None) -> dict[str, str]:
    """Key (as text) → md5 of the row's text, for every row matching ``where`` (all: None)."""
    query = sql.SQL("SELECT {key}::text, md5(t::text) FROM {table} t").format(
        key=sql.Identifier(table.key), table=sql.Identifier(table.name)
    )
    if where is not None:
        query = sql.SQL("{} WHERE {}").format(query, where)
    return {str(k): str(h) for k, h in conn.execute(query)}


def differing_keys(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The keys, sorted, whose row hash differs between two key → row hash maps (or that one
    side lacks)."""
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
