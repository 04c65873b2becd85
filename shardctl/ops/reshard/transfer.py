"""Moving rows between two primaries: chunked COPY, key re-sync, and verification.

Everything here makes the *target* converge towards the *source*, which stays authoritative
until cut-over:

- :func:`copy_ranges` streams the rows of a batch of ring ranges with the COPY protocol, one
  stream into the table (or a staging table merged with ``ON CONFLICT DO NOTHING``); the
  chunks' progress rows commit in the same target transaction, so a resumed copy never redoes
  finished work;
- :func:`drain` re-syncs every key named in the source's change log with
  :func:`shardctl.state.resync.resync_keys` (the Router's dual writes use it too): it locks the
  key's row on the source (``FOR SHARE``, waiting out an in-flight writer), then replaces the
  key on the target with the source's current state, or deletes it there when the source has
  none;
- :func:`fingerprints` counts and checksums rows per range on one server (an index range
  scan per range), :func:`sizes` counts rows and bytes per range (the same, or one full scan
  without the index), and :func:`differing_keys` names the keys
  whose rows differ (the checksum, the row hash and the comparison are
  :mod:`shardctl.db.digest`'s, which ``verify-replication --deep`` uses too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from shardctl.config.schema import TableSpec
from shardctl.db import digest
from shardctl.ring.hashing import Move, Span
from shardctl.ring.sql import bucketed, position
from shardctl.state import fence, inflight
from shardctl.state.fence import trusted_writes
from shardctl.state.plan import merged
from shardctl.state.resync import key_type, keys_in, pipe, resync_keys

Conn = psycopg.Connection[Any]


def range_predicate(key_column: str, start_hex: str, end_hex: str | None) -> sql.Composable:
    """``start <= position < end`` with the bounds inlined as literals (no upper bound when
    ``end_hex`` is None): COPY statements take no parameters, unlike
    :func:`shardctl.ring.sql.range_condition`.
    """
    pos = position(key_column)
    lower = sql.SQL("{} >= {}").format(pos, sql.Literal(start_hex))
    if end_hex is None:
        return lower
    return sql.SQL("{} AND {} < {}").format(lower, pos, sql.Literal(end_hex))


def position_index(table: TableSpec) -> str:
    """Name of the index on a table's ring position that a reshard builds on its sources."""
    return f"shardctl_ringpos_{table.name}"


def ensure_position_index(conn: Conn, table: TableSpec) -> None:
    """Index the ring position of a table's rows, concurrently (writes go on meanwhile).

    Without it every chunk of a move is a full scan computing md5 for every row; with it a
    chunk is an index range scan. An index left invalid by an interrupted build is rebuilt.
    """
    name = sql.Identifier(position_index(table))
    valid = conn.execute(
        "SELECT i.indisvalid FROM pg_catalog.pg_index i "
        "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        (position_index(table),),
    ).fetchone()
    if valid is not None and valid[0]:
        return
    if valid is not None:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))
    conn.execute(
        sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
            name, sql.Identifier(table.name), sql.SQL("({})").format(position(table.key))
        )
    )


def has_position_index(conn: Conn, table: TableSpec) -> bool:
    """Whether a table's ring-position index exists and is valid (ready for range scans)."""
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_catalog.pg_index i "
        "JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s",
        (position_index(table),),
    ).fetchone()
    return bool(row and row[0])


def drop_position_index(conn: Conn, table: TableSpec) -> None:
    """Remove the ring position index once a reshard no longer needs it."""
    name = sql.Identifier(position_index(table))
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(name))


@dataclass(frozen=True)
class Copied:
    """What one chunk copy moved."""

    rows: int
    bytes: int
    how: str = "plain"
    """plain, replace or merge: see :func:`copy_range`."""


