"""Virtual users multiplexed: each worker thread may carry several users' ops at once on one
connection (:mod:`shardctl.workload.pipeline`), instead of one op and one round trip at a time
through psycopg's cursors.

Each user's next op goes to the queue of the shard that owns its key. A free thread takes the
queue whose first op has waited longest, up to ``depth`` of its ops (fewer when ``--workers``
ops are already in flight), and runs them pipelined on one connection to that shard's primary,
through :meth:`Router.on_shard` (the Router's pools, deadline and watchdog). There are as many
threads as workers, so as many connections can commit at once as with one op per thread (the
server's group commit needs them: a connection's pipelined commits wait for one another's WAL
flush). Each user has one op in flight at most, so its own ops stay in order; users never share
a key, so ops of one batch are independent.

Each op keeps the Router's guarantees as :class:`~shardctl.workload.raw.RawOps` keeps them
(an op the Router must settle runs again alone through it); only an op's final outcome is
counted and recorded in the ledger.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

from shardctl.workload.raw import RawOps
from shardctl.workload.users import Drawn, Run, VirtualUser, Worker

WAIT = 0.05
"""Seconds an idle thread sleeps before it looks at the stop event again."""


class Multiplexer:
    """``width`` threads serving users, each carrying up to ``depth`` ops on one connection,
    ``width`` ops in flight at most in all."""

    def __init__(self, run: Run, *, width: int, depth: int) -> None:
        self.router = run.router
        self.width = width
        self.config = run.config
        self.depth = depth
        self.budget = run.budget
        self.workers = [Worker(run) for _ in range(width)]
        self.raw = RawOps(run)
        self._queues: dict[str, deque[Drawn]] = {}
        self._flying = 0
        """Ops taken and not yet settled: never more than ``width`` (``--workers``)."""
        self._cond = threading.Condition()

    def tasks(
        self, users: list[VirtualUser], halt: threading.Event, until: float | None
    ) -> dict[int, Callable[[], None]]:
        """Queue ``users``' first ops; the threads' work, to serve them until ``halt`` or the
        op budget says so (an op still running at ``until``, ``time.monotonic()``, is cut short
        by the Router)."""
        self._enqueue([d for d in map(partial(self._next, self.workers[0]), users) if d])
        return {i: partial(self._serve, w, halt, until) for i, w in enumerate(self.workers)}

    def _next(self, worker: Worker, user: VirtualUser) -> Drawn | None:
        """``user``'s next op, or None when the op budget is spent."""
        if not self.budget():
            return None
        return worker.draw(user)

    def _enqueue(self, drawn: list[Drawn]) -> None:
        """Queue ops by the shard owning their key; wake the threads."""
        routed = [(self.raw.route(d), d) for d in drawn]
        with self._cond:
            for shard, d in routed:
                self._queues.setdefault(shard, deque()).append(d)
            self._cond.notify(len(routed))  # not all: a herd of threads costs the client CPU

    def _take(self, halt: threading.Event) -> tuple[str, list[Drawn]] | None:
        """The shard whose first op has waited longest and up to ``depth`` of its ops (fewer
        when ``width`` are in flight); None once halted, or when no op is queued or running
        (the budget is spent)."""
        with self._cond:
            while not halt.is_set():
                room = min(self.depth, self.width - self._flying)
                waiting = [(q[0].user.ready_since, s) for s, q in self._queues.items() if q]
                if waiting and room > 0:
                    shard = min(waiting)[1]
                    queue = self._queues[shard]
                    batch = [queue.popleft() for _ in range(min(room, len(queue)))]
                    self._flying += len(batch)
                    return shard, batch
                if self._flying == 0 and not waiting:  # batches are never empty
                    return None
                self._cond.wait(WAIT)
            return None

    def _serve(self, worker: Worker, halt: threading.Event, until: float | None) -> None:
        """One thread: take a batch, run it, settle it, queue its users' next ops."""
        with self.router.ending_by(until) if until is not None else nullcontext():
            while (taken := self._take(halt)) is not None:
                shard, batch = taken
                try:
                    outcomes = self.raw.run(worker, shard, batch, until)
                    for drawn, outcome in zip(batch, outcomes, strict=True):
                        drawn.user.ready_since = worker.settle(drawn, outcome)
                        worker.stats.done += 1
                    following = [d for d in (self._next(worker, b.user) for b in batch) if d]
                finally:
                    with self._cond:
                        self._flying -= len(batch)
                        if self._flying == 0:
                            self._cond.notify_all()  # the last one out: others may be done
                self._enqueue(following)
