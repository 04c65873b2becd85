"""Add a shard to ``topology.yaml``: a text edit that keeps the user's comments and layout."""

from __future__ import annotations

import os

import yaml

from shardctl import topology
from shardctl.errors import TopologyError, UsageError
from shardctl.topology import MAX_REPLICAS, Topology


def with_shard(current: Topology, name: str, replicas: int) -> tuple[Topology, str]:
    """The topology with shard ``name`` appended, and the file text that declares it.

    The new entry goes after the last shard, indented like it, so the user's comments and
    layout stay. Nothing is written: see :func:`record`.
    """
    if any(s.name == name for s in current.spec.shards):
        raise UsageError(f"shard {name!r} is already declared in {current.path}")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise UsageError(f"--replicas must be between 0 and {MAX_REPLICAS}")
    path = current.path
    text = path.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    shards = next(v for k, v in root.value if k.value == "shards")
    if not isinstance(shards, yaml.SequenceNode) or shards.flow_style or not shards.value:
        raise UsageError(
            f"{path}: shards is written in flow style ([...]); add {name!r} by hand or write "
            "the shards as a block list"
        )
    last = shards.value[-1]
    column = last.start_mark.column
    dash = " " * (column - 2) + "- "
    entry = f"{dash}name: {name}\n{' ' * column}replicas: {replicas}\n"
    cut = last.end_mark.index
    head, tail = text[:cut], text[cut:]
    if not head.endswith("\n"):
        head += "\n"
    edited = head + entry + tail
    new = topology.parse(edited, path)
    if new.spec.shards[-1].name != name:
        raise TopologyError(f"{path}: could not add shard {name!r} after the last shard")
    return new, edited


def record(topology: Topology, text: str) -> None:
    """Replace the topology file with ``text``, atomically."""
    tmp = topology.path.with_name(f".{topology.path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, topology.path)