def in_spans(table: TableSpec, spans: Sequence[Span], columns: str = "*") -> sql.Composable:
    """``SELECT columns`` of the rows in ``spans`` (touching spans joined first): one
    ``SELECT … WHERE`` :func:`range_predicate` per span, joined by ``UNION ALL``.

    Not one ``WHERE`` with the ranges ``OR``-ed: the planner may scan such a query
    sequentially, computing ``md5`` once per range tested for every row (a clean-up batch of 30
    ranges passed 30 s that way). Each branch here is the ring-position index's range scan, or
    a scan that computes ``md5`` twice per row at worst.
    """
    branches = [
        sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(columns),
            sql.Identifier(table.name),
            range_predicate(table.key, span.start_hex, span.end_hex),
        )
        for span in merged(spans)
    ]
    if not branches:
        return sql.SQL("SELECT {} FROM {} WHERE false").format(
            sql.SQL(columns), sql.Identifier(table.name)
        )
    return sql.SQL(" UNION ALL ").join(branches)


def copy_ranges(
    source: Conn,
    target: Conn,
    table: TableSpec,
    chunks: Sequence[tuple[str, Span]],
    *,
    reshard_id: int,
    probe: bool = True,
) -> Copied | None:
    """Copy the ranges of a batch of chunks of a table, named by their progress names, as one
    stream in one target transaction; None when every chunk was already copied (resume).

    The chunks not yet recorded as copied on the target are copied, and each is recorded in
    the same transaction (the batch's rows and bytes on the first, 0 on the others), so a
    resumed copy never redoes or skips one. Three ways, cheapest first. ``plain``: COPY
    straight into the table, as a raw COPY would, when the ranges are empty on the target (an
    index probe). ``replace``: empty the ranges on the target first, then COPY. That may drop
    a newer row a dual write put there, but every such key has a change-log row on the source
    (written with the source's write), so the drain brings it back. ``merge``: if a dual write
    lands in the ranges even while we copy, COPY into a staging table and merge with ``ON
    CONFLICT DO NOTHING``. Without ``probe`` (a target whose ranges nothing else can have
    written yet, with no index to probe by), ``plain`` is tried first without looking.
    """
    names = [name for name, _ in chunks]
    done = {str(r[0]) for r in target.execute(inflight.CHUNKS_COPIED, (reshard_id, names))}
    todo = [(name, span) for name, span in chunks if name not in done]
    if not todo:
        return None
    spans = [span for _, span in todo]
    occupied = (
        target.execute(sql.SQL("SELECT EXISTS ({})").format(in_spans(table, spans, "1"))).fetchone()
        if probe
        else None
    )
    progress = (reshard_id, [name for name, _ in todo])
    for how in ("replace",) if occupied and occupied[0] else ("plain", "replace"):
        try:
            return _copy_chunk(source, target, table, spans, progress, how)
        except psycopg.errors.UniqueViolation:
            pass  # a dual write or re-sync put a key of these ranges there first
    return _copy_chunk(source, target, table, spans, progress, "merge")


def _copy_chunk(
    source: Conn,
    target: Conn,
    table: TableSpec,
    spans: Sequence[Span],
    progress: tuple[int, list[str]],
    how: str,
) -> Copied:
    name = sql.Identifier(table.name)
    stage = sql.Identifier(f"shardctl_stage_{table.name}")
    select = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(in_spans(table, spans))
    with target.transaction():
        trusted_writes(target)
        if how == "replace":
            target.execute(
                sql.SQL("DELETE FROM {} WHERE ctid = ANY(ARRAY({}))").format(
                    name, in_spans(table, spans, "ctid")
                )
            )
        elif how == "merge":
            target.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                    "ON COMMIT DELETE ROWS"
                ).format(stage, name)
            )
        into_table = stage if how == "merge" else name
        with target.cursor() as cur:
            nbytes = pipe(source, select, cur, into_table)
            rows = cur.rowcount  # from COPY's command tag
        if how == "merge":
            rows = target.execute(
                sql.SQL("INSERT INTO {} SELECT * FROM {} ON CONFLICT DO NOTHING").format(
                    name, stage
                )
            ).rowcount
        reshard_id, names = progress
        with target.cursor() as cur:
            cur.executemany(
                inflight.RECORD_CHUNK,
                [(reshard_id, name, *((rows, nbytes) if i == 0 else (0, 0)))
                 for i, name in enumerate(names)],
            )  # fmt: skip
    return Copied(rows=rows, bytes=nbytes, how=how)


