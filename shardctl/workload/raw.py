"""Load-test ops on the raw libpq connection under the Router's pooled connections
(:mod:`shardctl.workload.pipeline`), with the Router's guarantees kept: :class:`RawOps`, used by
both engines of ``shardctl load``: one op at a time per worker thread (:meth:`RawOps.serve`,
``--pipeline 1``) and several users' ops pipelined on one connection
(:mod:`shardctl.workload.multiplex`).

An op goes to the primary of the shard that owns its key, through :meth:`Router.on_shard` (the
Router's pools, deadline and watchdog), as one autocommit statement (a read from the primary:
``shardctl.assert_owner`` then the SELECT, in one transaction, as the Router fences it).
psycopg's cursors cost the client more CPU per statement than the statement costs the server,
and the client shares its cores with the servers here.

Every op keeps the Router's guarantees: the primary's guard refuses a write to a key it gave
away (SC001), and such an op, any op whose outcome is unknown (a broken connection), and an
update or delete that found no row (the Router would then ask ``shardctl.assert_owner``) are run
again, alone, through :meth:`Router.execute` or :meth:`Router.fetch`, whose retries, fence and
ring refresh settle them; they are idempotent (an upsert or update to the same value, a delete).
A committed write to a key whose range is moving is brought to its target by
:meth:`Router.written`, as :meth:`Router.execute` does. Reads from replicas, and ops whose owner
could not be looked up, run through the Router from the start. Only an op's final outcome is
counted and recorded in the ledger.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext

from shardctl.errors import RoutingError, ShardctlError
from shardctl.router.fencing import ASSERT_OWNER
from shardctl.router.watcher import Routing
from shardctl.workload.pipeline import (
    Call,
    Outcome,
    Params,
    Statement,
    numbered,
    run_batch,
    run_one,
)
from shardctl.workload.report import OPS
from shardctl.workload.users import Drawn, Run, VirtualUser, Worker

ALONE = ""
"""Where ops go that run through the Router's own calls: reads from replicas, and ops whose
owner could not be looked up (the Router reports why)."""


def _alone(drawn: Drawn) -> str:
    return ALONE


class RawOps:
    """The mix's statements on raw connections to the owners' primaries, settled as the Router
    would settle them."""

    def __init__(self, run: Run) -> None:
        self.router = router = run.router
        self.config = config = run.config
        target, statements = run.target, run.statements
        self._sql = {
            op: Statement(f"shardctl_load_{op}".encode(), numbered(getattr(statements, op)))
            for op in OPS
        }
        self._owner = Statement(b"shardctl_load_owner", numbered(ASSERT_OWNER.encode()))
        # Prepared by name on direct connections, as the Router's pools prepare (see pools).
        self.prepared = router.via == "direct"
        self._columns = [c.name for c in target.columns]
        self._replicas = config.read_from == "replica"

    def statements(self) -> list[Statement]:
        """Every statement an op may send (to prepare them on a new connection)."""
        return [*self._sql.values(), self._owner]

    def route(self, drawn: Drawn) -> str:
        """The shard whose primary runs ``drawn``, or :data:`ALONE`."""
        if self._replicas and drawn.op == "read":
            return ALONE
        try:
            return self.router.owner(drawn.key)
        except (ShardctlError, OSError):
            return ALONE

    def routes(self, routing: Routing | None) -> Callable[[Drawn], str]:
        """:meth:`route` by ``routing`` (the Router's, read once for the ops started together;
        None: it could not be read, the Router takes every op)."""
        if routing is None:
            return _alone
        owner = routing.owner
        if self._replicas:
            return lambda drawn: ALONE if drawn.op == "read" else owner(drawn.key)
        return lambda drawn: owner(drawn.key)

    def serve(
        self, worker: Worker, ready: deque[VirtualUser], stop: threading.Event, until: float | None
    ) -> None:
        """One worker thread, one op at a time: serve users from ``ready`` until ``stop`` or the
        op budget says so; an op still running at ``until`` is cut short by the Router."""
        budget, draw, settle, stats = worker.budget, worker.draw, worker.settle, worker.stats
        with self.router.ending_by(until) if until is not None else nullcontext():
            while not stop.is_set() and budget():
                # Never empty: there are at least as many users as workers, and each worker
                # puts its user back before it takes the next (deque appends, pops are atomic).
                user = ready.popleft()
                drawn = draw(user)
                user.ready_since = settle(drawn, self.one(worker, drawn, until))
                stats.done += 1
                ready.append(user)

    def one(self, worker: Worker, drawn: Drawn, until: float | None) -> Outcome:
        """The outcome of ``drawn`` run on its own (see the module's docstring)."""
        shard = self.route(drawn)
        if shard == ALONE:
            return self.alone(worker, drawn)
        call, prepared = self.call(drawn), self.prepared
        cut = time.monotonic() + self.router.deadline
        cut = cut if until is None else min(cut, until)
        try:
            outcome = self.router.on_shard(
                shard, lambda conn: run_one(conn, call, cut, prepared=prepared)
            )
        except RoutingError:  # the shard left the topology since: the ring knows the owner
            return self.alone(worker, drawn)
        except Exception as exc:  # no connection within the deadline: it is spent
            return exc
        return self._settled(worker, drawn, outcome)

    def run(
        self, worker: Worker, shard: str, batch: list[Drawn], until: float | None
    ) -> list[Outcome]:
        """The outcome of every op of ``batch``, all owned by ``shard`` (or :data:`ALONE`):
        pipelined on its primary, then those the Router must settle run again alone."""
        if shard == ALONE:
            return [self.alone(worker, d) for d in batch]
        calls = [self.call(d) for d in batch]
        cut = time.monotonic() + self.router.deadline
        cut = cut if until is None else min(cut, until)
        try:
            outcomes = self.router.on_shard(
                shard, lambda conn: run_batch(conn, calls, cut, prepared=self.prepared)
            )
        except RoutingError:  # the shard left the topology since: the ring knows the owner
            return [self.alone(worker, d) for d in batch]
        except Exception as exc:  # no connection within the deadline: it is spent
            return [exc] * len(batch)
        return [self._settled(worker, d, o) for d, o in zip(batch, outcomes, strict=True)]

    def _settled(self, worker: Worker, drawn: Drawn, outcome: Outcome) -> Outcome:
        """``outcome`` of ``drawn`` on the owner, or the Router's when it must settle it."""
        if isinstance(outcome, Exception) or (outcome == 0 and drawn.op in ("update", "delete")):
            return self.alone(worker, drawn)
        if drawn.op != "read":
            self.router.written(drawn.key)
        return outcome

    def alone(self, worker: Worker, drawn: Drawn) -> Outcome:
        """One op through the Router's own calls (retries, fence, ring refresh)."""
        try:
            return worker.call(drawn.op, drawn.key, drawn.value)
        except Exception as exc:  # every failure is counted; none stops a thread
            return exc

    def call(self, drawn: Drawn) -> Call:
        """The statement(s) of ``drawn``."""
        return Call(self.sends(drawn))

    def sends(self, drawn: Drawn) -> tuple[tuple[Statement, Params], ...]:
        """The statement(s) of ``drawn`` and their parameters, as libpq takes them (text)."""
        key, value, op = drawn.key.encode(), drawn.value, drawn.op
        sql = self._sql
        if op == "delete":
            return ((sql[op], (key,)),)
        if op == "read":  # from the primary: assert_owner in the same transaction, as the Router
            return ((self._owner, (key,)), (sql[op], (key,)))
        assert value is not None
        values = [None if v is None else v.encode() for v in map(value.__getitem__, self._columns)]
        if op == "insert":
            return ((sql[op], (key, *values)),)
        return ((sql[op], (*values, key)),)
