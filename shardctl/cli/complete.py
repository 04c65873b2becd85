"""Shell completion: shard and node names from the topology, per command.

Completion runs at every TAB, so it reads only the topology file (no cluster is contacted);
the roles it knows are the declared ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from shardctl.config.topology import Topology

ROOT_TOPOLOGY: list[Path | None] = [None]
"""The ``-f`` given before the command word, set by the root callback."""


def _topology(ctx: typer.Context) -> Topology | None:
    from shardctl.config.topology import default_path, load
    from shardctl.errors import ShardctlError

    path = ctx.params.get("topology") or ROOT_TOPOLOGY[0]
    parent = ctx.parent.params.get("topology") if ctx.parent is not None else None
    try:
        return load(path or parent or default_path())
    except ShardctlError:
        return None


def shard(ctx: typer.Context, incomplete: str) -> list[str]:
    """The topology's shard names."""
    topology = _topology(ctx)
    names = [s.name for s in topology.spec.shards] if topology is not None else []
    return [name for name in names if name.startswith(incomplete)]


def target(ctx: typer.Context, incomplete: str) -> list[str]:
    """The topology's shard names, then its node names (``psql``, ``dsn``, ``logs``)."""
    topology = _topology(ctx)
    if topology is None:
        return []
    names = [s.name for s in topology.spec.shards] + [n.name for n in topology.nodes]
    given = set(ctx.params.get("targets") or ())
    return [name for name in names if name.startswith(incomplete) and name not in given]


def node(ctx: typer.Context, incomplete: str) -> list[str]:
    """The topology's node names."""
    topology = _topology(ctx)
    names = [n.name for n in topology.nodes] if topology is not None else []
    return [name for name in names if name.startswith(incomplete)]


def replica(ctx: typer.Context, incomplete: str) -> list[str]:
    """``--to``: the replicas of the shard given on the command line (declared roles)."""
    topology = _topology(ctx)
    # While an option's value is completed, click leaves the arguments before it unparsed.
    words = [a for a in ctx.args if not a.startswith("-")]
    shard_name = ctx.params.get("shard") or (words[0] if words else None)
    if topology is None or shard_name is None:
        return []
    return [
        n.name
        for n in topology.nodes
        if n.shard == shard_name and n.index > 0 and n.name.startswith(incomplete)
    ]


def command(ctx: typer.Context, incomplete: str) -> list[str]:
    """``shardctl help``: the command names."""
    root = ctx.find_root()
    group: Any = root.command
    names: list[str] = group.list_commands(root) if hasattr(group, "list_commands") else []
    return [name for name in names if name.startswith(incomplete)]
