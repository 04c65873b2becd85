"""The load test and the bulk loader, both through :class:`~shardctl.router.router.Router`.

Both write the sharded table the topology declares (the first of ``tables``, or the one
named): its name and key come from the topology, its columns from the catalog
(``information_schema``) when the run starts, as a :class:`Target`. With the example
``schema.sql`` that is ``users``, keyed by a uuid ``id``, with three text columns.

:func:`run_load` is the seed's load test: virtual users (by default one per worker) run a mix
of inserts, point reads, updates and deletes on the target, one op at a time each, until a
duration, an op count or a stop event ends them; ``workers`` threads sharing one Router serve
them from one first-in first-out queue, so the workers, not the users, bound the connections.
The report has throughput, success rate and latency percentiles (response times, the wait for a
worker included) per op type. Each user owns the keys it inserts (fresh random keys), so with a
:class:`~shardctl.workload.ledger.Ledger` the expected final state of every key is well defined (see
:mod:`shardctl.workload.ledger`). :func:`run_steps` runs it for several user counts: the seed's
table.

:func:`bulk_load` fills the target through COPY: keys are made here, grouped by their ring
owner, and streamed by one COPY per shard, all shards in parallel, in committed chunks.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Literal, TypeVar

import psycopg
from psycopg import sql

from shardctl.config.topology import Topology
from shardctl.errors import DatabaseUnavailable, UsageError
from shardctl.router.router import Prefer, Router
from shardctl.util.text import first_line
from shardctl.workload.ledger import Header, Ledger, Value

T = TypeVar("T")
OPS = ("insert", "read", "update", "delete")
OVERRUN = 0.5
"""Seconds past ``--duration`` an op still running (on a frozen node) may take before the
Router cuts it short: the run ends within a second of its duration."""
Op = Literal["insert", "read", "update", "delete"]

TEXT_TYPES = ("text", "character varying")
INTEGER_BITS = {"smallint": 15, "integer": 31, "bigint": 63}
KEY_TYPES = ("uuid", *TEXT_TYPES, "integer", "bigint")
STAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")
HEADROOM = 10
"""Connections per server left to everything but the load test (shardctl itself, psql, ...)."""

COLUMNS_QUERY = """
SELECT column_name::text, data_type::text, character_maximum_length::int,
       is_nullable = 'YES', column_default IS NOT NULL,
       is_identity = 'YES' OR is_generated <> 'NEVER'
  FROM information_schema.columns
 WHERE table_schema = pg_catalog.current_schema() AND table_name = %s
 ORDER BY ordinal_position
"""


@dataclass(frozen=True)
class Column:
    """A value column the load test writes: text or integer, as the catalog describes it."""

    name: str
    data_type: str
    max_length: int | None = None

    def sample(self, token: int) -> str:
        """A value for this column made from a random ``token``, as text (ledgers hold text)."""
        if self.data_type in INTEGER_BITS:
            return str(token % (1 << INTEGER_BITS[self.data_type]))
        text = f"{self.name}-{token:012x}"
        return text[: self.max_length] if self.max_length else text


@dataclass(frozen=True)
class Target:
    """The sharded table a load run writes: name and key from the topology, columns from the
    catalog."""

    table: str
    key: str
    key_type: str
    columns: tuple[Column, ...]
    """Text and integer columns besides the key: every write sets all of them."""
    stamps: tuple[str, ...] = ()
    """Timestamp columns with no default, taken as last-modified stamps: updates set now()."""

    @property
    def header(self) -> Header:
        """What a ledger of writes to this table records about it."""
        return Header(self.table, self.key, self.key_type, tuple(c.name for c in self.columns))

    def new_key(self, raw: bytes) -> str:
        """A key made from 16 random bytes, as text."""
        if self.key_type in INTEGER_BITS:
            return str(int.from_bytes(raw[:8]) >> (64 - INTEGER_BITS[self.key_type]))
        return str(uuid.UUID(bytes=raw, version=4))

    def value(self, token: int) -> Value:
        """A full row value (every column in :attr:`columns`) made from a random ``token``."""
        return {c.name: c.sample(token) for c in self.columns}


def on_any_shard(router: Router, work: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``work`` on a node of the first shard that answers (a replica first): any node knows
    the schema and the settings, and one shard in trouble must not stop the test."""
    shards = [node.shard for node in router.topology.primaries()]
    for shard in shards[:-1]:
        try:
            return router.on_shard(shard, work, prefer="replica")
        except DatabaseUnavailable:
            continue
    return router.on_shard(shards[-1], work, prefer="replica")


