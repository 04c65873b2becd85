"""The load test and the bulk loader, both through :class:`~shardctl.router.Router`.

:func:`run_load` is the seed's load test: ``workers`` threads share one Router and run a mix of
inserts, point reads, updates and deletes on ``users`` until a duration, an op count or a stop
event ends them; the report has throughput, success rate and latency percentiles per op type.
Each worker owns the keys it inserts (fresh uuid4s), so with a :class:`~shardctl.ledger.Ledger`
the expected final state of every key is well defined (see :mod:`shardctl.ledger`).

:func:`bulk_load` fills ``users`` through COPY: keys are made here, grouped by their ring owner,
and streamed by one COPY per shard, all shards in parallel, in committed chunks.
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Literal

import psycopg
from psycopg import sql

from shardctl.errors import UsageError
from shardctl.ledger import COLUMNS, Ledger, Value
from shardctl.router import Prefer, Router
from shardctl.text import first_line

TABLE = "users"
OPS = ("insert", "read", "update", "delete")
Op = Literal["insert", "read", "update", "delete"]


@dataclass(frozen=True)
class Mix:
    """Relative weights of the op types."""

    insert: int = 30
    read: int = 40
    update: int = 20
    delete: int = 10

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``insert=30,read=40,update=20,delete=10`` (omitted ops get 0)."""
        weights = dict.fromkeys(OPS, 0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, number = part.partition("=")
            if not sep or name.strip() not in weights or not number.strip().isdigit():
                raise UsageError(
                    f"--mix: expected op=weight pairs like insert=30,read=40, got {part!r}"
                )
            weights[name.strip()] = int(number)
        if weights["insert"] == 0 or sum(weights.values()) == 0:
            raise UsageError("--mix: the insert weight must be above 0 (workers make their keys)")
        return cls(**weights)

    def weights(self) -> list[int]:
        """Weights in :data:`OPS` order."""
        return [self.insert, self.read, self.update, self.delete]


@dataclass(frozen=True)
class LoadConfig:
    """What :func:`run_load` does."""

    workers: int = 8
    duration: float | None = 10.0
    """Seconds to run (None: until ``ops`` or the stop event)."""
    ops: int | None = None
    """Total ops over all workers (None: until ``duration`` or the stop event)."""
    mix: Mix = field(default_factory=Mix)
    read_from: Prefer = "primary"
    ledger: Path | None = None
    seed: int | None = None


@dataclass(frozen=True)
class OpSummary:
    """Counts and latencies of one op type (or of all, as ``total``)."""

    op: str
    ops: int
    ok: int
    failed: int
    success_rate: float
    throughput: float
    """Successful ops per second."""
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    """Failed ops by error, first line of the message."""


@dataclass(frozen=True)
class LoadReport:
    """What a load run did."""

    workers: int
    seconds: float
    ops: int
    ok: int
    failed: int
    success_rate: float
    throughput: float
    per_op: list[OpSummary]
    total: OpSummary
    anomalies: int
    """Acknowledged updates/deletes/primary reads that found no row where one was expected."""
    epochs: tuple[int, int]
    """The ring epoch at the start and at the end."""
    ledger: str | None = None


@dataclass(frozen=True)
class LoadProgress:
    """A snapshot while running."""

    ops: int
    failed: int
    seconds: float
    duration: float | None
    target_ops: int | None


@dataclass
class _Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    failures: dict[str, list[str]] = field(default_factory=lambda: {op: [] for op in OPS})
    anomalies: int = 0
    done: int = 0


class _Worker:
    """One load thread: owns the keys it inserts, and never touches a key after a failure."""

    def __init__(
        self,
        index: int,
        router: Router,
        config: LoadConfig,
        ledger: Ledger | None,
        budget: Callable[[], bool],
        key_column: str,
    ) -> None:
        self.index = index
        self.router = router
        self.config = config
        self.ledger = ledger
        self.budget = budget
        self.rng = random.Random(None if config.seed is None else config.seed * 1000 + index)
        self.stats = _Stats()
        self.live: list[uuid.UUID] = []
        self.made = 0
        table, key = sql.Identifier(TABLE), sql.Identifier(key_column)
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)
        sets = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in COLUMNS
        )
        self.q_insert = sql.SQL(
            "INSERT INTO {t} ({k}, {cols}) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT ({k}) DO UPDATE SET {sets}, updated_at = now()"
        ).format(t=table, k=key, cols=cols, sets=sets)
        self.q_read = sql.SQL("SELECT {cols} FROM {t} WHERE {k} = %s").format(
            t=table, k=key, cols=cols
        )
        self.q_update = sql.SQL(
            "UPDATE {t} SET {a} = %s, {b} = %s, {c} = %s, updated_at = now() WHERE {k} = %s"
        ).format(t=table, k=key, a=sql.Identifier(COLUMNS[0]), b=sql.Identifier(COLUMNS[1]),
                 c=sql.Identifier(COLUMNS[2]))  # fmt: skip
        self.q_delete = sql.SQL("DELETE FROM {t} WHERE {k} = %s").format(t=table, k=key)

    def value(self) -> Value:
        token = f"{self.rng.getrandbits(48):012x}"
        self.made += 1
        return {
            "first_name": f"w{self.index}-{self.made}",
            "last_name": token,
            "email": f"{token}@load.test",
        }

    def run(self, stop: threading.Event) -> None:
        weights = self.config.mix.weights()
        while not stop.is_set() and self.budget():
            op: str = self.rng.choices(OPS, weights)[0]
            if op != "insert" and not self.live:
                op = "insert"
            self.one(op)
            self.stats.done += 1

    def one(self, op: str) -> None:
        key = uuid.uuid4() if op == "insert" else self.live[self.rng.randrange(len(self.live))]
        value = self.value() if op in ("insert", "update") else None
        started = time.perf_counter()
        try:
            rows = self.call(op, key, value)
        except Exception as exc:  # every failure is counted; none stops a worker
            elapsed = time.perf_counter() - started
            self.stats.failures[op].append(f"{type(exc).__name__}: {first_line(exc)}")
            self.stats.latencies[op].append(elapsed)
            if op != "read":
                if op != "insert":
                    self._retire(key)
                if self.ledger is not None:
                    self.ledger.record(self.index, key, op, value, ok=False)
            return
        self.stats.latencies[op].append(time.perf_counter() - started)
        if op == "insert":
            self.live.append(key)
        elif op == "delete":
            self._retire(key)
        if op != "insert" and rows == 0 and (op != "read" or self.config.read_from == "primary"):
            self.stats.anomalies += 1
        if op != "read" and self.ledger is not None:
            self.ledger.record(self.index, key, op, value, rows=rows)

    def call(self, op: str, key: uuid.UUID, value: Value | None) -> int:
        r = self.router
        if op == "read":
            return len(r.fetch(key, self.q_read, (key,), prefer=self.config.read_from))
        if op == "delete":
            return r.execute(key, self.q_delete, (key,))
        assert value is not None
        v = [value[c] for c in COLUMNS]
        if op == "insert":
            return r.execute(key, self.q_insert, (key, *v))
        return r.execute(key, self.q_update, (*v, key))

    def _retire(self, key: uuid.UUID) -> None:
        i = self.live.index(key)
        self.live[i] = self.live[-1]
        self.live.pop()


