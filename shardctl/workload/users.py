"""Virtual users and the worker threads that serve them, and what a run does (:class:`LoadConfig`).

Virtual users (by default one per worker) run a mix of inserts, point reads, updates and deletes
on the target, one op at a time each; ``workers`` threads sharing one Router serve them from one
first-in first-out queue, so the workers, not the users, bound the connections. Each user owns
the keys it inserts (fresh random keys), so with a :class:`~shardctl.workload.ledger.Ledger` the
expected final state of every key is well defined (see :mod:`shardctl.workload.ledger`).
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from shardctl.errors import UsageError
from shardctl.router.router import Prefer, Router
from shardctl.util.text import first_line
from shardctl.workload.ledger import Ledger, Value
from shardctl.workload.report import OPS, Stats
from shardctl.workload.target import Target

OVERRUN = 0.5
"""Seconds past ``--duration`` an op still running (on a frozen node) may take before the
Router cuts it short: the run ends within a second of its duration."""
Op = Literal["insert", "read", "update", "delete"]
Engine = Literal["loop", "threads"]
KEYS_AT_ONCE = 256
"""New keys a worker makes at once, from one call for random bytes and one hex string."""
ENGINES: tuple[Engine, ...] = ("loop", "threads")


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
    """What :func:`~shardctl.workload.load.run_load` does."""

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
    pipeline: int = 1
    """Ops one connection carries at once (several users', see
    :mod:`shardctl.workload.multiplex`); 1: one op per connection at a time."""
    engine: Engine = "loop"
    """With ``pipeline`` 1, who carries the ops: a few threads, each several of them at once
    (:mod:`shardctl.workload.loop`), or a thread per worker, each blocked on its op."""
    loops: int | None = None
    """The loop engine's threads (None: :data:`shardctl.workload.loop.OPS_PER_LOOP` ops each)."""


class VirtualUser:
    """One virtual user: owns the keys it inserts, and never touches a key after a failure.

    A user does one op at a time (closed loop, no think time): its next op is ready as soon as
    the last one returned, and waits in the queue until a worker thread is free. A user with no
    key inserts, whatever the mix says (new virtual users get one in the warm-up of
    :func:`~shardctl.workload.load.run_load`).
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


class Statements:
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


@dataclass(slots=True)
class Drawn:
    """One op a user is to run: its type, key and the value it writes (None: reads, deletes)."""

    user: VirtualUser
    op: str
    key: str
    value: Value | None


@dataclass(frozen=True)
class Run:
    """What every worker of one ``load`` run shares, whichever engine carries its ops."""

    router: Router
    config: LoadConfig
    ledger: Ledger | None
    budget: Callable[[], bool]
    """True while ops may still be drawn (``--ops``)."""
    target: Target
    statements: Statements


class Worker:
    """One worker thread: takes the user that has waited longest, runs its next op, puts it
    back. Workers are what hold connections, so they bound them, whatever the user count."""

    def __init__(self, run: Run) -> None:
        self.router = run.router
        self.config = config = run.config
        self.ledger = run.ledger
        self.budget = run.budget
        self.target = run.target
        self.q = run.statements
        weights = config.mix.weights()
        self.cumulative = list(itertools.accumulate(weights))
        self.inserts_only = weights[0] == self.cumulative[-1]
        self.stats = Stats()
        # New keys are never seeded (reruns must not collide): from 256 bits of the system's
        # randomness, not a system call per key (os.urandom costs tens of us under load).
        self.keys = random.Random(os.urandom(32))
        self._fresh: list[str] = []
        """Keys made and not yet used (see :data:`KEYS_AT_ONCE`)."""

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
        drawn = self.draw(user, op)
        try:
            rows = self.call(drawn.op, drawn.key, drawn.value)
        except Exception as exc:  # every failure is counted; none stops a worker
            self.settle(drawn, exc)
            return
        self.settle(drawn, rows)

    def draw(self, user: VirtualUser, op: str | None = None) -> Drawn:
        """``user``'s next op (from the mix unless given), its key and the value it writes."""
        if op is None:
            op = "insert" if self.inserts_only else self._pick(user.rng)
        if op != "insert" and not user.live:
            op = "insert"
        if op == "insert":
            fresh = self._fresh
            if not fresh:
                fresh += self.target.new_keys(self.keys.randbytes(16 * KEYS_AT_ONCE))
            key = fresh.pop()
        else:
            key = user.live[user.rng.randrange(len(user.live))]
        value = self.target.value(user.rng.getrandbits(48)) if op in ("insert", "update") else None
        return Drawn(user, op, key, value)

    def _pick(self, rng: random.Random) -> str:
        """An op type drawn from the mix (``random.choices`` without its per-call set-up)."""
        cumulative = self.cumulative
        return OPS[bisect.bisect(cumulative, rng.random() * cumulative[-1])]

    def settle(self, drawn: Drawn, outcome: int | Exception, now: float | None = None) -> float:
        """Count an op whose outcome is known (rows it touched or found, or why it failed),
        update its user's keys and the ledger; when it was counted (``now``: the
        ``time.perf_counter()`` its caller took when the outcome came, else taken here)."""
        user, op, key, value = drawn.user, drawn.op, drawn.key, drawn.value
        if now is None:
            now = time.perf_counter()
        self.stats.latencies[op].append(now - user.ready_since)
        if isinstance(outcome, Exception):
            self.stats.failures[op].append(f"{type(outcome).__name__}: {first_line(outcome)}")
            if op != "read":
                if op != "insert":
                    user.retire(key)
                if self.ledger is not None:
                    self.ledger.record(user.index, key, op, value, ok=False)
            return now
        if op == "insert":
            user.live.append(key)
        elif op == "delete":
            user.retire(key)
        if op != "insert" and outcome == 0 and (op != "read" or self.config.read_from == "primary"):
            self.stats.anomalies += 1
        if op != "read" and self.ledger is not None:
            self.ledger.record(user.index, key, op, value, rows=outcome)
        return now

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
