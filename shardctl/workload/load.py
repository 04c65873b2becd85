"""The load test through :class:`~shardctl.router.router.Router`: :func:`run_load` runs virtual
users (:mod:`shardctl.workload.users`) on the target table (:mod:`shardctl.workload.target`)
until a duration, an op count or a stop event ends them, and sums up what the workers measured
(:mod:`shardctl.workload.report`). :func:`run_steps` runs it for several user counts: the
virtual users table. How many connections a run may hold comes from :func:`connection_limit`.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from shardctl.config.topology import Topology
from shardctl.errors import UsageError
from shardctl.router.router import Router
from shardctl.util import fanout
from shardctl.workload.ledger import Ledger
from shardctl.workload.loop import loops
from shardctl.workload.loop import tasks as loop_tasks
from shardctl.workload.multiplex import Multiplexer
from shardctl.workload.raw import RawOps
from shardctl.workload.report import LoadProgress, LoadReport, report
from shardctl.workload.target import on_any_shard, target
from shardctl.workload.users import OVERRUN, LoadConfig, Run, Statements, VirtualUser, Worker

HEADROOM = 10
"""Connections per server left to everything but the load test (shardctl itself, psql, ...)."""


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
    _check(config, stop)
    users = config.users or config.workers
    width = min(config.workers, users)
    table = target(router, config.table)
    stop = stop or threading.Event()
    epoch_start = router.epoch
    own = ledger is None and config.ledger is not None
    if own and config.ledger is not None:
        ledger = Ledger(config.ledger, table.header)
    try:
        statements = on_any_shard(router, lambda conn: Statements(table, conn))
        run = Run(router, config, ledger, _budget(config.ops), table, statements)
        crowd = [] if crowd is None else crowd
        crowd.extend(VirtualUser(i, config.seed) for i in range(len(crowd), users))
        ready = deque(crowd[:users])
        warmed = 0
        if config.users is not None:
            # New virtual users first get a key each, outside the measured run: else a run with
            # many new users would measure mostly their first inserts, not the mix.
            warmed = _warm_up(run, width, ready, stop)
        if config.pipeline > 1:
            mux = Multiplexer(run, width=width, depth=config.pipeline)
            workers = mux.workers
            tasks = partial(mux.tasks, list(ready))
        elif config.engine == "loop":
            every = loops(run, width=width)
            workers = [w for loop in every for w in loop.workers]
            tasks = partial(loop_tasks, every, list(ready))
        else:
            workers = [Worker(run) for _ in range(width)]
            raw = RawOps(run)
            tasks = partial(_one_at_a_time, raw, workers, ready)
        seconds = _drive(workers, tasks, ready, stop, config, progress, interval)
    finally:
        if own and ledger is not None:
            ledger.close()
    return report(
        [w.stats for w in workers], seconds, workers=width, users=users,
        epochs=(epoch_start, router.epoch),
        ledger=None if config.ledger is None else str(config.ledger), warm_up=warmed,
    )  # fmt: skip


def _check(config: LoadConfig, stop: threading.Event | None) -> None:
    """UsageError for a run that cannot be made or would never end."""
    if config.workers < 1:
        raise UsageError("--workers must be at least 1")
    if config.users is not None and config.users < 1:
        raise UsageError("--users must be at least 1")
    if config.duration is None and config.ops is None and stop is None:
        raise UsageError("give a duration, an op count, or both")


def _budget(limit: int | None) -> Callable[[], bool]:
    """Shared by the workers: True while ops are left to start (``limit`` in all; None: no
    limit). ``next`` on one counter is atomic, so no op is started twice."""
    counter = itertools.count()

    def budget() -> bool:
        return limit is None or next(counter) < limit

    return budget


def _one_at_a_time(
    raw: RawOps,
    workers: list[Worker],
    ready: deque[VirtualUser],
    halt: threading.Event,
    cut_at: float | None,
) -> dict[int, Callable[[], None]]:
    """Each worker thread serves one user's op at a time from ``ready``."""
    return {i: partial(raw.serve, w, ready, halt, cut_at) for i, w in enumerate(workers)}


def _drive(
    workers: list[Worker],
    tasks: Callable[[threading.Event, float | None], dict[int, Callable[[], None]]],
    ready: deque[VirtualUser],
    stop: threading.Event,
    config: LoadConfig,
    progress: Callable[[LoadProgress], None] | None,
    interval: float,
) -> float:
    """Run the ``tasks`` of ``workers`` on the ``ready`` users until the duration, the op
    budget or ``stop``, reporting ``progress`` every ``interval`` seconds; the seconds the run
    took."""
    halt = threading.Event()  # the caller's stop, or the deadline: ``stop`` is only read
    started = time.monotonic()
    now = time.perf_counter()
    for user in ready:
        user.ready_since = now
    deadline = None if config.duration is None else started + config.duration
    # An op still running at the end (a frozen node) is cut short soon after: --duration holds.
    cut_at = None if deadline is None else deadline + OVERRUN
    running = fanout.Background(tasks(halt, cut_at), prefix="load")
    try:
        while running.alive():
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                halt.set()
            running.wait(interval)
            if progress is not None:
                progress(_snapshot(workers, started, config))
    finally:
        halt.set()
        outcomes = running.join()
    seconds = time.monotonic() - started
    if progress is not None:
        progress(_snapshot(workers, started, config))
    for outcome in outcomes.values():
        if isinstance(outcome, BaseException):
            raise outcome  # a bug in a worker, never a failed op (those are counted)
    return seconds


def _warm_up(run: Run, width: int, users: Iterable[VirtualUser], stop: threading.Event) -> int:
    """Give every user of ``users`` with no key one (an insert, in the ledger too), on
    ``width`` threads, for no longer than the run's duration (a node that stops answering must
    not hold the run up: users left without a key insert first in the run); returns the
    inserts acknowledged."""
    fresh = deque(u for u in users if not u.live)
    if not fresh:
        return 0
    until = None if run.config.duration is None else time.monotonic() + run.config.duration
    unbounded = dataclasses.replace(run, budget=lambda: True)
    workers = [Worker(unbounded) for _ in range(width)]
    fanout.each(
        {i: partial(w.warm, fresh, stop, until) for i, w in enumerate(workers)}, prefix="warm"
    )
    return sum(len(w.stats.latencies["insert"]) - len(w.stats.failures["insert"]) for w in workers)


def run_steps(
    router: Router,
    config: LoadConfig,
    users: Sequence[int],
    *,
    stop: threading.Event | None = None,
    progress: Callable[[LoadProgress], None] | None = None,
) -> list[LoadReport]:
    """The virtual users table: one run of ``config`` per user count in ``users``, one after the
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


def _snapshot(workers: list[Worker], started: float, config: LoadConfig) -> LoadProgress:
    return LoadProgress(
        ops=sum(w.stats.done for w in workers),
        failed=sum(len(f) for w in workers for f in w.stats.failures.values()),
        seconds=time.monotonic() - started,
        duration=config.duration,
        target_ops=config.ops,
    )
