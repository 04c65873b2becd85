"""Take a cluster's Docker resources away: containers, then networks, volumes only when asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from shardctl.config.topology import Topology
from shardctl.docker.engine import Engines
from shardctl.util import fanout

if TYPE_CHECKING:
    from shardctl.docker.records import Container


@dataclass
class DownReport:
    """What ``down`` removed."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


def down(topology: Topology, engines: Engines, *, volumes: bool = False) -> DownReport:
    """Remove the cluster's containers, then its networks; volumes only when asked."""
    report = DownReport()
    containers = engines.cluster_containers(topology)

    def remove(container: Container) -> str:
        engines.remove_container(container, stop_timeout=20)
        return container.name

    removed = fanout.each({c.id: partial(remove, c) for c in containers})
    report.containers = sorted(removed.values())
    report.networks = engines.remove_networks(topology)
    if volumes:
        report.volumes = engines.remove_volumes(topology)
    return report
