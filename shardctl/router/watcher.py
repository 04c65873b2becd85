"""The Router's view of the catalog: which ring and epoch to route with, kept current.

:class:`CatalogWatcher` reads the ring catalog (:mod:`shardctl.state.catalog`) and the ranges a
reshard is moving from every primary in parallel, highest epoch winning, into one
:class:`Routing`. It reads on first use, then again whenever ``interval`` seconds have passed,
on a background thread started by whichever call notices first (no call ever waits for it), and
at once when asked (:meth:`CatalogWatcher.refresh`, which the Router calls after a fence
refusal). A newer epoch is taken at once, an older one never. Before each read it follows the
topology file, so that pools to a joining shard exist before any key moves to it.

Thread-safe: one lock serialises catalog reads; the Routing and the topology are immutable
values swapped in whole, so readers take no lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from shardctl.config import topology as topo
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import CatalogError, DatabaseUnavailable, ShardctlError, TopologyError
from shardctl.ring.hashing import Move, Ring, position
from shardctl.router.pools import Conn, Pools
from shardctl.state import catalog
from shardctl.state.fence import moving_ranges

__all__ = ["CatalogWatcher", "Routing"]

# Logged as the router, as before the split: applications filter on that logger's name.
log = logging.getLogger("shardctl.router")


@dataclass(frozen=True)
class Routing:
    """The ring a router places keys with, and the ranges moving, as one catalog read found."""

    epoch: int
    ring: Ring
    moving: tuple[Move, ...] = ()
    """Ranges being copied to a new owner: writes there are dual-written
    (:class:`~shardctl.router.fencing.DualWrites`)."""
    primaries: tuple[tuple[str, str], ...] = ()
    """(shard, node) acting as primary where a switchover or failover changed it."""

    def owner(self, key: object) -> str:
        """The shard that owns ``key`` (and takes its writes)."""
        return self.ring.node_for(key)

    def moving_target(self, key: object, owner: str) -> str | None:
        """The shard ``key`` is being copied to, when its range is moving."""
        if not self.moving:
            return None
        where = position(key)
        return next(
            (m.target for m in self.moving if m.source == owner and m.contains(where)), None
        )


CATALOG_READ_WAIT = 1.0
"""Seconds a catalog read waits for a pooled connection to one node. A role change publishes
its epoch to every acting primary, so a node that cannot be reached that fast (a dead primary,
whose pool keeps failing to connect) is skipped rather than waited for."""


_Answer = tuple[catalog.RingRecord | None, list[Move], bool]
"""One node's catalog record, the ranges it gives away, and whether it is in recovery."""


