"""The Router's way to its nodes: one connection pool per node, and which node serves a call.

:class:`Pools` opens a ``psycopg_pool.ConnectionPool`` per node on first use of the node (in the
background, so pools to every primary connect at once), waits at most ``connect_timeout`` for
a connection, picks a live replica of a shard for reads (round-robin, the primary when none is
live), and skips a replica that just failed for :data:`DOWN_FOR` seconds. It also owns the
worker threads that fan calls out over nodes. It knows nothing of rings, keys or retries.

Thread-safe: creating a pool or the workers, and closing, hold one lock; everything else reads
plain dictionaries whose single assignments are atomic, so the request path takes no lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from shardctl.config import addresses
from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.db.deadlines import Watchdog
from shardctl.db.faults import is_transient
from shardctl.errors import RoutingError, TopologyError

__all__ = ["DOWN_FOR", "Conn", "Pools", "Prefer", "Row"]

T = TypeVar("T")
Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]
Prefer = Literal["replica", "primary"]

PREPARE_THRESHOLD: int | None = 2
"""Executions of one statement on a pooled connection before psycopg prepares it on the server
(``prepare_threshold``), when the Router reaches servers directly; through a pooler it prepares
nothing (a transaction-mode PgBouncer before 1.21 cannot keep a prepared statement)."""

DOWN_FOR = 2.0
"""Seconds a node that just failed is in trouble: skipped for reads if it is a replica (its
shard's primary answers), waited for only :data:`TROUBLED_WAIT` seconds if it is a primary."""
TROUBLED_WAIT = 0.25
"""Seconds to wait for a connection to a node in trouble (instead of ``connect_timeout``)."""
DEFAULT_STATEMENT_TIME = 30.0
"""Seconds a call given no deadline may run once it has its connection (shardctl's own reads,
dual writes); the Router always passes its own, shorter deadline."""
RETIRED_FOR = 2 * DEFAULT_STATEMENT_TIME
"""Seconds a pool of a node's former role is kept open for the calls that may still use it."""


class Pools:
    """A pool per node of the topology ``topology()`` returns now, and the fan-out threads."""

    def __init__(
        self,
        topology: Callable[[], Topology],
        credentials: Credentials,
        *,
        min_size: int,
        max_size: int,
        connect_timeout: float,
        login: Login = Login.APP,
        via: addresses.Via = "direct",
    ) -> None:
        """Pools to the nodes of ``topology()`` (called again whenever a node is looked up),
        logged in as ``login`` (the application role unless told otherwise), ``via`` each
        node's pooler (a node without one: directly) or straight to its server."""
        self._topology = topology
        self._credentials = credentials
        self.login = login
        self.via = via
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self._pools: dict[str, ConnectionPool[Conn]] = {}
        self._nodes: dict[str, tuple[Topology, tuple[Node, ...]]] = {}
        self._down_until: dict[str, float] = {}
        self._retired: list[tuple[float, ConnectionPool[Conn]]] = []
        """Pools of a node in its former role, and since when (see :meth:`_retire`)."""
        self._lock = threading.Lock()
        self.watchdog = Watchdog()
        """Cuts short a statement that outlives its deadline (a frozen server)."""
        self._until = threading.local()
        """The deadline of the call this thread is running (read by the pools' checks)."""
        self._turn = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def choose(self, shard: str, prefer: Prefer, attempt: int) -> Node:
        """The node of ``shard`` to use: a live replica first when asked, else the primary."""
        topology = self._topology()
        cached = self._nodes.get(shard)
        if cached is not None and cached[0] is topology:
            nodes = cached[1]
        else:
            try:
                nodes = topology.shard_nodes(shard)
            except TopologyError:
                raise RoutingError(f"shard {shard} is not in {topology.path}") from None
            self._nodes[shard] = (topology, nodes)
        primary = nodes[0]
        if prefer == "replica" and attempt == 1:
            now = time.monotonic()
            live = [n for n in nodes[1:] if self._down_until.get(n.name, 0.0) <= now]  # replicas
            if live:
                return live[next(self._turn) % len(live)]
        return primary

    def run(
        self,
        node: Node,
        work: Callable[[Conn], T],
        *,
        wait: float | None = None,
        until: float | None = None,
    ) -> T:
        """Run ``work`` on a pooled connection to ``node``, waiting at most ``wait`` seconds
        for one (default ``connect_timeout``), and cut short at ``until`` (time.monotonic()):
        connection wait and statement together; a node that fails is marked."""
        pool = self.pool(node)
        wait = self.connect_timeout if wait is None else wait
        if self._down_until.get(node.name, 0.0) > time.monotonic():
            # A node that just failed gets a short wait: if it is gone for good (a failover),
            # the retry or catalog read that follows must not queue here for long.
            wait = min(wait, TROUBLED_WAIT)
        if until is None:
            until = time.monotonic() + wait + DEFAULT_STATEMENT_TIME
        wait = max(0.001, min(wait, until - time.monotonic()))
        self._until.value = until
        try:
            # getconn/putconn rather than pool.connection(): its `with conn` block commits an
            # autocommit connection for nothing, a third of the pool's client CPU per call (a
            # connection returned in a transaction is rolled back by putconn all the same).
            conn = pool.getconn(timeout=wait)
            try:
                with self.watchdog.guard(conn, until):
                    return work(conn)
            finally:
                pool.putconn(conn)
        except PoolTimeout:
            self.mark_down(node)
            raise
        except psycopg.Error as exc:
            if is_transient(exc):
                self.mark_down(node)
            raise

    def _checker(self, name: str) -> Callable[[Conn], None]:
        """The test of a pooled connection to node ``name`` before each use."""

        def check(conn: Conn) -> None:
            # Only on a node in trouble: after a restart its idle connections are dead, and
            # the pool then takes or makes another. Bounded by the call's deadline, because on
            # a frozen server the test itself would never end.
            if self._down_until.get(name, 0.0) <= time.monotonic():
                return
            until = getattr(self._until, "value", time.monotonic() + TROUBLED_WAIT)
            with self.watchdog.guard(conn, until):
                conn.execute("")

        return check

    def mark_down(self, node: Node) -> None:
        """For :data:`DOWN_FOR` seconds: skip ``node`` for reads if it is a replica, and wait
        for a connection to it only :data:`TROUBLED_WAIT` seconds."""
        self._down_until[node.name] = time.monotonic() + DOWN_FOR

    @contextmanager
    def connection(self, node: Node) -> Iterator[Conn]:
        """A pooled autocommit connection to ``node``, waited for at most ``connect_timeout``."""
        with self.pool(node).connection(timeout=self.connect_timeout) as conn:
            yield conn

    def pool(self, node: Node) -> ConnectionPool[Conn]:
        """The pool of ``node``, created and opened (in the background) on first use."""
        # By address too: a shard removed and added back has nodes of the same name elsewhere.
        # By role too: a node promoted gets a fresh pool, not one whose reconnections backed
        # off while the node was down and re-cloned (measured: 13 s to follow a failover).
        via: addresses.Via = self.via if node.pooler_port is not None else "direct"
        where = f"{node.placement.endpoint or ''}:{node.host_port}/{via}"
        key = f"{node.name}@{where}/{node.role.value}"
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise RoutingError("the router is closed")
            pool = self._pools.get(key)
            if pool is None:
                pool = ConnectionPool(
                    pg.conninfo(
                        node,
                        self._credentials,
                        self._topology().spec.database,
                        timeout=self.connect_timeout,
                        login=self.login,
                        via=via,
                    ),
                    # Server-side prepared statements after 2 uses (a planned INSERT costs a
                    # fifth less server time). Never inside a pipeline: one a fence aborts can
                    # lose a PREPARE psycopg believes was made (SQLSTATE 26000 on every later
                    # use), so the Router passes prepare=False to what it pipelines. Never
                    # through a pooler either: a transaction-mode PgBouncer before 1.21 (Debian
                    # bookworm has 1.18) hands the next statement to another server connection.
                    kwargs={
                        "autocommit": True,
                        "prepare_threshold": PREPARE_THRESHOLD if via == "direct" else None,
                    },
                    check=self._checker(node.name),
                    min_size=self.min_size,
                    max_size=max(self.min_size, self.max_size),
                    name=node.name,
                    timeout=self.connect_timeout,
                    open=False,
                )
                pool.open(wait=False)
                self._retire(key.rpartition("/")[0], key)  # the node, any role
                self._pools[key] = pool
        return pool

    def _retire(self, where: str, kept: str) -> None:
        """Put aside the pools of the node at ``where`` in its other role (under the lock):
        closed once no call can still hold them, or with the Router."""
        now = time.monotonic()
        for key in [k for k in self._pools if k.startswith(f"{where}/") and k != kept]:
            self._retired.append((now, self._pools.pop(key)))
        old = [pool for at, pool in self._retired if now - at > RETIRED_FOR]
        self._retired = [(at, pool) for at, pool in self._retired if now - at <= RETIRED_FOR]
        for pool in old:
            pool.close(timeout=0)

    def executor(self) -> ThreadPoolExecutor:
        """The threads that run calls on several nodes at once (created on first use)."""
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    width = max(4, 2 * len(self._topology().spec.shards))
                    self._executor = ThreadPoolExecutor(
                        max_workers=width, thread_name_prefix="shardctl-router"
                    )
        return self._executor

    def close(self) -> None:
        """Close every pool and the worker threads; no pool can be opened afterwards."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
            pools += [pool for _, pool in self._retired]
            self._retired = []
            executor, self._executor = self._executor, None
        for pool in pools:
            pool.close(timeout=5.0)
        if executor is not None:
            executor.shutdown(wait=True)
