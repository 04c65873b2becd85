"""What the monitor writes on every acting primary besides a failover: its heartbeat, the
failover history, and the current catalog epoch where a primary missed it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.ops.monitor.events import Emit, Event
from shardctl.state import catalog
from shardctl.state import monitor as kept
from shardctl.util import fanout

TIMEOUT = 2.0
"""Seconds to connect to a primary (the monitor's probe timeout)."""


@dataclass(frozen=True)
class Heartbeat:
    """Who is beating: the monitor's identity, host and start."""

    id: str
    host: str
    started_at: datetime


def beat(
    topology: Topology,
    primaries: list[Node],
    credentials: Credentials,
    heartbeat: Heartbeat,
    emit: Emit,
) -> None:
    """The heartbeat on each primary that answered this pass; a failure is reported."""
    database = topology.spec.database

    def put(node: Node) -> None:
        with pg.connect(node, credentials, database, timeout=TIMEOUT) as conn:
            kept.beat(conn, heartbeat.id, heartbeat.host, heartbeat.started_at)

    results = fanout.gather({p.name: partial(put, p) for p in primaries}, timeout=TIMEOUT * 2)
    for name, result in results.items():
        if isinstance(result, BaseException):
            emit(Event("error", f"heartbeat not written on {name}: {pg.failure_reason(result)}"))


def record_failover(
    topology: Topology, credentials: Credentials, event: kept.Failover, emit: Emit
) -> None:
    """An automatic failover in ``shardctl.failovers`` on every acting primary that answers."""
    database = topology.spec.database

    def put(node: Node) -> None:
        with pg.connect(node, credentials, database, timeout=TIMEOUT) as conn:
            kept.record_failover(conn, event)

    results = fanout.gather(
        {p.name: partial(put, p) for p in topology.primaries()}, timeout=TIMEOUT * 3
    )
    missed = [n for n, r in results.items() if isinstance(r, BaseException)]
    if missed:
        emit(Event("note", f"failover history not written on {', '.join(missed)}", event.shard))


def catch_up(
    topology: Topology, credentials: Credentials, view: catalog.CatalogView, emit: Emit
) -> None:
    """Copy the current epoch to an acting primary that answers with an older one of the same
    ring: it did not answer when a role change was published (docs/failover.md). A different
    ring is a reshard's cut-over, which ``rebalance --resume`` finishes."""
    record = view.record()
    behind = [p for p in topology.primaries() if p.name in view.missed]
    if not behind:
        return
    written = catalog.publish(
        topology, credentials, record, primaries=behind, timeout=TIMEOUT, strict=False
    )
    if written:
        emit(Event("note", f"catalog epoch {record.epoch} copied to {', '.join(written)}"))
