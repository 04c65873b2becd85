"""The Router's side of a reshard: writes fenced by ``shardctl.assert_owner``, the dual write
of a key whose range is moving, and the counts of both (:class:`RouterStats`).

**Fencing.** A primary that no longer owns a key refuses writes to it with SQLSTATE ``SC001``
(:data:`shardctl.state.fence.FENCE_SQLSTATE`); :func:`fenced_write` makes a statement that
touched no row ask ``assert_owner`` too, so a stale ring is noticed either way.

**Dual writes.** Each catalog read also brings the ranges a reshard is moving whose rows are
already copied (:class:`~shardctl.router.watcher.Routing`.moving). A write to a key in one of
them, once committed on the owner, is also brought to the target by :meth:`DualWrites.bring`
(see docs/resharding.md for why that can never land after the cut-over's fence).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import psycopg
from psycopg import abc
from psycopg.pq import TransactionStatus
from psycopg_pool import PoolTimeout

from shardctl.config.schema import TableSpec
from shardctl.config.topology import Topology
from shardctl.errors import ShardctlError
from shardctl.router.pools import Conn, Pools
from shardctl.state.resync import key_type, resync_keys

log = logging.getLogger("shardctl.router.router")

ASSERT_OWNER = "SELECT shardctl.assert_owner(%s)"
Query = abc.QueryNoTemplate
"""A statement: ``str``, ``bytes``, or :mod:`psycopg.sql` composed SQL."""


def fenced_write(conn: Conn, key: object, query: Query, params: abc.Params | None) -> int:
    """One autocommit statement, fenced by the primary's guard triggers; its rowcount.

    The guard refuses (SC001) a row whose key lies in a range this primary gave away, before
    the statement commits. A statement that touched no row fired no row trigger: it asks
    ``assert_owner`` afterwards, so a Router with a stale ring learns that the key moved and
    retries on its new owner (where the row may be) instead of reporting "no row" from here.
    What it committed here changed nothing.
    """
    rowcount = conn.execute(query, params).rowcount
    if rowcount < 1:
        conn.execute(ASSERT_OWNER, (str(key),))
    return rowcount


def rollback(conn: Conn) -> None:
    """End a transaction a failed pipeline left open (a broken connection is left alone)."""
    if conn.closed or conn.info.transaction_status not in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        return
    with suppress(psycopg.Error):  # the pool discards a connection that cannot roll back
        conn.execute("ROLLBACK")


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


class DualWrites:
    """Brings a written key's committed rows from its owner to the shard its range moves to."""

    def __init__(self, topology: Callable[[], Topology], pools: Pools, stats: RouterStats) -> None:
        self._topology = topology
        self._pools = pools
        self._stats = stats
        self._key_types: dict[str, str] = {}

    def bring(self, key: object, source: str, target: str) -> None:
        """Bring ``key``'s committed state from its owner ``source`` to ``target``.

        Best effort and provably harmless: it runs after the write committed, in a source
        transaction opened by ``assert_owner`` (which holds the range FOR SHARE, so the
        cut-over's fence waits for it, and refuses it once fenced), and copies the source's
        committed rows under a row lock. The source's change log already names the key, so a
        dual write that fails or never happens costs catch-up time, never correctness.
        """
        try:
            topology = self._topology()
            source_node = topology.shard_nodes(source)[0]
            target_node = topology.shard_nodes(target)[0]
            with (
                self._pools.connection(source_node) as src,
                self._pools.connection(target_node) as dst,
                src.transaction(),
            ):
                src.execute(ASSERT_OWNER, (str(key),))
                for table in topology.spec.tables:
                    resync_keys(
                        src, dst, table, self._key_type(src, table), [str(key)], trusted=False
                    )
        except (psycopg.Error, PoolTimeout, ShardctlError) as exc:
            self._stats.dual_write_skipped()
            log.debug("shardctl router: dual write of %r to %s skipped: %s", key, target, exc)
        else:
            self._stats.dual_write()

    def _key_type(self, conn: Conn, table: TableSpec) -> str:
        if table.name not in self._key_types:
            self._key_types[table.name] = key_type(conn, table)
        return self._key_types[table.name]
