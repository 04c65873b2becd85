"""Rolling changes: restart or recreate a cluster's nodes without taking a shard down.

One shard at a time (``parallel`` allows more). Within a shard::

    replicas       each restarted (or recreated on its volume), then waited for until it
                   streams again, before the next
    switchover     to an up-to-date replica, through the same fence as ``shardctl switchover``
                   (:class:`shardctl.ops.rolechange.RoleChanger`): nothing acknowledged is lost,
                   Routers wait out the fence; the old primary is stopped, and started again as
                   a replica -- which is its restart
    old primary    recreated if its container must change, and waited for until it streams

A shard without a streaming replica, or ``switchover=False``, restarts its primary in place:
its writes pause until it accepts them again, and that pause is reported. A change killed half
way converges when run again: what was restarted no longer needs it (``pg_settings`` says no
restart is pending, the container matches), so it is not visited twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import admin
from shardctl.docker.engine import Engines
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.ops.changes import Change
from shardctl.ops.nodes import Action, NodeWork
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.ops.rolechange import RoleChanger
from shardctl.util import fanout


@dataclass
class ShardRoll:
    """What a rolling change did to one shard."""

    shard: str
    nodes: dict[str, Action] = field(default_factory=dict)
    switchover: str = ""
    """``old → new`` when the primary moved; empty when it was restarted in place."""
    write_pause: float = 0.0
    """Seconds the shard's writes were refused or waited (the fence, or the in-place restart)."""

    def summary(self) -> str:
        """One line: what was done, and the write pause."""
        done = ", ".join(f"{name} {action.value}" for name, action in self.nodes.items())
        if self.switchover:
            return f"{done}; switchover {self.switchover}, write pause {self.write_pause:.2f}s"
        if self.write_pause:
            return f"{done}; primary restarted in place, write pause {self.write_pause:.2f}s"
        return f"{done}; primary untouched, no write pause"


class Roller(NodeWork):
    """Rolling restarts and recreations of one cluster's nodes (acting roles)."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials,
        reporter: Reporter = quiet_reporter,
        *,
        switchover: bool = True,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        super().__init__(topology, engines, credentials, reporter)
        self.switchover = switchover
        self.log = log
        self._lock = threading.Lock()

    def roll(
        self, work: Mapping[str, Mapping[str, Change]], *, parallel: int = 1, timeout: float = 600.0
    ) -> list[ShardRoll]:
        """Restart or recreate ``work`` (shard → node → change), ``parallel`` shards at once."""
        shards = [s.name for s in self.topology.spec.shards if work.get(s.name)]
        if not shards:
            return []
        results: list[ShardRoll] = []
        for start in range(0, len(shards), max(1, parallel)):  # ``parallel`` shards at a time
            batch = shards[start : start + max(1, parallel)]
            done = fanout.each(
                {s: partial(self._roll_shard, s, work[s], timeout) for s in batch},
                interrupted=self._stop.set,
                prefix="roll",
            )
            results += done.values()
        return results

    def _roll_shard(self, shard: str, todo: Mapping[str, Change], timeout: float) -> ShardRoll:
        self._check_stop()
        deadline = time.monotonic() + timeout
        result = ShardRoll(shard)
        primary, *replicas = self.topology.shard_nodes(shard)
        lowered = self._lowered(primary) if primary.name in todo and replicas else []
        if lowered:  # a standby must never run with less than its primary: primary first
            self.report(shard, f"{', '.join(lowered)} lowered: the primary restarts first")
            result.write_pause = self._in_place(primary, todo[primary.name], deadline, result)
            with self._connect(primary) as conn:  # its new settings are in its WAL by now
                lsn = admin.flush_lsn(conn)
            for replica in replicas:  # what a replica replayed is what it checks at start
                self.wait_streaming(replica, deadline)
                self.wait_replayed(replica, lsn, deadline)
        for replica in replicas:
            if replica.name in todo:
                self._check_stop()
                result.nodes[replica.name] = self._cycle(replica, todo[replica.name], deadline)
                self.wait_streaming(replica, deadline)
        if primary.name not in todo or lowered:
            self.report(shard, result.summary())
            return result
        self._check_stop()
        streaming = [r for r in replicas if self._streams(r)]
        if self.switchover and streaming:
            changer = RoleChanger(
                self.topology, self.engines, self._creds(), log=self.log, reporter=self.report
            )
            change = changer.switchover(shard)
            result.switchover = f"{change.old_primary} → {change.new_primary}"
            result.write_pause = change.write_pause
            with self._lock:
                self.topology = self.topology.with_acting(
                    dict(self.topology.acting) | {shard: change.new_primary}
                )
                old = self.topology.node(primary.name)
            action = Action.RESTARTED
            if todo[primary.name] is Change.RECREATE:
                action = self._cycle(old, Change.RECREATE, deadline)
            result.nodes[primary.name] = action
            self.wait_streaming(old, deadline)
        else:
            result.write_pause = self._in_place(primary, todo[primary.name], deadline, result)
        self.report(shard, result.summary())
        return result

    def _in_place(self, primary: Node, change: Change, deadline: float, into: ShardRoll) -> float:
        """Restart (or recreate) the primary where it is; the seconds its writes paused."""
        started = time.monotonic()
        into.nodes[primary.name] = self._cycle(primary, change, deadline)
        self.wait_ready(primary, deadline)
        return time.monotonic() - started

    def _lowered(self, primary: Node) -> list[str]:
        """The settings a standby must match that this change lowers (read on the primary,
        where ``up`` wrote them already)."""
        try:
            with self._connect(primary) as conn:
                return admin.lowered_by_restart(conn)
        except (DatabaseUnavailable, ShardctlError):
            return []

    def _streams(self, replica: Node) -> bool:
        try:
            with self._connect(replica) as conn:
                row = conn.execute("SELECT status FROM pg_catalog.pg_stat_wal_receiver").fetchone()
        except (DatabaseUnavailable, ShardctlError):
            return False
        return row is not None and row[0] == "streaming"

    def _cycle(self, node: Node, change: Change, deadline: float) -> Action:
        """Restart ``node``'s container, or make it again from today's spec on its volume."""
        container = self.engines.container(node)
        if container is None:
            raise ShardctlError(f"{node.name}: no container to restart: run `shardctl up`")
        if change is Change.RECREATE:
            self.report(node.name, "recreating (configuration changed)")
            spec = self.spec(node)
            self.engines.remove_container(container, stop_timeout=60)
            made = self.engines.create_container(spec, self._secrets(spec, node), node.placement)
            self.engines.start(made)
            return Action.RECREATED
        self.report(node.name, "restarting")
        self.engines.restart(container, timeout=60)
        return Action.RESTARTED