def drain(
    source: Conn,
    target: Conn,
    target_name: str,
    tables: Sequence[TableSpec],
    *,
    batch: int = 2000,
    key_types: dict[str, str] | None = None,
    on_batch: Callable[[int], None] | None = None,
    collect: dict[str, set[str]] | None = None,
) -> int:
    """Re-sync every key in the source's change log bound for ``target``; keys re-synced.

    With ``collect``, the keys re-synced are added to it, per table name.
    """
    by_name = {t.name: t for t in tables}
    types = key_types if key_types is not None else {t.name: key_type(source, t) for t in tables}
    total = 0
    while True:
        with source.transaction():
            rows = source.execute(fence.NEXT_CHANGES, (target_name, batch)).fetchall()
            if not rows:
                return total
            grouped: dict[str, set[str]] = {}
            for _, tbl, key in rows:
                grouped.setdefault(tbl, set()).add(key)
            for tbl, keys in grouped.items():
                table = by_name.get(tbl)
                if table is not None:
                    resync_keys(source, target, table, types[tbl], sorted(keys))
                    total += len(keys)
                    if collect is not None:
                        collect.setdefault(tbl, set()).update(keys)
            # Delete exactly what was processed: a change row invisible now (its writer had not
            # committed) stays for the next pass. A "done up to id N" mark would skip it.
            source.execute(fence.DELETE_CHANGES, ([r[0] for r in rows],))
        if on_batch is not None:
            on_batch(total)


@dataclass(frozen=True)
class Fingerprint:
    """Row count and an order-independent checksum of one range on one server."""

    rows: int
    checksum: int


def _bounds(moves: Sequence[Move]) -> tuple[list[str], dict[int, int]]:
    """``width_bucket`` thresholds covering ``moves`` and a bucket → move index map: each
    move's start and end in circle order (moves that touch repeat the bound, leaving an empty
    bucket between them), so the moves' rows are exactly those in odd buckets."""
    thresholds: list[str] = []
    bucket_of: dict[int, int] = {}
    for index in sorted(range(len(moves)), key=lambda i: moves[i].start):
        move = moves[index]
        thresholds.append(move.start_hex)
        bucket_of[len(thresholds)] = index  # width_bucket numbers [t[i-1], t[i]) as i
        if move.end_hex is not None:
            thresholds.append(move.end_hex)
    return thresholds, bucket_of


def _per_move(
    conn: Conn, table: TableSpec, moves: Sequence[Move], aggregates: sql.Composable
) -> list[tuple[int, ...]]:
    """Aggregates over each move's rows in one scan of the table: each row's position hashed
    and placed among the moves' bounds by bisection (:func:`shardctl.ring.sql.bucketed`); the
    aggregates are computed over the moves' rows only. For a table without the ring-position
    index."""
    thresholds, bucket_of = _bounds(moves)
    bucket = sql.SQL("pg_catalog.width_bucket({}, %(bounds)s::uuid[])").format(bucketed(table.key))
    query = sql.SQL(
        "SELECT {bucket} AS b, {aggregates} FROM {table} t "
        "WHERE pg_catalog.mod({bucket}, 2) = 1 GROUP BY b"
    ).format(bucket=bucket, aggregates=aggregates, table=sql.Identifier(table.name))
    result: list[tuple[int, ...]] = [(0, 0) for _ in moves]
    for found, *values in conn.execute(query, {"bounds": thresholds}):
        move = bucket_of.get(found)
        if move is not None:
            result[move] = tuple(int(v) for v in values)
    return result


def _per_range(
    conn: Conn, table: TableSpec, moves: Sequence[Move], aggregates: sql.Composable
) -> list[tuple[int, ...]]:
    """Aggregates over each move's rows, one ``SELECT … WHERE`` :func:`range_predicate` per
    move joined by ``UNION ALL``: with the ring-position index each is an index range scan, so
    only the moving rows are read and none has its position hashed (the index holds it).
    Without the index each branch would be a full scan: use :func:`_per_move` then."""
    if not moves:
        return []
    branches = [
        sql.SQL("SELECT {i}, {aggregates} FROM {table} t WHERE {where}").format(
            i=sql.Literal(i),
            aggregates=aggregates,
            table=sql.Identifier(table.name),
            where=range_predicate(table.key, move.start_hex, move.end_hex),
        )
        for i, move in enumerate(moves)
    ]
    result: list[tuple[int, ...]] = [(0, 0) for _ in moves]
    for index, *values in conn.execute(sql.SQL(" UNION ALL ").join(branches)):
        result[int(index)] = tuple(int(v) for v in values)
    return result


