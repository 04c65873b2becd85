"""Virtual users served by a few threads, each carrying several ops in flight at once, each op on
its own connection, sent and read without blocking (libpq's non-blocking calls and ``epoll``),
as pgbench's threads serve its clients (``--workers`` ops in flight in all, :data:`OPS_PER_LOOP`
per thread unless ``--loops`` says how many threads).

With one thread per op in flight, each op costs the client a hand-off of the GIL and a thread
switch or two besides psycopg's and the pool's work; on a small machine whose cores the servers
share, that CPU is taken from the servers. Here a loop's thread sends each op on an idle
connection to its owner's primary, waits for all of them at once, and settles each op as its
answer comes: one connection per op in flight, so as many commits in flight as with threads (the
server's group commit needs them), and per op only libpq's calls and the bookkeeping.

Connections come from the Router's pools (:meth:`Router.connection`) and are held for the run,
in pipeline mode (each op its own transaction, ended by its Sync), by all loops together at
most one less per node than a pool holds, so the Router's own calls always find one. Opening a
connection and every op the Router must settle (see :mod:`shardctl.workload.raw`) run on
helper threads, so a node that stops answering holds up its own ops only: an op with no answer
by its deadline (the Router's, or the run's end) closes its connection and is settled by the
Router; an op still waiting for a connection at the run's end fails, never sent. Each user has
one op in flight at most, so its own ops stay in order; an op is counted and recorded in the
ledger once its final outcome is known, by its loop's thread.
"""

from __future__ import annotations

import os
import queue
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
from psycopg import pq

from shardctl.db.deadlines import WATCHDOG
from shardctl.errors import ShardctlError
from shardctl.router.watcher import Routing
from shardctl.workload.pipeline import Outcome, fold, prepare, ready_results
from shardctl.workload.raw import ALONE, RawOps
from shardctl.workload.users import Drawn, Run, VirtualUser, Worker

OPS_PER_LOOP = 8
"""Ops in flight per loop thread by default. Each more thread costs hand-offs of the GIL, and
its own connections (see :func:`enough`), but on a busy machine gets its own share of the
cores: with 16 ops, two loops beat one in 9 of 11 rounds against pgbench, and four spent
more CPU per insert than either (docs/benchmarks.md)."""
SPARE_PER_NODE = 2
"""Connections a loop may hold to a node beyond its even share of its ops (see :func:`enough`):
with 8 ops over 4 shards, an op waits for a connection in about 2% of draws."""
WAIT = 0.05
"""Seconds the loop waits at most before it looks at the stop event again."""
_STATUS = pq.ExecStatus
_OK = pq.ConnStatus.OK
_SYNC = _STATUS.PIPELINE_SYNC
_ANSWERS = (_STATUS.COMMAND_OK, _STATUS.TUPLES_OK, _STATUS.PIPELINE_ABORTED)
"""Results that answer a statement; any other on a connection no longer OK: it broke."""


@dataclass(eq=False, slots=True)
class Link:
    """A connection the loop holds, and the op it carries (None: idle)."""

    shard: str
    conn: psycopg.Connection[Any]
    lease: AbstractContextManager[psycopg.Connection[Any]]
    fd: int
    pgconn: pq.abc.PGconn
    drawn: Drawn | None = None
    until: float = 0.0
    sent: int = 0
    """Which op of the loop it carries (see ``Loop._deadlines``)."""
    rows: int = 0
    failure: Exception | None = None

    def drop(self, failure: Exception | None = None) -> None:
        """Close the connection (an answer unread, or it broke): its pool discards it."""
        if failure is not None:
            self.failure = failure
        self.conn.close()


@dataclass
class _Shard:
    idle: list[Link] = field(default_factory=list)
    held: int = 0
    """Connections held to the shard's primary: idle, busy, or being opened."""
    waiting: deque[Drawn] = field(default_factory=deque)
    """Ops waiting for a connection."""