def run_load(
    router: Router,
    config: LoadConfig,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
    interval: float = 0.25,
    key_column: str | None = None,
) -> LoadReport:
    """Run the load test through ``router``; returns when time, ops or ``stop`` say so."""
    if config.workers < 1:
        raise UsageError("--workers must be at least 1")
    if config.duration is None and config.ops is None and stop is None:
        raise UsageError("give a duration, an op count, or both")
    key_column = key_column or _key_column(router)
    stop = stop or threading.Event()
    epoch_start = router.epoch
    counter = itertools.count()
    limit = config.ops

    def budget() -> bool:
        return limit is None or next(counter) < limit

    ledger = (
        Ledger(config.ledger, table=TABLE, key=key_column) if config.ledger is not None else None
    )
    workers = [
        _Worker(i, router, config, ledger, budget, key_column) for i in range(config.workers)
    ]
    threads = [
        threading.Thread(target=w.run, args=(stop,), name=f"load-{w.index}", daemon=True)
        for w in workers
    ]
    started = time.monotonic()
    deadline = None if config.duration is None else started + config.duration
    try:
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
            for thread in threads:
                thread.join(timeout=interval / len(threads))
            if progress is not None:
                progress(_snapshot(workers, started, config))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if ledger is not None:
            ledger.close()
    seconds = time.monotonic() - started
    if progress is not None:
        progress(_snapshot(workers, started, config))
    return _report(workers, seconds, config, (epoch_start, router.epoch))


def _key_column(router: Router) -> str:
    for table in router.topology.spec.tables:
        if table.name == TABLE:
            return table.key
    raise UsageError(f"{router.topology.path}: the load test needs a sharded table {TABLE!r}")


def _snapshot(workers: list[_Worker], started: float, config: LoadConfig) -> LoadProgress:
    return LoadProgress(
        ops=sum(w.stats.done for w in workers),
        failed=sum(len(f) for w in workers for f in w.stats.failures.values()),
        seconds=time.monotonic() - started,
        duration=config.duration,
        target_ops=config.ops,
    )


def _report(
    workers: list[_Worker], seconds: float, config: LoadConfig, epochs: tuple[int, int]
) -> LoadReport:
    per_op = []
    every: list[float] = []
    all_failures: list[str] = []
    for op in OPS:
        latencies = [x for w in workers for x in w.stats.latencies[op]]
        failures = [x for w in workers for x in w.stats.failures[op]]
        every += latencies
        all_failures += failures
        per_op.append(_summary(op, latencies, failures, seconds))
    total = _summary("total", every, all_failures, seconds)
    return LoadReport(
        workers=config.workers,
        seconds=seconds,
        ops=total.ops,
        ok=total.ok,
        failed=total.failed,
        success_rate=total.success_rate,
        throughput=total.throughput,
        per_op=per_op,
        total=total,
        anomalies=sum(w.stats.anomalies for w in workers),
        epochs=epochs,
        ledger=None if config.ledger is None else str(config.ledger),
    )