WHOLE_SCAN_SHARE = 0.5
"""At planning, a source whose moving ranges cover at least this share of what it owns (a
leaving shard: all of it) is counted by one full scan, which needs no index and so runs while
the indexes are built; an index range scan per move reads fewer rows only when few move."""


def scan_whole(moves: Sequence[Move], owned: float) -> bool:
    """Whether ``moves`` (the ranges of one server) are best counted by one full scan: they
    cover at least :data:`WHOLE_SCAN_SHARE` of ``owned``, the share of the circle the server
    holds."""
    return bool(moves) and sum(m.share for m in moves) >= WHOLE_SCAN_SHARE * owned


def fingerprints(conn: Conn, table: TableSpec, moves: Sequence[Move]) -> list[Fingerprint]:
    """Count and checksum the rows of each move's range on one server: an index range scan
    per move (the ring-position index exists from capture to clean-up), so rows that stay are
    not read and no row's position is hashed again). Without the index (dropped by hand),
    one full scan. (Even for a leaving shard, whose every row moves, the range scans were
    faster than one scan: 0.4 to 1.3 s against 0.9 to 2.9 s for 192k rows, load 8 to 9.)"""
    per = _per_range if has_position_index(conn, table) else _per_move
    return [Fingerprint(r[0], r[1]) for r in per(conn, table, moves, digest.CHECKSUM)]


SIZE = sql.SQL("count(*), coalesce(sum(pg_catalog.pg_column_size(t.*)), 0)")
"""Two aggregates over rows aliased ``t``: their count and their stored bytes."""


def sizes(
    conn: Conn, table: TableSpec, moves: Sequence[Move], *, indexed: bool = False
) -> list[tuple[int, int]]:
    """Exact rows and stored bytes of each move's range on one server: an index range scan
    per move when ``indexed`` (the ring-position index is valid), else one full scan hashing
    every row's position."""
    if indexed:
        return [(r[0], r[1]) for r in _per_range(conn, table, moves, SIZE)]
    return [(r[0], r[1]) for r in _per_move(conn, table, moves, SIZE)]


def differing_keys(
    source: Conn, target: Conn, table: TableSpec, where: sql.Composable
) -> list[str]:
    """Keys of the rows matching ``where`` that differ between source and target (or exist on
    one only)."""
    return digest.differing_keys(
        digest.row_hashes(source, table, where), digest.row_hashes(target, table, where)
    )


@dataclass(frozen=True)
class Drained:
    """A final catch-up: keys re-synced, and those still differing afterwards."""

    resynced: int
    mismatched: list[str]


def drain_and_check(
    source: Conn,
    target: Conn,
    target_name: str,
    tables: Sequence[TableSpec],
    *,
    key_types: dict[str, str] | None = None,
) -> Drained:
    """Drain the change log, then compare every key it named, row by row, on both sides."""
    types = key_types if key_types is not None else {t.name: key_type(source, t) for t in tables}
    touched: dict[str, set[str]] = {}
    resynced = drain(source, target, target_name, tables, key_types=types, collect=touched)
    mismatched: list[str] = []
    for table in tables:
        keys = sorted(touched.get(table.name, ()))
        if keys:
            differ = differing_keys(source, target, table, keys_in(table, types[table.name], keys))
            mismatched += [f"{table.name}:{k}" for k in differ]
    return Drained(resynced, mismatched)


def delete_ranges(conn: Conn, table: TableSpec, spans: Sequence[Span], *, batch: int) -> int:
    """Delete the rows in ``spans``, at most ``batch`` of them, in one statement (trusted:
    bypasses the fence); rows deleted."""
    rows = sql.SQL("SELECT ctid FROM ({}) s LIMIT {}").format(
        in_spans(table, spans, "ctid"), sql.Literal(batch)
    )
    with conn.transaction():
        trusted_writes(conn)
        return conn.execute(
            sql.SQL("DELETE FROM {} WHERE ctid = ANY(ARRAY({}))").format(
                sql.Identifier(table.name), rows
            )
        ).rowcount
