"""Route queries by shard key to the node that owns the key, with pools, retries and fencing.

::

    from shardctl import Router

    with Router.from_topology("topology.yaml") as router:
        router.execute(user_id, "INSERT INTO users (id, email) VALUES (%s, %s)", (user_id, email))
        rows = router.fetch(user_id, "SELECT email FROM users WHERE id = %s", (user_id,))
        everyone = router.scatter("SELECT count(*) FROM users")

**The ring** comes from the catalog in the cluster (:mod:`shardctl.catalog`), never from the
topology file: the router reads it from every primary (highest epoch wins) on first use and
again whenever :attr:`Router.epoch_check_interval` seconds have passed since the last check
(one tiny query per primary, made by whichever call notices first; other calls never wait for
it). A new epoch is taken at once; an older one is never taken.

**Fencing.** During a reshard, a primary that no longer owns a key refuses writes to it with
SQLSTATE ``SC001`` (:data:`shardctl.catalog.FENCE_SQLSTATE`). The router turns that into
:class:`~shardctl.errors.KeyNotOwned`, re-reads the catalog at once and retries on the new
owner; the caller sees latency, not an error, unless the ring stays stale past the retry budget.

**Retries.** Transient faults — a broken connection, a server shutting down or starting
(``admin_shutdown``, ``crash_shutdown``, ``cannot_connect_now``), a serialization failure, a
deadlock, no pooled connection in time — are retried with exponential back-off and jitter until
:attr:`Router.retry_timeout` seconds have passed, then raised as
:class:`~shardctl.errors.DatabaseUnavailable`. Everything else (a syntax error, a unique
violation, ...) is raised at once, as psycopg raised it. A statement whose connection broke
*during commit* may have committed: retried writes should be idempotent (upserts, updates to a
value, deletes) when exactly-once matters.

**Dual writes.** Each catalog read also brings the ranges a reshard is moving whose rows are
already copied (:class:`Routing`.moving). A write to a key in one of them, once committed on
the owner, is also brought to the target by :meth:`Router._dual_write` (see
docs/resharding.md for why that can never land after the cut-over's fence).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import psycopg
from psycopg import abc
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
)

from shardctl import catalog, faults, pg
from shardctl import credentials as creds
from shardctl import topology as topo
from shardctl.catalog import FENCE_SQLSTATE
from shardctl.credentials import Credentials
from shardctl.errors import (
    CatalogError,
    DatabaseUnavailable,
    KeyNotOwned,
    RoutingError,
    ShardctlError,
    TopologyError,
)
from shardctl.faults import is_transient
from shardctl.reshard.capture import Moving, moving_ranges
from shardctl.reshard.transfer import key_type, resync_keys
from shardctl.ring import Ring, position_hex
from shardctl.topology import Node, Role, TableSpec, Topology

if TYPE_CHECKING:
    from shardctl.cluster import Cluster

__all__ = ["Prefer", "Query", "Router", "Routing", "Row", "is_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = tuple[Any, ...]
Conn = psycopg.Connection[Row]
Cur = psycopg.Cursor[Row]
Prefer = Literal["replica", "primary"]
Query = abc.QueryNoTemplate
"""A statement: ``str``, ``bytes``, or :mod:`psycopg.sql` composed SQL."""

DOWN_FOR = 2.0
"""Seconds a replica that just failed is skipped for reads (its shard's primary answers)."""


@dataclass(frozen=True)
class Routing:
    """The ring a router places keys with, and the ranges moving, as one catalog read found."""

    epoch: int
    ring: Ring
    moving: tuple[Moving, ...] = ()
    """Ranges being copied to a new owner: writes there are dual-written (see _dual_write)."""

    def owner(self, key: object) -> str:
        """The shard that owns ``key`` (and takes its writes)."""
        return self.ring.node_for(key)

    def moving_target(self, key: object, owner: str) -> str | None:
        """The shard ``key`` is being copied to, when its range is moving."""
        if not self.moving:
            return None
        where = position_hex(key)
        return next(
            (m.target for m in self.moving if m.source == owner and m.contains(where)), None
        )


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
        retry_timeout: float = 20.0,
        epoch_check_interval: float = 2.0,
    ) -> None:
        """A router for a topology (credentials found as the CLI finds them) or a Cluster."""
        if isinstance(source, Topology):
            self._topology = source
            self._credentials = credentials or creds.load(source)
        else:
            self._topology = source.topology
            self._credentials = credentials or source.credentials()
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.retry_timeout = retry_timeout
        self.epoch_check_interval = epoch_check_interval
        self._pools: dict[str, ConnectionPool[Conn]] = {}
        self._nodes: dict[str, tuple[Topology, tuple[Node, ...]]] = {}
        self._down_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._routing: Routing | None = None
        self._next_check = 0.0
        self._read_started = 0.0
        self._turn = itertools.count()
        self._scatter_pool: ThreadPoolExecutor | None = None
        self._closed = False
        self.stats = RouterStats()
        self._topology_mtime: float | None = None
        self._key_types: dict[str, str] = {}

    @classmethod
    def from_topology(cls, path: Path | str | None = None, **options: Any) -> Router:
        """A router for the topology at ``path`` (default: $SHARDCTL_TOPOLOGY, ./topology.yaml)."""
        return cls(topo.load(path), **options)

    # ------------------------------------------------------------ properties

    @property
    def topology(self) -> Topology:
        """The topology the router reaches nodes through."""
        return self._topology

    @property
    def routing(self) -> Routing:
        """The ring and epoch in use now (reads the catalog if not yet read or due)."""
        return self._current()

    @property
    def ring(self) -> Ring:
        """The ring in use now."""
        return self._current().ring

    @property
    def epoch(self) -> int:
        """The catalog epoch of the ring in use now."""
        return self._current().epoch

    def owner(self, key: object) -> str:
        """The shard that owns ``key`` under the current ring."""
        return self._current().owner(key)

    # ------------------------------------------------------------ queries

    def execute(self, key: object, query: Query, params: abc.Params | None = None) -> int:
        """Run one statement on ``key``'s owner primary (its own transaction); the rowcount.

        For a statement whose rows you need (``RETURNING``), use ``fetch(..., prefer="primary")``.
        """
        return self._statement(key, query, params, _rowcount, writes=True)

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

        shards = self._current().ring.nodes
        executor = self._executor()
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
        with self._refresh_lock:
            if self._routing is not None and (
                not force or (since is not None and self._read_started >= since)
            ):
                return self._routing
            return self._refresh_locked()

    def _current(self) -> Routing:
        routing = self._routing
        if routing is None:
            return self.refresh(force=False)
        if time.monotonic() >= self._next_check and self._refresh_lock.acquire(blocking=False):
            # The periodic check runs beside the request path, never on it: a slow or
            # unreachable primary must not hold up queries that the current ring routes fine.
            self._next_check = time.monotonic() + self.epoch_check_interval
            threading.Thread(
                target=self._check_in_background, name="shardctl-epoch-check", daemon=True
            ).start()
        return routing

    def _check_in_background(self) -> None:
        try:
            self._refresh_locked()
        except (ShardctlError, psycopg.Error) as exc:
            # Keep routing with what we have: a later check (or a fenced write) tries again.
            log.warning("shardctl router: catalog check failed: %s", exc)
        finally:
            self._refresh_lock.release()

    def _refresh_locked(self) -> Routing:
        self._read_started = time.monotonic()
        try:
            routing = self._load_routing()
        finally:
            self._next_check = time.monotonic() + self.epoch_check_interval
        current = self._routing
        if current is None or routing.epoch > current.epoch:
            if current is not None:
                log.info("shardctl router: ring epoch %d -> %d", current.epoch, routing.epoch)
            self._routing = routing
        elif routing.epoch == current.epoch and routing.moving != current.moving:
            self._routing = routing  # a reshard started or finished moving ranges
        return self._routing or routing

    def _load_routing(self) -> Routing:
        """Read the catalog from every declared primary in parallel; highest epoch wins."""
        self._follow_topology_file()
        primaries = self._topology.primaries()
        for node in primaries:
            self._pool(node)  # every pool opens (connects) in the background, all at once
        executor = self._executor()

        def read(node: Node) -> Callable[[Conn], tuple[catalog.RingRecord | None, list[Moving]]]:
            return lambda conn: (catalog.read_current(conn), moving_ranges(conn, node.shard))

        futures = {
            node.name: executor.submit(self._on_node, node, read(node)) for node in primaries
        }
        found: dict[str, catalog.RingRecord | None] = {}
        moving: list[Moving] = []
        failed: list[str] = []
        for name, future in futures.items():
            try:
                found[name], ranges = future.result()
            except (psycopg.Error, ShardctlError) as exc:
                failed.append(f"{name} ({pg.first_line(exc)})")
            else:
                moving += ranges
        if not found:
            raise DatabaseUnavailable(
                f"no primary answered while reading the ring catalog: {'; '.join(failed)}"
            )
        view = catalog.combine(found, failed)
        record = view.record()
        if self._routing is None:
            for note in (*view.problems, *catalog.drift(self._topology, record)):
                log.warning("shardctl router: %s", note)
        ring = record.ring()
        self._check_reachable(ring)
        return Routing(record.epoch, ring, tuple(moving))

    def _follow_topology_file(self) -> None:
        """Take a changed topology file (``add-shard`` appends to it) at the next catalog check,
        so that pools to a joining shard are open well before its ranges cut over to it."""
        try:
            mtime = self._topology.path.stat().st_mtime
        except OSError:
            return
        if mtime == self._topology_mtime:
            return
        self._topology_mtime = mtime
        try:
            reloaded = topo.load(self._topology.path)
        except TopologyError as exc:
            log.warning("shardctl router: keeping the topology loaded before: %s", exc)
            return
        if reloaded.cluster == self._topology.cluster:
            self._topology = reloaded

    def _check_reachable(self, ring: Ring) -> None:
        """Every ring node must be a declared shard; re-read the topology file once if not."""
        declared = {s.name for s in self._topology.spec.shards}
        if set(ring.nodes) <= declared:
            return
        try:
            reloaded = topo.load(self._topology.path)
        except TopologyError:
            reloaded = self._topology
        missing = set(ring.nodes) - {s.name for s in reloaded.spec.shards}
        if missing:
            raise CatalogError(
                f"the ring names {', '.join(sorted(missing))}, which {self._topology.path} does "
                "not declare: the router cannot reach it"
            )
        self._topology = reloaded

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
                    conn.execute("BEGIN")
                    conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),))
                    cur.execute(query, params)
                    conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
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
                conn.execute("SELECT shardctl.assert_owner(%s)", (str(key),))
                return work(conn)

        return self._on_owner(key, owned, writes=True)

    def _on_owner(self, key: object, owned: Callable[[Conn], T], *, writes: bool) -> T:
        """Run a fenced transaction on ``key``'s owner; then, if it ``writes`` and the key's
        range is moving, the dual write to the shard it is moving to (a read needs none)."""
        result = self._call(lambda r: r.owner(key), owned, "primary", key=key)
        routing = self._routing
        if writes and routing is not None and routing.moving:
            owner = routing.owner(key)
            target = routing.moving_target(key, owner)
            if target is not None:
                self._dual_write(key, owner, target)
        return result

    def _dual_write(self, key: object, source: str, target: str) -> None:
        """Bring ``key``'s committed state from its owner to the shard its range moves to.

        Best effort and provably harmless: it runs after the write committed, in a source
        transaction opened by ``assert_owner`` (which holds the range FOR SHARE, so the
        cut-over's fence waits for it, and refuses it once fenced), and copies the source's
        committed rows under a row lock. The source's change log already names the key, so a
        dual write that fails or never happens costs catch-up time, never correctness.
        """
        try:
            source_node = self._topology.shard_nodes(source)[0]
            target_node = self._topology.shard_nodes(target)[0]
            with (
                self._pool(source_node).connection(timeout=self.connect_timeout) as src,
                self._pool(target_node).connection(timeout=self.connect_timeout) as dst,
                src.transaction(),
            ):
                src.execute("SELECT shardctl.assert_owner(%s)", (str(key),))
                for table in self._topology.spec.tables:
                    resync_keys(src, dst, table, self._key_type(src, table), [str(key)])
        except (psycopg.Error, PoolTimeout, ShardctlError) as exc:
            self.stats.dual_write_skipped()
            log.debug("shardctl router: dual write of %r to %s skipped: %s", key, target, exc)
        else:
            self.stats.dual_write()

    def _key_type(self, conn: Conn, table: TableSpec) -> str:
        if table.name not in self._key_types:
            self._key_types[table.name] = key_type(conn, table)
        return self._key_types[table.name]

    def _call(
        self,
        shard_of: Callable[[Routing], str],
        work: Callable[[Conn], T],
        prefer: Prefer,
        *,
        key: object = None,
    ) -> T:
        """Run ``work`` on the shard ``shard_of(routing)`` names, retrying transient faults."""
        if self._closed:
            raise RoutingError("the router is closed")
        # The first try runs bare: building a tenacity loop costs more than most statements.
        started = time.monotonic()
        try:
            return self._on_node(self._choose(shard_of(self._current()), prefer, 1), work, key=key)
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
        """The tries after a first one failed with ``first``, until the retry budget is spent."""
        fenced = isinstance(first, KeyNotOwned)
        self._after_failure(first)
        time.sleep(faults.FENCED_POLL if fenced else faults.FIRST_BACKOFF)

        def before_sleep(state: RetryCallState) -> None:
            nonlocal fenced
            fenced = fenced or isinstance(faults.failure(state), KeyNotOwned)
            self._before_retry(state)

        retrying = Retrying(
            retry=retry_if_exception(faults.retryable),
            stop=stop_after_delay(self.retry_timeout),
            wait=faults.backoff,
            before_sleep=before_sleep,
            reraise=True,
        )
        shard = "?"
        try:
            for attempt in retrying:
                with attempt:
                    shard = shard_of(self._current())
                    node = self._choose(shard, prefer, attempt.retry_state.attempt_number + 1)
                    result = self._on_node(node, work, key=key)
                if faults.failure(attempt.retry_state) is None:
                    if fenced:
                        self.stats.fenced(time.monotonic() - started)
                    return result
        except PoolTimeout as exc:
            raise DatabaseUnavailable(
                f"no connection to shard {shard} within {self.retry_timeout:g}s: "
                f"{pg.first_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            if is_transient(exc):
                raise DatabaseUnavailable(
                    f"shard {shard}: still failing after {self.retry_timeout:g}s of retries: "
                    f"{pg.first_line(exc)}"
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _before_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            self._after_failure(exc)

    def _after_failure(self, exc: BaseException) -> None:
        """Before the next try: a fenced write re-reads the ring (shared with other writers)."""
        if isinstance(exc, KeyNotOwned):
            try:
                self.refresh(since=exc.seen_at)
            except (ShardctlError, psycopg.Error) as error:
                log.warning("shardctl router: ring refresh after fencing failed: %s", error)
        log.debug("shardctl router: retrying after %s", exc)

    def _choose(self, shard: str, prefer: Prefer, attempt: int) -> Node:
        """The node of ``shard`` to use: a live replica first when asked, else the primary."""
        topology = self._topology
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
            live = [n for n in nodes[1:] if self._down_until.get(n.name, 0.0) <= now]
            if live:
                return live[next(self._turn) % len(live)]
        return primary

    def _on_node(self, node: Node, work: Callable[[Conn], T], *, key: object = None) -> T:
        """Run ``work`` on a pooled connection to ``node``; classify what goes wrong."""
        pool = self._pool(node)
        try:
            with pool.connection(timeout=self.connect_timeout) as conn:
                return work(conn)
        except PoolTimeout:
            self._mark_down(node)
            raise
        except psycopg.Error as exc:
            if exc.sqlstate == FENCE_SQLSTATE:
                raise KeyNotOwned(
                    f"{node.name} refused a write to key {key!r}: {pg.first_line(exc)}",
                    node=node.name,
                    key=key,
                ) from exc
            if is_transient(exc):
                self._mark_down(node)
                if exc.sqlstate is None or exc.sqlstate.startswith(("08", "57")):
                    # Its siblings in the pool are likely dead too (a restart): test them now.
                    pool.check()
            raise

    def _mark_down(self, node: Node) -> None:
        if node.role is Role.REPLICA:
            self._down_until[node.name] = time.monotonic() + DOWN_FOR

    def _pool(self, node: Node) -> ConnectionPool[Conn]:
        pool = self._pools.get(node.name)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise RoutingError("the router is closed")
            pool = self._pools.get(node.name)
            if pool is None:
                pool = ConnectionPool(
                    pg.conninfo(
                        node,
                        self._credentials,
                        self._topology.spec.database,
                        timeout=self.connect_timeout,
                    ),
                    kwargs={"autocommit": True},
                    min_size=self.min_size,
                    max_size=max(self.min_size, self.max_size),
                    name=node.name,
                    timeout=self.connect_timeout,
                    open=False,
                )
                pool.open(wait=False)
                self._pools[node.name] = pool
        return pool

    def _executor(self) -> ThreadPoolExecutor:
        if self._scatter_pool is None:
            with self._lock:
                if self._scatter_pool is None:
                    width = max(4, 2 * len(self._topology.spec.shards))
                    self._scatter_pool = ThreadPoolExecutor(
                        max_workers=width, thread_name_prefix="shardctl-router"
                    )
        return self._scatter_pool

    @contextmanager
    def connection(self, node: str) -> Iterator[Conn]:
        """A pooled autocommit connection to one node by name (tools and tests; no retries)."""
        with self._pool(self._topology.node(node)).connection(timeout=self.connect_timeout) as conn:
            yield conn

    # ------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close every pool and worker thread; the router cannot be used afterwards."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
            executor, self._scatter_pool = self._scatter_pool, None
        for pool in pools:
            pool.close(timeout=5.0)
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        routing = self._routing
        epoch = "unread" if routing is None else f"epoch {routing.epoch}"
        return f"<Router {self._topology.cluster} ({epoch})>"


@dataclass
class RouterStats:
    """What a router has seen of resharding: writes held by a fence, and for how long."""

    fenced_writes: int = 0
    """Calls that were refused by a fence at least once and then succeeded on the new owner."""
    max_fenced_seconds: float = 0.0
    """The longest such call, first try to success: the write pause a caller saw."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    dual_writes: int = 0
    """Writes to moving keys also brought to the shard their range is moving to."""
    dual_writes_skipped: int = 0
    """Dual writes that failed or came too late (fenced); the change log covers them."""

    def fenced(self, seconds: float) -> None:
        """Record one call that waited out a fence."""
        with self._lock:
            self.fenced_writes += 1
            self.max_fenced_seconds = max(self.max_fenced_seconds, seconds)

    def dual_write(self) -> None:
        """Record one dual write."""
        with self._lock:
            self.dual_writes += 1

    def dual_write_skipped(self) -> None:
        """Record one dual write that did not happen."""
        with self._lock:
            self.dual_writes_skipped += 1


def _rowcount(cur: Cur) -> int:
    return cur.rowcount


def _rows(cur: Cur) -> list[Row]:
    return cur.fetchall() if cur.description is not None else []


def _rollback(conn: Conn) -> None:
    """End a transaction a failed pipeline left open (a broken connection is left alone)."""
    if conn.closed or conn.info.transaction_status not in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        return
    with suppress(psycopg.Error):  # the pool discards a connection that cannot roll back
        conn.execute("ROLLBACK")


def _constant(shard: str) -> Callable[[Routing], str]:
    return lambda routing: shard


def shards_of(router: Router, keys: Sequence[object]) -> dict[str, list[object]]:
    """Group keys by owning shard under the router's current ring."""
    routing = router.routing
    grouped: dict[str, list[object]] = {shard: [] for shard in routing.ring.nodes}
    for key in keys:
        grouped[routing.owner(key)].append(key)
    return grouped
