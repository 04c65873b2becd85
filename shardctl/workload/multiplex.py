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

Every op keeps the Router's guarantees: the primary's guard refuses a write to a key it gave
away (SC001), and such an op, any op whose outcome is unknown (a broken connection), and an
update or delete that found no row (the Router would then ask ``shardctl.assert_owner``) are run
again, alone, through :meth:`Router.execute` or :meth:`Router.fetch`, whose retries, fence and
ring refresh settle them; they are idempotent (an upsert or update to the same value, a delete).
A committed write to a key whose range is moving is brought to its target by
:meth:`Router.written`, as :meth:`Router.execute` does. Reads from replicas run alone too. Only
an op's final outcome is counted and recorded in the ledger.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

from shardctl.errors import RoutingError, ShardctlError
from shardctl.router.fencing import ASSERT_OWNER
from shardctl.router.router import Router
from shardctl.workload.ledger import Ledger
from shardctl.workload.pipeline import Call, Outcome, Statement, numbered, run_batch, text
from shardctl.workload.report import OPS
from shardctl.workload.target import Target
from shardctl.workload.users import Drawn, LoadConfig, Statements, VirtualUser, Worker

ALONE = ""
"""The queue of ops that run one at a time through the Router: reads from replicas, and ops
whose owner could not be looked up (the Router reports why)."""
WAIT = 0.05
"""Seconds an idle thread sleeps before it looks at the stop event again."""


class Multiplexer:
    """``width`` threads serving users, each carrying up to ``depth`` ops on one connection,
    ``width`` ops in flight at most in all."""

    def __init__(
        self,
        router: Router,
        config: LoadConfig,
        ledger: Ledger | None,
        budget: Callable[[], bool],
        target: Target,
        statements: Statements,
        *,
        width: int,
        depth: int,
    ) -> None:
        self.router = router
        self.width = width
        self.config = config
        self.depth = depth
        self.budget = budget
        self.workers = [
            Worker(router, config, ledger, budget, target, statements) for _ in range(width)
        ]
        self._sql = {
            op: Statement(f"shardctl_load_{op}".encode(), numbered(getattr(statements, op)))
            for op in OPS
        }
        self._owner = Statement(b"shardctl_load_owner", numbered(ASSERT_OWNER.encode()))
        # Prepared by name on direct connections, as the Router's pools prepare (see pools).
        self._prepared = router.via == "direct"
        self._columns = [c.name for c in target.columns]
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
        routed = []
        for d in drawn:
            if d.op == "read" and self.config.read_from == "replica":
                routed.append((ALONE, d))
                continue
            try:
                routed.append((self.router.owner(d.key), d))
            except (ShardctlError, OSError):
                routed.append((ALONE, d))
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
                    outcomes = self._run(worker, shard, batch, until)
                    now = time.perf_counter()
                    for drawn, outcome in zip(batch, outcomes, strict=True):
                        worker.settle(drawn, outcome)
                        worker.stats.done += 1
                        drawn.user.ready_since = now
                    following = [d for d in (self._next(worker, b.user) for b in batch) if d]
                finally:
                    with self._cond:
                        self._flying -= len(batch)
                        if self._flying == 0:
                            self._cond.notify_all()  # the last one out: others may be done
                self._enqueue(following)

    def _run(
        self, worker: Worker, shard: str, batch: list[Drawn], until: float | None
    ) -> list[Outcome]:
        """The outcome of every op of ``batch``: pipelined on ``shard``'s primary, then those
        the Router must settle (see the module's docstring) run again alone."""
        if shard == ALONE:
            return [self._alone(worker, d) for d in batch]
        calls = [self._call(d) for d in batch]
        cut = time.monotonic() + self.router.deadline
        cut = cut if until is None else min(cut, until)
        try:
            outcomes = self.router.on_shard(
                shard, lambda conn: run_batch(conn, calls, cut, prepared=self._prepared)
            )
        except RoutingError:  # the shard left the topology since: the ring knows the owner
            return [self._alone(worker, d) for d in batch]
        except Exception as exc:  # no connection within the deadline: it is spent
            return [exc] * len(batch)
        settled: list[Outcome] = []
        for drawn, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception) or (
                outcome == 0 and drawn.op in ("update", "delete")
            ):
                outcome = self._alone(worker, drawn)
            elif drawn.op != "read":
                self.router.written(drawn.key)
            settled.append(outcome)
        return settled

    def _alone(self, worker: Worker, drawn: Drawn) -> Outcome:
        """One op through the Router on its own (retries, fence, ring refresh)."""
        try:
            return worker.call(drawn.op, drawn.key, drawn.value)
        except Exception as exc:  # every failure is counted; none stops a thread
            return exc

    def _call(self, drawn: Drawn) -> Call:
        """The pipelined statement(s) of ``drawn``."""
        key, value, op = drawn.key, drawn.value, drawn.op
        values = [] if value is None else [value[c] for c in self._columns]
        if op == "insert":
            return Call(((self._sql[op], text([key, *values])),))
        if op == "update":
            return Call(((self._sql[op], text([*values, key])),))
        if op == "delete":
            return Call(((self._sql[op], text([key])),))
        # A read from the primary asks assert_owner in the same transaction, as the Router does.
        return Call(((self._owner, text([key])), (self._sql[op], text([key]))))
