"""What ``shardctl ring`` shows: the live ring from the catalog, each node's share of the circle,
and each primary's view of it (the epoch it holds, disagreements, drift from the topology file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Topology
from shardctl.state import catalog


@dataclass(frozen=True)
class RingNode:
    """One ring node (a shard) and what it owns."""

    name: str
    share: float
    """The fraction of the circle it owns."""
    ranges: int
    """How many separate ranges of the circle that is."""


@dataclass(frozen=True)
class RingReport:
    """What ``shardctl ring`` shows: the current ring, and each primary's view of it."""

    cluster: str
    epoch: int
    algorithm: str
    vnodes: int
    created_at: datetime | None
    nodes: list[RingNode]
    primaries: dict[str, int | None]
    """Shard -> the epoch its primary holds (None: no catalog), every declared shard."""
    problems: list[str]
    """Disagreements among primaries."""
    warnings: list[str]
    """Where the topology file disagrees with the catalog."""


def describe(topology: Topology, credentials: Credentials, *, timeout: float = 5.0) -> RingReport:
    """The current ring from the catalog: nodes, shares, epochs per primary, disagreements."""
    view = catalog.read(topology, credentials, timeout=timeout)
    record = view.record()
    ring = record.ring()
    shares = ring.shares()
    counts = dict.fromkeys(ring.nodes, 0)
    for piece in ring.ranges():
        counts[piece.owner] += 1
    return RingReport(
        cluster=topology.cluster,
        epoch=record.epoch,
        algorithm=record.algorithm,
        vnodes=record.vnodes,
        created_at=record.created_at,
        nodes=[RingNode(name, shares[name], counts[name]) for name in ring.nodes],
        primaries={
            node.shard: (found.epoch if found else None)
            for node in topology.primaries()
            for found in [view.by_primary.get(node.name)]
        },
        problems=list(view.problems),
        warnings=catalog.drift(topology, record),
    )
