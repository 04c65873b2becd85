"""Where a node is reached: its server's and its pooler's ports and addresses, from this machine
and from another node's engine. Pure functions of the topology model."""

from __future__ import annotations

from typing import Literal

from shardctl.config.topology import Node, Topology
from shardctl.errors import UsageError

CONTAINER_PORT = 5432
"""The port a node's server listens on inside its container."""
POOLER_PORT = 6432
"""The port PgBouncer listens on inside its container."""


def pooler_target(node: Node) -> tuple[str, int]:
    """Where the pooler of ``node`` sends its server connections: the node's container on the
    engine's network (a pooler always runs on its node's engine)."""
    return node.container, CONTAINER_PORT


Via = Literal["direct", "pooler"]
"""How a client reaches a node: its server's published port, or its PgBouncer's."""


def address(node: Node, via: Via = "direct") -> tuple[str, int]:
    """Host and port that reach ``node`` from here: its engine's advertised address (the host
    the engine runs on, as clients and other hosts know it) and the node's published port
    (``via="pooler"``: its PgBouncer's)."""
    if via == "pooler":
        if node.pooler_port is None:
            raise UsageError(f"{node.name} has no pooler: declare pooler: in the topology")
        return node.placement.advertise, node.pooler_port
    return node.placement.advertise, node.host_port


def upstream_address(topology: Topology, replica: Node) -> tuple[str, int]:
    """Host and port a replica reaches its shard's acting primary on, from its own engine:
    the primary's container on a shared engine, else the primary's advertised address and
    published port (container names mean nothing on another host)."""
    primary = topology.node(replica.primary_name)
    if primary.placement.name == replica.placement.name:
        return replica.primary_container, CONTAINER_PORT
    return address(primary)