class CatalogWatcher:
    """Keeps the current :class:`Routing` and topology, re-reading both in the background."""

    def __init__(self, topology: Topology, pools: Pools, *, interval: float) -> None:
        """Watch the catalog of ``topology``'s primaries, reached through ``pools``."""
        self._topology = topology
        self._pools = pools
        self.interval = interval
        self._refresh_lock = threading.Lock()
        self._routing: Routing | None = None
        self._next_check = 0.0
        self._read_started = 0.0
        self._topology_mtime: float | None = None

    @property
    def topology(self) -> Topology:
        """The topology as last read (the file is followed at each catalog check)."""
        return self._topology

    @property
    def taken(self) -> Routing | None:
        """The Routing taken last, None before the first read; never reads the catalog."""
        return self._routing

    def current(self) -> Routing:
        """The Routing to use now; reads the catalog first if never read, and starts a
        background check if one is due."""
        routing = self._routing
        if routing is None:
            return self.refresh(force=False)
        if time.monotonic() >= self._next_check and self._refresh_lock.acquire(blocking=False):
            # The periodic check runs beside the request path, never on it: a slow or
            # unreachable primary must not hold up queries that the current ring routes fine.
            self._next_check = time.monotonic() + self.interval
            threading.Thread(
                target=self._check_in_background, name="shardctl-epoch-check", daemon=True
            ).start()
        return routing

    def check_soon(self) -> None:
        """Make the next :meth:`current` start a background check, whatever the interval."""
        self._next_check = 0.0

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

    def _check_in_background(self) -> None:
        try:
            self._refresh_locked()
        except (ShardctlError, psycopg.Error) as exc:
            # Keep routing with what we have: a later check (or a fenced write) tries again.
            if not self._pools.closed:  # a check the router's close overtook is no news
                log.warning("shardctl router: catalog check failed: %s", exc)
        finally:
            self._refresh_lock.release()

    def _refresh_locked(self) -> Routing:
        self._read_started = time.monotonic()
        try:
            routing = self._load_routing()
        finally:
            self._next_check = time.monotonic() + self.interval
        current = self._routing
        if current is None or routing.epoch > current.epoch:
            if current is not None:
                log.info("shardctl router: ring epoch %d -> %d", current.epoch, routing.epoch)
            # Roles first: a write routed by the new epoch must reach its acting primary.
            self._topology = self._topology.with_acting(dict(routing.primaries))
            self._routing = routing
            self._follow_topology_file()  # a shard this epoch took out of the ring: gone now
        elif routing.epoch == current.epoch and routing.moving != current.moving:
            self._routing = routing  # a reshard started or finished moving ranges
        return self._routing or routing

    def _load_routing(self) -> Routing:
        """Read the catalog from every acting primary in parallel (and, for a shard whose
        primary does not answer, from its replicas: one may have been promoted); the highest
        epoch wins, and its roles become the topology's (a switchover or failover)."""
        self._follow_topology_file()
        primaries = self._topology.primaries()
        found, moving, failed, demoted = self._read(primaries, with_moving=True)
        # A primary in recovery was demoted by a role change this router has not seen: its
        # catalog is as old as its role. Ask the replicas of such shards, and of silent ones.
        down = [p.shard for p in primaries if p.name not in found or p.name in demoted]
        for name in demoted:
            found.pop(name)
        if down:
            replicas = [n for shard in down for n in self._topology.shard_nodes(shard)[1:]]
            found |= self._read(replicas, with_moving=False)[0]
        if not found:
            raise DatabaseUnavailable(
                f"no node answered while reading the ring catalog: {'; '.join(failed)}"
            )
        view = catalog.combine(found, failed)
        record = view.record()
        if self._routing is None:
            for note in (*view.problems, *catalog.drift(self._topology, record)):
                log.warning("shardctl router: %s", note)
        ring = record.ring()
        self._check_reachable(ring)
        return Routing(record.epoch, ring, tuple(moving), record.primaries)

    def _read(
        self, nodes: Sequence[Node], *, with_moving: bool
    ) -> tuple[dict[str, catalog.RingRecord | None], list[Move], list[str], set[str]]:
        """Each node's current catalog record (and the ranges it gives away), in parallel; the
        names of those that could not be asked, and of those in recovery."""
        for node in nodes:
            self._pools.pool(node)  # every pool opens (connects) in the background, all at once
        executor = self._pools.executor()

        def read(node: Node) -> Callable[[Conn], _Answer]:
            def work(conn: Conn) -> _Answer:
                ranges = moving_ranges(conn, node.shard) if with_moving else []
                # Reported by the server on every connection (PostgreSQL 14+): no query.
                standby = conn.info.parameter_status("in_hot_standby") == "on"
                return catalog.read_current(conn), ranges, standby

            return work

        # A frozen node must not hold the catalog read (and the refresh lock) for ever.
        until = time.monotonic() + 2 * CATALOG_READ_WAIT
        futures = {
            node.name: executor.submit(
                self._pools.run, node, read(node), wait=CATALOG_READ_WAIT, until=until
            )
            for node in nodes
        }
        found: dict[str, catalog.RingRecord | None] = {}
        moving: list[Move] = []
        failed: list[str] = []
        standbys: set[str] = set()
        for name, future in futures.items():
            try:
                found[name], ranges, standby = future.result()
            except (psycopg.Error, ShardctlError) as exc:
                failed.append(f"{name} ({pg.first_line(exc)})")
            else:
                if standby:
                    standbys.add(name)
                else:
                    moving += ranges
        return found, moving, failed, standbys

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
        if reloaded.cluster != self._topology.cluster:
            return
        declared = {s.name for s in reloaded.spec.shards}
        if self._routing is not None and not set(self._routing.ring.nodes) <= declared:
            # A remove-shard dropped a shard that the ring we route with still names: take
            # the file once a newer epoch is taken (see _refresh_locked), never before it.
            self._topology_mtime = None
            return
        self._topology = reloaded.with_acting(dict(self._topology.acting))

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
        self._topology = reloaded.with_acting(dict(self._topology.acting))
