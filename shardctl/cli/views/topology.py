"""``validate``: the declared cluster as a table and as data (imports only the topology model,
so validating a file stays quick)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from shardctl.config.topology import Topology


def topology_summary(topology: Topology) -> Table:
    """What ``validate`` prints."""
    spec = topology.spec
    table = Table(title=f"cluster {spec.cluster} ({topology.path})", title_justify="left")
    pooled = bool(topology.pooled_nodes())
    for column in ("shard", "node", "role", "engine", "address") + (("pooler",) if pooled else ()):
        table.add_column(column)
    for node in topology.nodes:
        pooler = (
            f"{node.placement.advertise}:{node.pooler_port}"
            if node.pooler_port is not None
            else "-"
        )
        table.add_row(
            node.shard,
            node.name,
            node.role.value,
            node.placement.name,
            f"{node.placement.advertise}:{node.host_port}",
            *((pooler,) if pooled else ()),
        )
    return table


def topology_facts(topology: Topology) -> dict[str, Any]:
    """The summary as data."""
    spec = topology.spec
    return {
        "cluster": spec.cluster,
        "image": spec.image,
        "database": spec.database,
        "ring": {"algorithm": spec.ring.algorithm.value, "vnodes": spec.ring.vnodes},
        "tables": [{"name": t.name, "key": t.key} for t in spec.tables],
        "shards": [{"name": s.name, "replicas": s.replicas} for s in spec.shards],
        "nodes": [
            {
                "shard": n.shard,
                "name": n.name,
                "role": n.role.value,
                "engine": n.placement.name,
                "address": n.placement.advertise,
                "port": n.host_port,
                "pooler_port": n.pooler_port,
            }
            for n in topology.nodes
        ],
    }