def loops(run: Run, *, width: int) -> list[Loop]:
    """The loops of a run of ``width`` ops in flight: ``config.loops`` (default: one per
    :data:`OPS_PER_LOOP`), sharing them, and the connections a node's pool has but one (no
    more per node than :func:`enough` for its ops)."""
    wanted = run.config.loops or -(-width // OPS_PER_LOOP)
    shards = len(run.router.topology.primaries())
    return [
        Loop(run, width=share, most=min(most, enough(share, shards)))
        for share, most in split(width, wanted, max(1, run.router.max_size - 1))
    ]


def enough(width: int, shards: int) -> int:
    """Connections to one node a loop of ``width`` ops in flight holds at most: its share of
    them over ``shards`` and :data:`SPARE_PER_NODE` more, for the ops that chance sends to the
    same shard at once (past that, an op waits for one of them). Each connection costs the
    client and the server a login (SCRAM) when opened, and pgbench holds one per client."""
    return min(width, -(-width // max(1, shards)) + SPARE_PER_NODE)


def split(width: int, wanted: int, spare: int) -> list[tuple[int, int]]:
    """Each loop's ops in flight and connections per node: ``width`` ops over ``wanted`` loops
    (fewer when there are fewer ops, or fewer than ``spare`` connections: each loop needs one),
    ``spare`` connections per node over the same loops; the first get one more of each."""
    count = max(1, min(wanted, width, spare))
    return [
        (width // count + (i < width % count), spare // count + (i < spare % count))
        for i in range(count)
    ]


def tasks(
    every: list[Loop], users: list[VirtualUser], halt: threading.Event, until: float | None
) -> dict[int, Callable[[], None]]:
    """The loops' threads, each serving its share of ``users`` (dealt in turn)."""
    count = len(every)
    return {i: partial(loop.serve, users[i::count], halt, until) for i, loop in enumerate(every)}


class Loop:
    """One thread carrying up to ``width`` ops at once, one per connection."""

    def __init__(self, run: Run, *, width: int, most: int) -> None:
        self.router = run.router
        self.width = width
        self.budget = run.budget
        self.worker = Worker(run)
        self.workers = [self.worker]
        self.raw = RawOps(run)
        self._most = most
        """Connections this loop may hold per node."""
        self._shards: dict[str, _Shard] = {}
        self._links: dict[int, Link] = {}
        """Every connection held and open, by socket: all stay registered with ``_poll``."""
        self._poll = select.epoll()
        self._sent = 0
        self._deadlines: deque[tuple[float, int, Link]] = deque()
        """Ops sent, in the order sent, which is their deadlines' order (the Router's
        deadline after the send, or the run's end, whichever comes first); the settled ones
        leave once no older op is in flight, so it holds about the ops in flight."""
        self._flying = 0
        """Ops drawn and not yet settled: never more than ``width``."""
        self._news: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        """What helper threads finished, as calls for the loop's thread to make."""
        self._lock = threading.Lock()
        self._over = False
        self._ready: deque[VirtualUser] = deque()
        self._until: float | None = None
        self._helpers: ThreadPoolExecutor | None = None
        self._wake_r = self._wake_w = -1
        # What one round of the loop (a wake-up from poll) reads once for every op it sends or
        # settles, rather than per op: see _round.
        self._routing: Routing | None = None
        self._route: Callable[[Drawn], str] = self.raw.routes(None)
        self._cut = 0.0
        self._moving = False
        self._clock = 0.0

    def serve(self, users: list[VirtualUser], halt: threading.Event, until: float | None) -> None:
        """Serve ``users`` until ``halt`` or the op budget says so (ops in flight at ``until``,
        ``time.monotonic()``, are cut short)."""
        self._ready, self._until = deque(users), until
        self._helpers = ThreadPoolExecutor(self.width + 1, thread_name_prefix="load-helper")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poll.register(self._wake_r, select.EPOLLIN)
        try:
            self._turn(halt)
        finally:
            with self._lock:
                self._over = True
            # Connections still being opened are given back by their helpers (see _open).
            self._helpers.shutdown(wait=False, cancel_futures=True)
            self._release()
            self._poll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _turn(self, halt: threading.Event) -> None:
        """Start ops while there is room, wait for answers, settle; until all are settled."""
        ready, draw, until = self._ready, self.worker.draw, self._until
        budget = self.budget if self.worker.config.ops is not None else None
        deadlines, links, poll, start = self._deadlines, self._links, self._poll.poll, self._start
        width = self.width
        spent = False
        self._round()
        while True:
            if not spent and self._flying < width and ready and not halt.is_set():
                while self._flying < width and ready:
                    if budget is not None and not budget():
                        spent = True
                        break
                    self._flying += 1
                    start(draw(ready.popleft()))
            if self._flying == 0 and (spent or halt.is_set()):
                return
            now = time.monotonic()
            soonest = deadlines[0][0] if deadlines else now + WAIT
            events = poll(max(0.0, min(soonest - now, WAIT)))
            now = self._round()
            for fd, _ in events:
                link = links.get(fd)
                if link is not None:
                    self._read(link)
                elif fd == self._wake_r:
                    with suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    while True:
                        try:
                            self._news.get_nowait()()
                        except queue.Empty:
                            break
            while deadlines:  # the oldest op sent first: settled ones leave, late ones fail
                cut, sent, link = deadlines[0]
                if link.sent == sent and link.drawn is not None:
                    if cut > now:
                        break
                    link.drop(psycopg.OperationalError("no answer within the deadline"))
                    self._finish(link)
                deadlines.popleft()
            if until is not None and now >= until:
                self._give_up_waiting()

    def _round(self) -> float:
        """Read the clocks, the ring and the Router's deadline once for the ops this round of
        the loop sends and settles (they happen within the round; the ring only moves on, so
        a ring read before a commit is read was not older than one read per op); returns
        ``time.monotonic()``."""
        now = time.monotonic()
        cut, until = now + self.router.deadline, self._until
        self._cut = cut if until is None or cut < until else until
        self._clock = time.perf_counter()
        try:
            routing: Routing | None = self.router.routing
        except (ShardctlError, OSError):  # the catalog could not be read: the Router's turn
            routing = None
        if routing is not self._routing or routing is None:  # a Routing is frozen
            self._routing = routing
            self._route = self.raw.routes(routing)
            self._moving = routing is None or bool(routing.moving)
        return now

    # ------------------------------------------------------------ starting ops

    def _start(self, drawn: Drawn) -> None:
        """Send ``drawn`` on an idle connection to its owner, or queue it for one."""
        shard = self._route(drawn)
        if shard == ALONE:
            self._alone(drawn)
            return
        state = self._shards.get(shard)
        if state is None:
            state = self._shards[shard] = _Shard()
        if state.idle:
            self._send(state.idle.pop(), drawn)
            return
        state.waiting.append(drawn)
        if state.held < self._most:
            state.held += 1
            self._help(self._open, shard)

    def _send(self, link: Link, drawn: Drawn) -> None:
        """Send ``drawn``'s statements and a Sync on ``link``."""
        link.drawn, link.rows, link.failure = drawn, 0, None
        link.until = until = self._cut
        pgconn = link.pgconn
        try:
            if self.raw.prepared:
                for statement, params in self.raw.sends(drawn):
                    pgconn.send_query_prepared(statement.name, params)
            else:
                for statement, params in self.raw.sends(drawn):
                    pgconn.send_query_params(statement.query, params)
            pgconn.pipeline_sync()
            pgconn.flush()  # a few hundred bytes: the socket's buffer takes them at once
        except psycopg.Error as exc:
            link.drop(exc)
            self._finish(link)
            return
        self._sent = sent = self._sent + 1
        link.sent = sent
        self._deadlines.append((until, sent, link))

    def _help(self, work: Callable[..., None], *args: Any) -> None:
        """``work(*args)`` on a helper thread, held to the run's end like the loop's ops."""
        until = self._until

        def run() -> None:
            with self.router.ending_by(until) if until is not None else nullcontext():
                work(*args)

        assert self._helpers is not None
        self._helpers.submit(run)

    def _tell(self, news: Callable[[], None]) -> None:
        """(A helper thread.) Have the loop's thread call ``news``."""
        self._news.put(news)
        with suppress(OSError):
            os.write(self._wake_w, b".")

    def _open(self, shard: str) -> None:
        """(A helper thread.) Hold a pooled connection to ``shard``'s primary, its statements
        prepared, in pipeline mode; or, when none comes, tell the loop."""
        try:
            node = self.router.topology.shard_nodes(shard)[0]
            lease = self.router.connection(node.name)
            conn = lease.__enter__()
        except Exception:  # the node is down: its waiting ops go to the Router
            self._tell(lambda: self._not_opened(shard))
            return
        try:
            cut = time.monotonic() + self.router.deadline
            with WATCHDOG.guard(conn, cut if self._until is None else min(cut, self._until)):
                if self.raw.prepared:
                    prepare(conn, self.raw.statements())
            conn.pgconn.enter_pipeline_mode()
            conn.pgconn.nonblocking = 1
            link = Link(shard, conn, lease, conn.pgconn.socket, conn.pgconn)
        except Exception:
            conn.close()
            lease.__exit__(None, None, None)
            self._tell(lambda: self._not_opened(shard))
            return
        with self._lock:
            if not self._over:
                self._tell(lambda: self._opened(link))
                return
        _give_back(link)  # the run is over

    def _opened(self, link: Link) -> None:
        self._links[link.fd] = link
        self._poll.register(link.fd, select.EPOLLIN)
        state = self._shards[link.shard]
        if state.waiting:
            self._send(link, state.waiting.popleft())
        else:
            state.idle.append(link)

    def _unlink(self, link: Link) -> None:
        """Stop watching ``link`` (before its socket is closed, or as it was)."""
        if self._links.pop(link.fd, None) is not None:
            with suppress(OSError, ValueError):
                self._poll.unregister(link.fd)

    def _not_opened(self, shard: str) -> None:
        """No connection to ``shard``: when the loop holds none, the Router takes its ops
        (it retries, and says why they fail)."""
        state = self._shards[shard]
        state.held -= 1
        if state.held == 0:
            while state.waiting:
                self._alone(state.waiting.popleft())

    def _give_up_waiting(self) -> None:
        """The run's end: ops still waiting for a connection fail, never sent."""
        for state in self._shards.values():
            while state.waiting:
                drawn = state.waiting.popleft()
                self._settle(drawn, psycopg.OperationalError("no connection before the end"))

    # ------------------------------------------------------------ answers

    def _read(self, link: Link) -> None:
        """Take what ``link``'s connection answered; finish its op once its Sync is back."""
        pgconn = link.pgconn
        if link.drawn is None:  # idle: the server closed it (or says why it will)
            self._unlink(link)
            link.drop()
            link.lease.__exit__(None, None, None)
            state = self._shards[link.shard]
            state.held -= 1
            if link in state.idle:
                state.idle.remove(link)
            return
        try:
            for result in ready_results(pgconn):
                status = result.status
                if status == _SYNC:
                    self._finish(link)
                    return
                if status not in _ANSWERS and pgconn.status != _OK:
                    raise psycopg.OperationalError("the connection broke")
                link.rows, link.failure = fold(result, link.rows, link.failure)
        except psycopg.Error as exc:
            link.drop(exc)
            self._finish(link)

    def _finish(self, link: Link) -> None:
        """``link``'s op is over: settle it, or have the Router settle it; reuse ``link`` for
        the next op waiting for its shard, or drop it if it broke."""
        drawn, failure = link.drawn, link.failure
        assert drawn is not None
        link.drawn = None
        outcome: Outcome = failure if failure is not None else link.rows
        if failure is not None or (link.rows == 0 and drawn.op in ("update", "delete")):
            self._alone(drawn)
        elif self._moving and drawn.op != "read":
            self._help(self._written, drawn, outcome)
        else:
            self._settle(drawn, outcome)
        state = self._shards[link.shard]
        if failure is not None and link.conn.closed:  # only a failure closes a connection
            self._unlink(link)
            link.lease.__exit__(None, None, None)
            state.held -= 1
            if state.waiting and state.held < self._most:
                state.held += 1
                self._help(self._open, link.shard)
        elif state.waiting:
            self._send(link, state.waiting.popleft())
        else:
            state.idle.append(link)

    def _alone(self, drawn: Drawn) -> None:
        """Settle ``drawn`` through the Router's own calls, on a helper thread."""

        def run() -> None:
            outcome = self.raw.alone(self.worker, drawn)
            self._tell(lambda: self._settle(drawn, outcome))

        self._help(run)

    def _written(self, drawn: Drawn, outcome: Outcome) -> None:
        """(A helper thread.) The dual write of a committed write to a moving key."""
        self.router.written(drawn.key)
        self._tell(lambda: self._settle(drawn, outcome))

    def _settle(self, drawn: Drawn, outcome: Outcome) -> None:
        drawn.user.ready_since = self.worker.settle(drawn, outcome, self._clock)
        self.worker.stats.done += 1
        self._flying -= 1
        self._ready.append(drawn.user)

    def _release(self) -> None:
        """Give every connection held back to the Router's pools."""
        while True:  # connections opened as the run ended
            try:
                self._news.get_nowait()()
            except queue.Empty:
                break
            except Exception:
                continue
        for link in self._links.values():
            if link.drawn is not None:  # none, unless the loop failed
                link.drop()
            _give_back(link)
        self._links.clear()


def _give_back(link: Link) -> None:
    """Out of pipeline mode and back to its pool (a closed connection is discarded there)."""
    with suppress(psycopg.Error):
        if not link.conn.closed:
            link.conn.pgconn.nonblocking = 0
            link.conn.pgconn.exit_pipeline_mode()
    with suppress(Exception):
        link.lease.__exit__(None, None, None)