def _summary(op: str, latencies: list[float], failures: list[str], seconds: float) -> OpSummary:
    ops = len(latencies)
    failed = len(failures)
    ms = sorted(x * 1000 for x in latencies)
    errors: dict[str, int] = {}
    for failure in failures:
        errors[failure] = errors.get(failure, 0) + 1
    return OpSummary(
        op=op,
        ops=ops,
        ok=ops - failed,
        failed=failed,
        success_rate=(ops - failed) / ops if ops else 1.0,
        throughput=(ops - failed) / seconds if seconds > 0 else 0.0,
        mean_ms=statistics.fmean(ms) if ms else 0.0,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=ms[-1] if ms else 0.0,
        errors=errors,
    )


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of sorted values (nearest rank); 0 for none."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[min(len(ordered), int(rank)) - 1]


# ------------------------------------------------------------------ bulk


FIRST = ("ada", "alan", "grace", "edsger", "barbara", "donald", "frances", "ken", "radia", "tim")
LAST = ("lovelace", "turing", "hopper", "dijkstra", "liskov", "knuth", "allen", "thompson")


@dataclass(frozen=True)
class BulkReport:
    """What :func:`bulk_load` wrote."""

    rows: int
    seconds: float
    rows_per_second: float
    per_shard: dict[str, int]
    epoch: int


def generate(count: int, *, seed: int | None = None) -> Iterator[tuple[str, str, str, str]]:
    """``count`` fresh users as (uuid, first_name, last_name, email) text fields."""
    rng = random.Random(seed) if seed is not None else None
    for n in range(count):
        raw = rng.randbytes(16) if rng is not None else os.urandom(16)
        key = str(uuid.UUID(bytes=raw, version=4))
        first = FIRST[n % len(FIRST)]
        last = LAST[(n // len(FIRST)) % len(LAST)]
        yield key, first, last, f"{first}.{last}.{key[:8]}@example.test"


def bulk_load(
    router: Router,
    rows: int,
    *,
    chunk: int = 20_000,
    ledger: Path | None = None,
    seed: int | None = None,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> BulkReport:
    """Insert ``rows`` new users with one COPY stream per shard, in parallel, chunk by chunk.

    Keys are generated here and grouped by their ring owner; each chunk commits on its own, so
    an interruption leaves whole chunks. ``progress`` gets rows written per shard so far.
    """
    if rows < 1:
        raise UsageError("--rows must be at least 1")
    routing = router.routing
    key_column = _key_column(router)
    shards = list(routing.ring.nodes)
    queues: dict[str, Queue[list[tuple[str, str, str, str]] | None]] = {
        s: Queue(maxsize=4) for s in shards
    }
    written = dict.fromkeys(shards, 0)
    errors: list[BaseException] = []
    book = Ledger(ledger, table=TABLE, key=key_column) if ledger is not None else None
    copy_sql = sql.SQL("COPY {} ({}, {}) FROM STDIN").format(
        sql.Identifier(TABLE),
        sql.Identifier(key_column),
        sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS),
    )

    def stream(shard: str) -> None:
        queue = queues[shard]
        try:
            while (batch := queue.get()) is not None:
                data = "".join(f"{k}\t{f}\t{la}\t{e}\n" for k, f, la, e in batch)

                def copy(conn: psycopg.Connection[Any], payload: str = data) -> None:
                    with conn.transaction(), conn.cursor().copy(copy_sql) as cp:
                        cp.write(payload)

                router.on_shard(shard, copy)
                written[shard] += len(batch)
                if book is not None:
                    book.record_many(
                        0, ((k, {"first_name": f, "last_name": la, "email": e})
                            for k, f, la, e in batch)
                    )  # fmt: skip
        except BaseException as exc:  # surfaced by the producer, which stops at once
            errors.append(exc)
            while queue.get() is not None:  # drain so the producer never blocks on us
                pass

    threads = [threading.Thread(target=stream, args=(s,), name=f"bulk-{s}") for s in shards]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    pending: dict[str, list[tuple[str, str, str, str]]] = {s: [] for s in shards}
    try:
        for n, user in enumerate(generate(rows, seed=seed), 1):
            owner = routing.owner(user[0])
            pending[owner].append(user)
            if len(pending[owner]) >= chunk:
                queues[owner].put(pending[owner])
                pending[owner] = []
            if errors:
                break
            if progress is not None and n % chunk == 0:
                progress(dict(written))
        for shard in shards:
            if pending[shard] and not errors:
                queues[shard].put(pending[shard])
    finally:
        for shard in shards:
            queues[shard].put(None)
        for thread in threads:
            thread.join()
        if book is not None:
            book.close()
    if errors:
        raise errors[0]
    seconds = time.monotonic() - started
    if progress is not None:
        progress(dict(written))
    total = sum(written.values())
    return BulkReport(total, seconds, total / seconds if seconds else 0.0, written, routing.epoch)