def target(router: Router, table: str | None = None) -> Target:
    """The table the load test writes (``table``, else the first declared), read from the
    catalog of one primary; UsageError when it is missing or cannot be filled."""
    tables = router.topology.spec.tables
    spec = next((t for t in tables if table is None or t.name == table), None)
    if spec is None:
        wanted = f"a sharded table {table!r}" if table else "a sharded table"
        raise UsageError(f"{router.topology.path}: the load test needs {wanted} (see tables:)")

    def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(COLUMNS_QUERY, (spec.name,)).fetchall()

    found = on_any_shard(router, read)
    if not found:
        raise UsageError(f"table {spec.name} does not exist (is the schema applied?)")
    key_type = next((str(r[1]) for r in found if r[0] == spec.key), None)
    if key_type is None:
        raise UsageError(f"table {spec.name} has no key column {spec.key!r}")
    if key_type not in KEY_TYPES:
        raise UsageError(
            f"the load test makes keys of type {', '.join(KEY_TYPES)}; "
            f"{spec.name}.{spec.key} is {key_type}"
        )
    columns: list[Column] = []
    stamps: list[str] = []
    for name, data_type, length, nullable, has_default, generated in found:
        if name == spec.key or generated:
            continue
        if data_type in TEXT_TYPES or data_type in INTEGER_BITS:
            columns.append(Column(name, data_type, length))
        elif data_type in STAMP_TYPES and not has_default and nullable:
            stamps.append(name)
        elif not nullable and not has_default:
            raise UsageError(
                f"the load test cannot fill {spec.name}.{name} ({data_type}, NOT NULL without "
                "a default); it writes text and integer columns"
            )
    if not columns:
        raise UsageError(
            f"the load test needs a text or integer column besides the key in {spec.name}"
        )
    return Target(spec.name, spec.key, key_type, tuple(columns), tuple(stamps))


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
    """Worker threads: ops in flight at once, and connections per node at most."""
    users: int | None = None
    """Virtual users the workers serve, each one op at a time (None: one per worker)."""
    duration: float | None = 10.0
    """Seconds to run (None: until ``ops`` or the stop event)."""
    ops: int | None = None
    """Total ops over all workers (None: until ``duration`` or the stop event)."""
    mix: Mix = field(default_factory=Mix)
    read_from: Prefer = "primary"
    ledger: Path | None = None
    seed: int | None = None
    table: str | None = None
    """The declared table to write (None: the first in the topology's ``tables``)."""


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
    users: int
    """Virtual users (concurrent users, in the seed's table): the workers when not given."""
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
    warm_up: int = 0
    """Inserts that gave new virtual users their first key before the run (not in ``ops``;
    in the ledger)."""


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
    """What one worker thread measured (for every user it served)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    failures: dict[str, list[str]] = field(default_factory=lambda: {op: [] for op in OPS})
    anomalies: int = 0
    done: int = 0


class VirtualUser:
    """One virtual user: owns the keys it inserts, and never touches a key after a failure.

    A user does one op at a time (closed loop, no think time): its next op is ready as soon as
    the last one returned, and waits in the queue until a worker thread is free. A user with no
    key inserts, whatever the mix says (new virtual users get one in :func:`run_load`'s warm-up).
    """

    __slots__ = ("index", "live", "ready_since", "rng")

    def __init__(self, index: int, seed: int | None) -> None:
        self.index = index
        self.rng = random.Random(None if seed is None else seed * 1_000_003 + index)
        self.live: list[str] = []
        self.ready_since = 0.0

    def retire(self, key: str) -> None:
        """Forget ``key`` (deleted, or its state unknown after a failure)."""
        i = self.live.index(key)
        self.live[i] = self.live[-1]
        self.live.pop()


class _Statements:
    """The four statements of the mix on ``target``, composed and rendered once.

    Rendered to bytes with a connection's quoting rules: psycopg would otherwise render the
    composed statement again on every execute, some 45 us of CPU per insert.
    """

    def __init__(self, target: Target, conn: psycopg.Connection[Any]) -> None:
        table, key = sql.Identifier(target.table), sql.Identifier(target.key)
        names = [c.name for c in target.columns]
        cols = sql.SQL(", ").join(map(sql.Identifier, names))
        # Updates set every value column, and stamp the last-modified columns, as an upsert does.
        sets = sql.SQL(", ").join(
            [
                *(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in names),
                *(sql.SQL("{} = now()").format(sql.Identifier(c)) for c in target.stamps),
            ]
        )
        excluded = sql.SQL(", ").join(
            [
                *(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in names),
                *(sql.SQL("{} = now()").format(sql.Identifier(c)) for c in target.stamps),
            ]
        )
        marks = sql.SQL(", ").join(sql.Placeholder() * (len(names) + 1))
        self.insert = (
            sql.SQL(
                "INSERT INTO {t} ({k}, {cols}) VALUES ({marks})"
                " ON CONFLICT ({k}) DO UPDATE SET {ex}"
            )
            .format(t=table, k=key, cols=cols, marks=marks, ex=excluded)
            .as_bytes(conn)
        )
        self.read = (
            sql.SQL("SELECT {cols} FROM {t} WHERE {k} = %s")
            .format(t=table, k=key, cols=cols)
            .as_bytes(conn)
        )
        self.update = (
            sql.SQL("UPDATE {t} SET {sets} WHERE {k} = %s")
            .format(t=table, k=key, sets=sets)
            .as_bytes(conn)
        )
        self.delete = (
            sql.SQL("DELETE FROM {t} WHERE {k} = %s").format(t=table, k=key).as_bytes(conn)
        )


class _Worker:
    """One worker thread: takes the user that has waited longest, runs its next op, puts it
    back. Workers are what hold connections, so they bound them, whatever the user count."""

    def __init__(
        self,
        router: Router,
        config: LoadConfig,
        ledger: Ledger | None,
        budget: Callable[[], bool],
        target: Target,
        statements: _Statements,
    ) -> None:
        self.router = router
        self.config = config
        self.ledger = ledger
        self.budget = budget
        self.target = target
        self.q = statements
        self.weights = config.mix.weights()
        self.stats = _Stats()

    def run(self, ready: deque[VirtualUser], stop: threading.Event, until: float | None) -> None:
        """Serve users from ``ready`` until ``stop`` or the op budget says so; an op still
        running at ``until`` is cut short by the Router."""
        with self.router.ending_by(until) if until is not None else nullcontext():
            while not stop.is_set() and self.budget():
                # Never empty: there are at least as many users as workers, and each worker
                # puts its user back before it takes the next (deque appends, pops are atomic).
                user = ready.popleft()
                self.one(user)
                self.stats.done += 1
                user.ready_since = time.perf_counter()
                ready.append(user)

    def warm(self, fresh: deque[VirtualUser], stop: threading.Event, until: float | None) -> None:
        """One insert for each user of ``fresh`` (they come with no key), until none is left,
        ``stop``, or ``until`` (an insert still running then is cut short by the Router)."""
        with self.router.ending_by(until + OVERRUN) if until is not None else nullcontext():
            while not stop.is_set() and (until is None or time.monotonic() < until):
                try:
                    user = fresh.popleft()
                except IndexError:
                    return
                user.ready_since = time.perf_counter()
                self.one(user, "insert")
                user.ready_since = time.perf_counter()
                self.stats.done += 1

    def one(self, user: VirtualUser, op: str | None = None) -> None:
        """One op of ``user`` (drawn from the mix unless given), its response time counted
        from when the user was ready."""
        if op is None:
            op = user.rng.choices(OPS, self.weights)[0]
        if op != "insert" and not user.live:
            op = "insert"
        if op == "insert":
            key = self.target.new_key(os.urandom(16))  # never seeded: reruns must not collide
        else:
            key = user.live[user.rng.randrange(len(user.live))]
        value = self.target.value(user.rng.getrandbits(48)) if op in ("insert", "update") else None
        try:
            rows = self.call(op, key, value)
        except Exception as exc:  # every failure is counted; none stops a worker
            self.stats.failures[op].append(f"{type(exc).__name__}: {first_line(exc)}")
            self.stats.latencies[op].append(time.perf_counter() - user.ready_since)
            if op != "read":
                if op != "insert":
                    user.retire(key)
                if self.ledger is not None:
                    self.ledger.record(user.index, key, op, value, ok=False)
            return
        self.stats.latencies[op].append(time.perf_counter() - user.ready_since)
        if op == "insert":
            user.live.append(key)
        elif op == "delete":
            user.retire(key)
        if op != "insert" and rows == 0 and (op != "read" or self.config.read_from == "primary"):
            self.stats.anomalies += 1
        if op != "read" and self.ledger is not None:
            self.ledger.record(user.index, key, op, value, rows=rows)

    def call(self, op: str, key: str, value: Value | None) -> int:
        """Run ``op`` through the Router; rows it touched (read: rows it found)."""
        r, q = self.router, self.q
        if op == "read":
            return len(r.fetch(key, q.read, (key,), prefer=self.config.read_from))
        if op == "delete":
            return r.execute(key, q.delete, (key,))
        assert value is not None
        v = [value[c.name] for c in self.target.columns]
        if op == "insert":
            return r.execute(key, q.insert, (key, *v))
        return r.execute(key, q.update, (*v, key))


@dataclass(frozen=True)
class ConnectionLimit:
    """How many connections one Router may hold per node, and what sets it."""

    most: int
    source: str
    """What the limit comes from, for the message that refuses more: "the servers'
    max_connections" or "the poolers' max_client_conn"."""


def pooled_limit(topology: Topology) -> int | None:
    """The client connections one Router may hold per pooler when it reaches every node
    through its pooler: the smallest ``max_client_conn`` less :data:`HEADROOM`; None when some
    node has no pooler (the Router reaches that one directly: the servers' limit holds)."""
    most = []
    for node in topology.nodes:
        spec = topology.pooler(node.shard)
        if node.pooler_port is None or spec is None:
            return None
        most.append(spec.max_client_conn)
    return max(1, min(most) - HEADROOM) if most else None


def connection_limit(router: Router) -> ConnectionLimit:
    """How many connections one Router may hold per node. Through poolers on every node,
    :func:`pooled_limit`: a pooler admits ``max_client_conn`` clients on at most ``pool_size``
    server connections, which is what a pooler is for. Otherwise the servers'
    ``max_connections``, less the superuser's reserve and :data:`HEADROOM` for everyone else
    (read from a primary)."""
    if router.via == "pooler":
        pooled = pooled_limit(router.topology)
        if pooled is not None:
            return ConnectionLimit(pooled, "the poolers' max_client_conn")

    def read(conn: psycopg.Connection[Any]) -> tuple[int, int]:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    most, reserved = on_any_shard(router, read)
    return ConnectionLimit(max(1, most - reserved - HEADROOM), "the servers' max_connections")


def run_load(
    router: Router,
    config: LoadConfig,
    *,
    stop: threading.Event | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
    interval: float = 0.25,
    ledger: Ledger | None = None,
    crowd: list[VirtualUser] | None = None,
) -> LoadReport:
    """Run the load test through ``router``; returns when time, ops or ``stop`` (set by the
    caller, never here) say so.

    ``config.users`` virtual users (default: one per worker) share ``config.workers`` threads;
    a ``ledger`` given here is written to and left open (else ``config.ledger`` is opened).
    The users are the first of ``crowd`` (users of an earlier run, who keep their keys), made
    and added to it when it has too few. With ``config.users``, users with no key insert one
    first, before the measured run starts (``warm_up`` in the report).
    """
    if config.workers < 1:
        raise UsageError("--workers must be at least 1")
    if config.users is not None and config.users < 1:
        raise UsageError("--users must be at least 1")
    if config.duration is None and config.ops is None and stop is None:
        raise UsageError("give a duration, an op count, or both")
    users = config.users or config.workers
    width = min(config.workers, users)
    table = target(router, config.table)
    stop = stop or threading.Event()
    epoch_start = router.epoch
    counter = itertools.count()
    limit = config.ops

    def budget() -> bool:
        return limit is None or next(counter) < limit

    own = ledger is None and config.ledger is not None
    if own and config.ledger is not None:
        ledger = Ledger(config.ledger, table.header)
    statements = on_any_shard(router, lambda conn: _Statements(table, conn))
    workers = [_Worker(router, config, ledger, budget, table, statements) for _ in range(width)]
    crowd = [] if crowd is None else crowd
    crowd.extend(VirtualUser(i, config.seed) for i in range(len(crowd), users))
    ready = deque(crowd[:users])
    halt = threading.Event()  # the caller's stop, or the deadline: ``stop`` is only read
    warmed = 0
    if config.users is not None:
        # New virtual users first get a key each, outside the measured run: else a run with
        # many new users would measure mostly their first inserts, not the mix.
        warmed = _warm_up(router, config, ledger, table, statements, width, ready, stop)
    started = time.monotonic()
    now = time.perf_counter()
    for user in ready:
        user.ready_since = now
    deadline = None if config.duration is None else started + config.duration
    # An op still running at the end (a frozen node) is cut short soon after: --duration holds.
    cut_at = None if deadline is None else deadline + OVERRUN
    threads = [
        threading.Thread(target=w.run, args=(ready, halt, cut_at), name=f"load-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    try:
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                halt.set()
            for thread in threads:
                thread.join(timeout=interval / len(threads))
            if progress is not None:
                progress(_snapshot(workers, started, config))
    finally:
        halt.set()
        for thread in threads:
            thread.join()
        if own and ledger is not None:
            ledger.close()
    seconds = time.monotonic() - started
    if progress is not None:
        progress(_snapshot(workers, started, config))
    stats = [w.stats for w in workers]
    return report(
        stats, seconds, workers=width, users=users, epochs=(epoch_start, router.epoch),
        ledger=None if config.ledger is None else str(config.ledger), warm_up=warmed,
    )  # fmt: skip


def _warm_up(
    router: Router,
    config: LoadConfig,
    ledger: Ledger | None,
    table: Target,
    statements: _Statements,
    width: int,
    users: Iterable[VirtualUser],
    stop: threading.Event,
) -> int:
    """Give every user of ``users`` with no key one (an insert, in the ledger too), on
    ``width`` threads, for no longer than the run's duration (a node that stops answering must
    not hold the run up: users left without a key insert first in the run); returns the
    inserts acknowledged."""
    fresh = deque(u for u in users if not u.live)
    if not fresh:
        return 0
    until = None if config.duration is None else time.monotonic() + config.duration
    workers = [
        _Worker(router, config, ledger, lambda: True, table, statements) for _ in range(width)
    ]
    threads = [
        threading.Thread(target=w.warm, args=(fresh, stop, until), name=f"warm-{i}", daemon=True)
        for i, w in enumerate(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(len(w.stats.latencies["insert"]) - len(w.stats.failures["insert"]) for w in workers)


def run_steps(
    router: Router,
    config: LoadConfig,
    users: Sequence[int],
    *,
    stop: threading.Event | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
) -> list[LoadReport]:
    """The seed's table: one run of ``config`` per user count in ``users``, one after the
    other on the same Router, into one ledger; stops early when ``stop`` is set.

    The users carry over from run to run with their keys (1,000 users, then the same 1,000
    and 4,000 more, ...), as a load that grows; only new users need a warm-up insert."""
    stop = stop or threading.Event()
    book = None
    if config.ledger is not None:
        book = Ledger(config.ledger, target(router, config.table).header)
    reports: list[LoadReport] = []
    crowd: list[VirtualUser] = []
    try:
        for count in users:
            step = dataclasses.replace(config, users=count)
            reports.append(
                run_load(router, step, stop=stop, progress=progress, ledger=book, crowd=crowd)
            )
            if stop.is_set():
                break
    finally:
        if book is not None:
            book.close()
    return reports


def _snapshot(workers: list[_Worker], started: float, config: LoadConfig) -> LoadProgress:
    return LoadProgress(
        ops=sum(w.stats.done for w in workers),
        failed=sum(len(f) for w in workers for f in w.stats.failures.values()),
        seconds=time.monotonic() - started,
        duration=config.duration,
        target_ops=config.ops,
    )


def report(
    stats: Sequence[_Stats],
    seconds: float,
    *,
    workers: int,
    users: int,
    epochs: tuple[int, int],
    ledger: str | None = None,
    warm_up: int = 0,
) -> LoadReport:
    """The report of a run from what each worker measured."""
    per_op = []
    every: list[float] = []
    all_failures: list[str] = []
    for op in OPS:
        latencies = [x for s in stats for x in s.latencies[op]]
        failures = [x for s in stats for x in s.failures[op]]
        every += latencies
        all_failures += failures
        per_op.append(summary(op, latencies, failures, seconds))
    total = summary("total", every, all_failures, seconds)
    return LoadReport(
        workers=workers,
        users=users,
        seconds=seconds,
        ops=total.ops,
        ok=total.ok,
        failed=total.failed,
        success_rate=total.success_rate,
        throughput=total.throughput,
        per_op=per_op,
        total=total,
        anomalies=sum(s.anomalies for s in stats),
        epochs=epochs,
        ledger=ledger,
        warm_up=warm_up,
    )


def summary(op: str, latencies: list[float], failures: list[str], seconds: float) -> OpSummary:
    """Counts, throughput and latency percentiles (ms) of one op type; ``latencies`` in s,
    one per op (failed ones too), ``failures`` one message per failed op."""
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
    names = [c.name for c in into.columns]
    shards = list(routing.ring.nodes)
    queues: dict[str, Queue[list[Row] | None]] = {s: Queue(maxsize=4) for s in shards}
    written = dict.fromkeys(shards, 0)
    errors: list[BaseException] = []
    book = Ledger(ledger, into.header) if ledger is not None else None
    copy_sql = copy_statement(into)

    def stream(shard: str) -> None:
        queue = queues[shard]
        try:
            while (batch := queue.get()) is not None:
                data = copy_text(batch)

                def copy(conn: psycopg.Connection[Any], payload: str = data) -> None:
                    with conn.transaction(), conn.cursor().copy(copy_sql) as cp:
                        cp.write(payload)

                router.on_shard(shard, copy)
                written[shard] += len(batch)
                if book is not None:
                    book.record_many(
                        0, ((r[0], dict(zip(names, r[1:], strict=True))) for r in batch)
                    )
        except BaseException as exc:  # surfaced by the producer, which stops at once
            errors.append(exc)
            while queue.get() is not None:  # drain so the producer never blocks on us
                pass

    threads = [threading.Thread(target=stream, args=(s,), name=f"bulk-{s}") for s in shards]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    pending: dict[str, list[Row]] = {s: [] for s in shards}
    try:
        for n, row in enumerate(generate(into, rows, seed=seed), 1):
            owner = routing.owner(row[0])
            pending[owner].append(row)
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
