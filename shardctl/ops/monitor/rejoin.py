"""Re-joining the former primaries a failover fenced, as ``up`` does, on a thread of its own.

A re-clone takes seconds to minutes; the monitor keeps watching the other shards meanwhile. Per
node, under the monitor lock on its shard's acting primary and after reading the catalog
again, so that two monitors never re-clone one node at the same time, nor twice; only that
shard is touched (``Provisioner.up_shard``), so a ``manual`` shard's dead primary is never
started by the monitor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg

from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.ops.cluster import Cluster
from shardctl.ops.monitor.events import Emit, Event
from shardctl.ops.up import Provisioner
from shardctl.state import catalog
from shardctl.state import monitor as kept

LOCK_TIMEOUT = 2.0
"""Seconds to reach a shard's acting primary for its lock."""
REJOIN_RETRY = 30.0
"""Seconds before a failed re-join is tried again."""


class Rejoiner:
    """The re-join thread of one monitor."""

    def __init__(
        self,
        cluster: Cluster,
        declared: Topology,
        *,
        emit: Emit,
        clock: Callable[[], float],
        engine_states: Callable[[Topology], tuple[dict[str, str], set[str]]],
        catalog_lock: threading.Lock,
    ) -> None:
        self.cluster = cluster
        self.declared = declared
        self.emit = emit
        self.clock = clock
        self.engine_states = engine_states
        self._catalog_lock = catalog_lock
        self.rejoin_after = 0.0
        self._thread: threading.Thread | None = None

    def start(self, topology: Topology, record: catalog.RingRecord, healthy: set[str]) -> None:
        """Re-join what ``record`` lists, on a thread, unless one is running already."""
        if self.running():
            return
        self._thread = threading.Thread(
            target=self._reporting,
            args=(topology, record, healthy),
            name="shardctl-monitor-rejoin",
            daemon=True,
        )
        self._thread.start()

    def running(self) -> bool:
        """Whether a re-join is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float = 150.0) -> None:
        """Let a re-join in progress finish (before exiting)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _reporting(self, topology: Topology, record: catalog.RingRecord, healthy: set[str]) -> None:
        try:
            self._rejoin(topology, record, healthy)
        except ShardctlError as exc:
            self.rejoin_after = self.clock() + REJOIN_RETRY
            self.emit(Event("error", f"re-join: {exc}", command="shardctl up"))
        except Exception as exc:  # a bug: said loudly, but the watch goes on
            self.rejoin_after = self.clock() + REJOIN_RETRY
            self.emit(Event("bug", f"re-join: {type(exc).__name__}: {exc}"))

    def _rejoin(self, topology: Topology, record: catalog.RingRecord, healthy: set[str]) -> bool:
        """Re-clone the fenced former primaries as ``up`` does, shard by shard, once their
        engine answers and their shard's acting primary does; True when one was re-joined.

        Under the monitor lock on the shard's acting primary, after reading the catalog
        again: two monitors never re-clone one node at the same time, nor twice."""
        if self.clock() < self.rejoin_after:
            return False
        _, unknown = self.engine_states(topology)
        ready = [
            topology.node(name)
            for name in record.rejoin
            if topology.node(name).container not in unknown and topology.node(name).shard in healthy
        ]
        credentials = self.cluster.credentials()
        done = False
        for node in ready:
            primary = topology.shard_nodes(node.shard)[0]
            try:
                with pg.connect(primary, credentials, "postgres", timeout=LOCK_TIMEOUT) as held:
                    row = held.execute(kept.TRY_LOCK, kept.lock_key(node.shard)).fetchone()
                    if row is None or not row[0]:
                        continue  # another monitor is at it
                    current = catalog.read_any(self.declared, credentials).record()
                    if node.name not in current.rejoin:
                        continue
                    done = self._rejoin_one(topology, current, node, healthy) or done
            except (DatabaseUnavailable, psycopg.Error):
                continue
        return done

    def _rejoin_one(
        self, topology: Topology, current: catalog.RingRecord, node: Node, healthy: set[str]
    ) -> bool:
        credentials = self.cluster.credentials()
        self.emit(
            Event("rejoin", f"re-joining {node.name} as a replica (as `shardctl up`)", node.shard)
        )
        provisioner = Provisioner(topology, self.cluster.engines, credentials, rejoin=[node.name])
        try:
            provisioner.up_shard(node.shard)
        except ShardctlError as exc:
            self.rejoin_after = self.clock() + REJOIN_RETRY
            self.emit(
                Event(
                    "error",
                    f"re-join of {node.name} failed (tried again in {REJOIN_RETRY:g}s): {exc}",
                    node.shard,
                    "shardctl up",
                )
            )
            return False
        with self._catalog_lock:
            catalog.forget_rejoined(
                self.declared,
                credentials,
                [node.name],
                f"monitor: re-joined {node.name}",
                timeout=LOCK_TIMEOUT * 2,
                strict=False,
            )
        self.emit(Event("rejoined", f"{node.name} re-joined as a replica", node.shard))
        return True
