"""The Router's tries: each operation on the node a routing names, retried on transient faults
with exponential back-off and jitter until one deadline.

**One deadline.** Every operation ends within :attr:`Attempts.deadline` seconds: waiting for a
connection, the statement itself and every retry together (sooner inside
:meth:`Attempts.ending_by`). A statement on a server that stopped answering is cut short at the
deadline (:mod:`shardctl.router.deadlines`).

**Retries.** Transient faults (:func:`shardctl.db.faults.retryable`) are retried until the
deadline, then raised as :class:`~shardctl.errors.DatabaseUnavailable`; everything else is
raised at once, as psycopg raised it. A fence's refusal (SC001) becomes
:class:`~shardctl.errors.KeyNotOwned`: the ring is re-read and the next try goes to the new
owner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout
from tenacity import RetryCallState, Retrying, retry_if_exception

from shardctl.config.schema import Role
from shardctl.config.topology import Node
from shardctl.db import faults, pg
from shardctl.db.faults import is_transient
from shardctl.errors import DatabaseUnavailable, KeyNotOwned, RoutingError, ShardctlError
from shardctl.router.fencing import RouterStats
from shardctl.router.pools import Conn, Pools, Prefer
from shardctl.router.watcher import CatalogWatcher, Routing
from shardctl.state.fence import FENCE_SQLSTATE, NOT_PRIMARY_SQLSTATE

log = logging.getLogger("shardctl.router.router")

T = TypeVar("T")


class Attempts:
    """Runs work on the node a routing names, retrying transient faults until the deadline."""

    def __init__(
        self, pools: Pools, watcher: CatalogWatcher, stats: RouterStats, *, deadline: float
    ) -> None:
        self._pools = pools
        self._watcher = watcher
        self._stats = stats
        self.deadline = deadline
        """Seconds any one operation may take, retries included."""
        self._scope = threading.local()

    def call(
        self,
        shard_of: Callable[[Routing], str],
        work: Callable[[Conn], T],
        prefer: Prefer,
        *,
        key: object = None,
    ) -> T:
        """Run ``work`` on the shard ``shard_of(routing)`` names, retrying transient faults."""
        if self._pools.closed:
            raise RoutingError("the router is closed")
        # The first try runs bare: building a tenacity loop costs more than most statements.
        started = time.monotonic()
        until = self._until(started)
        try:
            shard = shard_of(self._watcher.current())
            node = self._pools.choose(shard, prefer, 1)
            return self.on_node(node, work, key=key, until=until)
        except Exception as exc:
            if not faults.retryable(exc):
                raise
            first = exc
        return self._retry(shard_of, work, prefer, key, first, started)

    def _retry(
        self,
        shard_of: Callable[[Routing], str],
        work: Callable[[Conn], T],
        prefer: Prefer,
        key: object,
        first: BaseException,
        started: float,
    ) -> T:
        """The tries after a first one failed with ``first``, until the deadline."""
        refused = first if isinstance(first, KeyNotOwned) else None
        until = self._until(started)
        self._after_failure(first)
        time.sleep(faults.FENCED_POLL if refused else faults.FIRST_BACKOFF)

        def before_sleep(state: RetryCallState) -> None:
            nonlocal refused
            failure = faults.failure(state)
            if isinstance(failure, KeyNotOwned):
                refused = failure
            self._before_retry(state)

        retrying = Retrying(
            retry=retry_if_exception(faults.retryable),
            stop=lambda state: time.monotonic() >= until,
            wait=lambda state: min(faults.backoff(state), max(0.0, until - time.monotonic())),
            before_sleep=before_sleep,
            reraise=True,
        )
        shard = "?"
        try:
            for attempt in retrying:
                with attempt:
                    shard = shard_of(self._watcher.current())
                    node = self._pools.choose(shard, prefer, attempt.retry_state.attempt_number + 1)
                    result = self.on_node(node, work, key=key, until=until)
                if faults.failure(attempt.retry_state) is None:
                    if refused:
                        self._stats.fenced(time.monotonic() - started)
                    return result
        except PoolTimeout as exc:
            raise DatabaseUnavailable(
                f"no connection to shard {shard} within the {self.deadline:g}s deadline: "
                f"{pg.first_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            if refused is not None and time.monotonic() >= until:
                # The deadline cut the last try short; the fence is why the key got nowhere.
                raise refused from exc
            if is_transient(exc):
                raise DatabaseUnavailable(
                    f"shard {shard}: still failing at the {self.deadline:g}s deadline: "
                    f"{pg.first_line(exc)}"
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def ending_by(self, until: float) -> Iterator[None]:
        """Operations this thread starts in the block end by ``until`` (``time.monotonic()``),
        or sooner at :attr:`deadline`: a load test that must stop on time, a request with a
        budget of its own."""
        outer = getattr(self._scope, "until", None)
        self._scope.until = until if outer is None else min(outer, until)
        try:
            yield
        finally:
            self._scope.until = outer

    def _until(self, started: float) -> float:
        until = started + self.deadline
        scoped: float | None = getattr(self._scope, "until", None)
        return until if scoped is None else min(until, scoped)

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            self._after_failure(exc)

    def _after_failure(self, exc: BaseException) -> None:
        """Before the next try: a fenced write re-reads the ring (shared with other writers)."""
        if isinstance(exc, KeyNotOwned):
            try:
                self._watcher.refresh(since=exc.seen_at)
            except (ShardctlError, psycopg.Error) as error:
                log.warning("shardctl router: ring refresh after fencing failed: %s", error)
        else:
            # A node that stopped answering may have lost its role (a switchover or failover):
            # have the catalog re-read now, in the background, not after the usual interval.
            self._watcher.check_soon()
        log.debug("shardctl router: retrying after %s", exc)

    def on_node(
        self, node: Node, work: Callable[[Conn], T], *, key: object = None, until: float
    ) -> T:
        """Run ``work`` on ``node`` until ``until``; a fence's refusal (SC001) becomes
        :class:`KeyNotOwned`."""
        try:
            return self._pools.run(node, work, until=until)
        except psycopg.Error as exc:
            demoted = exc.sqlstate == NOT_PRIMARY_SQLSTATE and node.role is Role.PRIMARY
            if exc.sqlstate == FENCE_SQLSTATE or demoted:
                raise KeyNotOwned(
                    f"{node.name} refused a write to key {key!r}: {pg.first_line(exc)}",
                    node=node.name,
                    key=key,
                ) from exc
            raise
