"""Route queries by shard key to the node that owns the key, with retries, fencing and dual writes.

::

    from shardctl import Router

    with Router.from_topology("topology.yaml") as router:
        router.execute(user_id, "INSERT INTO users (id, email) VALUES (%s, %s)", (user_id, email))
        rows = router.fetch(user_id, "SELECT email FROM users WHERE id = %s", (user_id,))
        everyone = router.scatter("SELECT count(*) FROM users")

This module is the facade applications use; four pieces do the rest. The **ring** comes from
the catalog in the cluster, never from the topology file:
:class:`~shardctl.router.watcher.CatalogWatcher` reads it from every primary (highest epoch
wins) on first use and again, in the background, whenever :attr:`Router.epoch_check_interval`
seconds have passed (other calls never wait for it). A new epoch is taken at once; an older one
is never taken. **Connections** come from :class:`~shardctl.router.pools.Pools`: a pool per
node, a live replica chosen for reads, a replica that just failed skipped for a while.
**Tries** are :class:`~shardctl.router.retries.Attempts`; **fencing and dual writes** are
:mod:`shardctl.router.fencing`.

**Fencing.** During a reshard, a primary that no longer owns a key refuses writes to it with
SQLSTATE ``SC001`` (:data:`shardctl.state.fence.FENCE_SQLSTATE`). The router turns that into
:class:`~shardctl.errors.KeyNotOwned`, re-reads the catalog at once and retries on the new
owner; the caller sees latency, not an error, unless the ring stays stale past its deadline.
:meth:`Router.execute` sends the statement alone, in autocommit (one round trip, prepared after
two uses): the primary's guard triggers refuse a row of a moved key before it commits, and a
statement that touched no row is followed by ``shardctl.assert_owner`` (see
:func:`~shardctl.router.fencing.fenced_write`). :meth:`Router.run` and
``fetch(prefer="primary")`` open their transaction with ``assert_owner``.

**One deadline.** Every operation ends within :attr:`Router.deadline` seconds (default 10):
waiting for a connection, the statement itself and every retry together. A statement on a
server that stopped answering (a frozen container, a hung host) is cut short at the deadline
(:mod:`shardctl.db.deadlines`), and other shards' operations never wait for it.

**Retries.** Transient faults — a broken connection, a server shutting down or starting
(``admin_shutdown``, ``crash_shutdown``, ``cannot_connect_now``), a serialization failure, a
deadlock, no pooled connection in time — are retried with exponential back-off and jitter until
the deadline, then raised as :class:`~shardctl.errors.DatabaseUnavailable`. Everything else (a
syntax error, a unique violation, ...) is raised at once, as psycopg raised it. A statement
whose connection broke *during commit* may have committed: retried writes should be idempotent
(upserts, updates to a value, deletes) when exactly-once matters.

**Dual writes.** Each catalog read also brings the ranges a reshard is moving whose rows are
already copied (:class:`Routing`.moving). A write to a key in one of them, once committed on
the owner, is also brought to the target (see docs/resharding.md for why that can never land
after the cut-over's fence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import abc

from shardctl.config import addresses
from shardctl.config import credentials as creds
from shardctl.config import topology as topo
from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Topology
from shardctl.db.faults import is_transient
from shardctl.errors import UsageError
from shardctl.ring.hashing import Ring
from shardctl.router.fencing import (
    ASSERT_OWNER,
    DualWrites,
    Query,
    RouterStats,
    fenced_write,
    rollback,
)
from shardctl.router.pools import Conn, Pools, Prefer, Row
from shardctl.router.retries import Attempts
from shardctl.router.watcher import CatalogWatcher, Routing

if TYPE_CHECKING:
    from shardctl.ops.cluster import Cluster

__all__ = ["Prefer", "Query", "Router", "Routing", "Row", "is_transient"]

T = TypeVar("T")
Cur = psycopg.Cursor[Row]


def default_via(topology: Topology) -> addresses.Via:
    """How a Router reaches nodes when not told: through the poolers if ``pooler.router``."""
    pooler = topology.spec.pooler
    return "pooler" if pooler is not None and pooler.enabled and pooler.router else "direct"


class Router:
    """Sends each query to the node that owns its key; pools, retries, catalog watching.

    Thread-safe: one router is meant to be shared by every thread of an application.
    """

    def __init__(
        self,
        source: Topology | Cluster,
        credentials: Credentials | None = None,
        *,
        min_size: int = 1,
        max_size: int = 8,
        connect_timeout: float = 5.0,
        deadline: float = 10.0,
        epoch_check_interval: float = 2.0,
        login: Login = Login.APP,
        retry_timeout: float | None = None,
        via: addresses.Via | None = None,
    ) -> None:
        """A router for a topology (credentials found as the CLI finds them) or a Cluster,
        connected as the application role (``login=Login.SUPERUSER`` for shardctl's tools),
        ``via="pooler"`` through each node's PgBouncer (default: the topology's
        ``pooler.router``) or ``"direct"``.

        ``deadline``: seconds any one operation may take, retries included
        (``retry_timeout`` is its former name)."""
        declared = source if isinstance(source, Topology) else source.topology
        if via == "pooler" and not declared.pooled_nodes():
            raise UsageError(f"{declared.path} declares no pooler: add a pooler: section")
        if isinstance(source, Topology):
            topology = source
            credentials = credentials or creds.load(source)
        else:
            topology = source.topology
            credentials = credentials or source.credentials()
        # The pools reach nodes of the topology as the watcher last read it (add-shard grows it).
        self._pools = Pools(
            lambda: self._watcher.topology,
            credentials,
            min_size=min_size,
            max_size=max_size,
            connect_timeout=connect_timeout,
            login=login,
            via=via if via is not None else default_via(topology),
        )
        self._watcher = CatalogWatcher(topology, self._pools, interval=epoch_check_interval)
        self.stats = RouterStats()
        self._attempts = Attempts(
            self._pools,
            self._watcher,
            self.stats,
            deadline=retry_timeout if retry_timeout is not None else deadline,
        )
        self._dual_writes = DualWrites(lambda: self._watcher.topology, self._pools, self.stats)

    @classmethod
    def from_topology(cls, path: Path | str | None = None, **options: Any) -> Router:
        """A router for the topology at ``path`` (default: $SHARDCTL_TOPOLOGY, ./topology.yaml)."""
        return cls(topo.load(path), **options)

    # ------------------------------------------------------------ settings

    @property
    def via(self) -> addresses.Via:
        """How this router reaches nodes: ``"pooler"`` (each node's PgBouncer) or ``"direct"``."""
        return self._pools.via

    @property
    def deadline(self) -> float:
        """Seconds any one operation may take, retries included; may be changed at any time."""
        return self._attempts.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._attempts.deadline = value

    @property
    def min_size(self) -> int:
        """Connections each node's pool keeps open."""
        return self._pools.min_size

    @property
    def max_size(self) -> int:
        """Connections each node's pool opens at most."""
        return self._pools.max_size

    @property
    def connect_timeout(self) -> float:
        """Seconds to wait for a pooled connection (and for a new one to connect)."""
        return self._pools.connect_timeout

    @property
    def epoch_check_interval(self) -> float:
        """Seconds between background checks of the catalog epoch."""
        return self._watcher.interval

    # ------------------------------------------------------------ properties

    @property
    def topology(self) -> Topology:
        """The topology the router reaches nodes through."""
        return self._watcher.topology

    @property
    def routing(self) -> Routing:
        """The ring and epoch in use now (reads the catalog if not yet read or due)."""
        return self._watcher.current()

    @property
    def ring(self) -> Ring:
        """The ring in use now."""
        return self._watcher.current().ring

    @property
    def epoch(self) -> int:
        """The catalog epoch of the ring in use now."""
        return self._watcher.current().epoch

    def owner(self, key: object) -> str:
        """The shard that owns ``key`` under the current ring."""
        return self._watcher.current().owner(key)

    # ------------------------------------------------------------ queries

    def execute(self, key: object, query: Query, params: abc.Params | None = None) -> int:
        """Run one statement on ``key``'s owner primary (its own transaction); the rowcount.

        For a statement whose rows you need (``RETURNING``), use ``fetch(..., prefer="primary")``.
        """
        return self._on_owner(key, lambda conn: fenced_write(conn, key, query, params), writes=True)

    def fetch(
        self,
        key: object,
        query: Query,
        params: abc.Params | None = None,
        *,
        prefer: Prefer = "replica",
    ) -> list[Row]:
        """Rows of one statement on ``key``'s shard: a replica (may lag) or the primary.

        ``prefer="replica"`` reads from a streaming replica of the owner, falling back to the
        primary when the shard has none or the replica fails; it can miss writes committed in
        the last moments (the replica's lag). ``prefer="primary"`` reads your own writes.
        """

        if prefer == "primary":
            return self._statement(key, query, params, _rows, writes=False)

        def rows(conn: Conn) -> list[Row]:
            return _rows(conn.execute(query, params))

        return self._call(lambda r: r.owner(key), rows, prefer, key=key)

    def run(self, key: object, work: Callable[[Conn], T], *, prefer: Prefer = "primary") -> T:
        """Call ``work(conn)`` in one transaction on ``key``'s shard; retried as a whole.

        ``work`` may run more than once (after a transient fault or a fencing refusal), so it
        must not have effects outside the database that cannot be repeated.
        """

        if prefer == "primary":
            return self._write(key, work)  # _write opens the transaction

        def transaction(conn: Conn) -> T:
            with conn.transaction():
                return work(conn)

        return self._call(lambda r: r.owner(key), transaction, prefer, key=key)

    def on_shard(self, shard: str, work: Callable[[Conn], T], *, prefer: Prefer = "primary") -> T:
        """Call ``work(conn)`` on one shard by name (autocommit), retrying transient faults.

        Any declared shard may be named, in the ring or not; ``work`` may run more than once.
        """
        return self._call(_constant(shard), work, prefer)

    def scatter(self, query: Query, params: abc.Params | None = None) -> list[Row]:
        """Run one statement on every shard primary in parallel; all rows, in ring order."""
        return [row for rows in self.scatter_by_shard(query, params).values() for row in rows]

    def scatter_by_shard(
        self, query: Query, params: abc.Params | None = None
    ) -> dict[str, list[Row]]:
        """Like :meth:`scatter`, keeping each shard's rows apart (shard name -> rows)."""

        def rows(conn: Conn) -> list[Row]:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

        shards = self._watcher.current().ring.nodes
        executor = self._pools.executor()
        futures = {
            shard: executor.submit(self._call, _constant(shard), rows, "primary")
            for shard in shards
        }
        return {shard: future.result() for shard, future in futures.items()}

    # ------------------------------------------------------------ the ring

    def refresh(self, *, force: bool = True, since: float | None = None) -> Routing:
        """Re-read the catalog from every primary now and take a newer epoch if there is one.

        With ``since`` (a ``time.monotonic()`` value), a read that another thread *started*
        after that moment is fresh enough and is reused: many writers refused by one fence
        cause one catalog read at a time, not one each.
        """
        return self._watcher.refresh(force=force, since=since)

    # ------------------------------------------------------------ running work

    def _statement(
        self,
        key: object,
        query: Query,
        params: abc.Params | None,
        result: Callable[[Cur], T],
        *,
        writes: bool,
    ) -> T:
        """One statement on the owner primary of ``key``, fenced like :meth:`_write`.

        BEGIN, ``shardctl.assert_owner``, the statement and COMMIT travel in one pipeline: one
        network round trip instead of four. If one fails the server skips the rest, and the
        failed transaction is rolled back here before the connection goes back to its pool.
        """

        def owned(conn: Conn) -> T:
            cur = conn.cursor()
            try:
                with conn.pipeline():
                    conn.execute("BEGIN", prepare=False)
                    conn.execute(ASSERT_OWNER, (str(key),), prepare=False)
                    cur.execute(query, params, prepare=False)
                    conn.execute("COMMIT", prepare=False)
            except BaseException:
                rollback(conn)
                raise
            return result(cur)

        return self._on_owner(key, owned, writes=writes)

    def _write(self, key: object, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on the owner primary of ``key``; refused-by-fence writes follow the key.

        ``shardctl.assert_owner`` opens the transaction: a primary the key has moved away from
        refuses it (SC001) even when ``work`` would match no row and fire no trigger.
        """

        def owned(conn: Conn) -> T:
            with conn.transaction():
                conn.execute(ASSERT_OWNER, (str(key),))
                return work(conn)

        return self._on_owner(key, owned, writes=True)

    def _on_owner(self, key: object, owned: Callable[[Conn], T], *, writes: bool) -> T:
        """Run a fenced transaction on ``key``'s owner; then, if it ``writes`` and the key's
        range is moving, the dual write to the shard it is moving to (a read needs none)."""
        result = self._call(lambda r: r.owner(key), owned, "primary", key=key)
        if writes:
            self.written(key)
        return result

    def written(self, key: object) -> None:
        """After a write to ``key`` committed on its owner: when the key's range is moving, bring
        it to the shard it is moving to (the dual write :meth:`execute` does by itself). For
        callers that write on the owner their own way, e.g. several keys pipelined on one of
        :meth:`on_shard`'s connections."""
        routing = self._watcher.taken
        if routing is not None and routing.moving:
            owner = routing.owner(key)
            target = routing.moving_target(key, owner)
            if target is not None:
                self._dual_writes.bring(key, owner, target)

    def _call(
        self,
        shard_of: Callable[[Routing], str],
        work: Callable[[Conn], T],
        prefer: Prefer,
        *,
        key: object = None,
    ) -> T:
        """Run ``work`` on the shard ``shard_of(routing)`` names, retrying transient faults."""
        return self._attempts.call(shard_of, work, prefer, key=key)

    @contextmanager
    def ending_by(self, until: float) -> Iterator[None]:
        """Operations this thread starts in the block end by ``until`` (``time.monotonic()``),
        or sooner at :attr:`deadline`: a load test that must stop on time, a request with a
        budget of its own."""
        with self._attempts.ending_by(until):
            yield

    @contextmanager
    def connection(self, node: str) -> Iterator[Conn]:
        """A pooled autocommit connection to one node by name (tools and tests; no retries)."""
        with self._pools.connection(self._watcher.topology.node(node)) as conn:
            yield conn

    # ------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close every pool and worker thread; the router cannot be used afterwards."""
        self._pools.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        routing = self._watcher.taken
        epoch = "unread" if routing is None else f"epoch {routing.epoch}"
        return f"<Router {self._watcher.topology.cluster} ({epoch})>"


def _rows(cur: Cur) -> list[Row]:
    return cur.fetchall() if cur.description is not None else []


def _constant(shard: str) -> Callable[[Routing], str]:
    return lambda routing: shard
