"""The bulk loader: fills the target through COPY. Keys are made here, grouped by their ring
owner, and streamed by one COPY per shard, all shards in parallel, in committed chunks."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import Queue
from typing import Any

import psycopg
from psycopg import sql

from shardctl.errors import UsageError
from shardctl.router.router import Router
from shardctl.util import fanout
from shardctl.workload.ledger import Ledger
from shardctl.workload.target import Target, target


@dataclass(frozen=True)
class BulkReport:
    """What :func:`bulk_load` wrote."""

    rows: int
    seconds: float
    rows_per_second: float
    per_shard: dict[str, int]
    epoch: int


Row = tuple[str, ...]
"""A generated row as text: the key, then one field per :attr:`Target.columns`."""


def generate(table: Target, count: int, *, seed: int | None = None) -> Iterator[Row]:
    """``count`` fresh rows of ``table`` (random keys; reproducible with a ``seed``)."""
    rng = random.Random(seed) if seed is not None else None
    for _ in range(count):
        raw = rng.randbytes(16) if rng is not None else os.urandom(16)
        token = int.from_bytes(raw[10:])
        yield table.new_key(raw), *(c.sample(token) for c in table.columns)


def copy_statement(table: Target) -> sql.Composed:
    """``COPY table (key, columns...) FROM STDIN``, in the order :func:`generate` makes rows."""
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.table),
        sql.SQL(", ").join(map(sql.Identifier, [table.key, *(c.name for c in table.columns)])),
    )


def copy_text(rows: Sequence[Row]) -> str:
    """Rows in COPY's text format (generated fields hold no tab, newline or backslash)."""
    return "".join("\t".join(row) + "\n" for row in rows)


def bulk_load(
    router: Router,
    rows: int,
    *,
    chunk: int = 20_000,
    ledger: Path | None = None,
    seed: int | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
    table: str | None = None,
) -> BulkReport:
    """Insert ``rows`` new rows into the declared ``table`` (default: the first) with one COPY
    stream per shard, in parallel, chunk by chunk.

    Keys are generated here and grouped by their ring owner; each chunk commits on its own, so
    an interruption leaves whole chunks. ``progress`` gets rows written per shard so far.
    """
    if rows < 1:
        raise UsageError("--rows must be at least 1")
    routing = router.routing
    into = target(router, table)
    book = Ledger(ledger, into.header) if ledger is not None else None
    started = time.monotonic()
    streams = _Streams(router, into, list(routing.ring.nodes), book)
    try:
        streams.feed(generate(into, rows, seed=seed), routing.owner, chunk, progress)
    finally:
        streams.close()
        if book is not None:
            book.close()
    if streams.errors:
        raise streams.errors[0]
    seconds = time.monotonic() - started
    if progress is not None:
        progress(dict(streams.written))
    total = sum(streams.written.values())
    return BulkReport(
        total, seconds, total / seconds if seconds else 0.0, streams.written, routing.epoch
    )


class _Streams:
    """One COPY stream per shard, each on its own thread, fed chunks of rows through a short
    queue; the first error stops the feeding (:attr:`errors`)."""

    def __init__(
        self, router: Router, into: Target, shards: list[str], book: Ledger | None
    ) -> None:
        self.router = router
        self.names = [c.name for c in into.columns]
        self.copy_sql = copy_statement(into)
        self.book = book
        self.queues: dict[str, Queue[list[Row] | None]] = {s: Queue(maxsize=4) for s in shards}
        self.written = dict.fromkeys(shards, 0)
        """Rows committed per shard so far."""
        self.errors: list[BaseException] = []
        self.running = fanout.Background(
            {s: partial(self.stream, s) for s in shards}, prefix="bulk"
        )

    def feed(
        self,
        rows: Iterable[Row],
        owner: Callable[[str], str],
        chunk: int,
        progress: Callable[[dict[str, int]], None] | None,
    ) -> None:
        """Hand ``rows`` to their owner's stream, ``chunk`` rows at a time, until done or some
        stream failed."""
        pending: dict[str, list[Row]] = {s: [] for s in self.queues}
        for n, row in enumerate(rows, 1):
            shard = owner(row[0])
            pending[shard].append(row)
            if len(pending[shard]) >= chunk:
                self.queues[shard].put(pending[shard])
                pending[shard] = []
            if self.errors:
                return
            if progress is not None and n % chunk == 0:
                progress(dict(self.written))
        for shard, left in pending.items():
            if left and not self.errors:
                self.queues[shard].put(left)

    def close(self) -> None:
        """End every stream after what it was given, and wait for them."""
        for queue in self.queues.values():
            queue.put(None)
        self.running.wait()

    def stream(self, shard: str) -> None:
        """Copy the chunks the queue of ``shard`` brings, one transaction each."""
        queue = self.queues[shard]
        try:
            while (batch := queue.get()) is not None:
                data = copy_text(batch)

                def copy(conn: psycopg.Connection[Any], payload: str = data) -> None:
                    with conn.transaction(), conn.cursor().copy(self.copy_sql) as cp:
                        cp.write(payload)

                self.router.on_shard(shard, copy)
                self.written[shard] += len(batch)
                if self.book is not None:
                    self.book.record_many(
                        0, ((r[0], dict(zip(self.names, r[1:], strict=True))) for r in batch)
                    )
        except BaseException as exc:  # surfaced by the producer, which stops at once
            self.errors.append(exc)
            while queue.get() is not None:  # drain so the producer never blocks on us
                pass
