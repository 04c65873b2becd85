"""Add a shard: provision it empty, then declare it in ``topology.yaml`` (a text edit that
keeps the user's comments and layout). It owns no keys until a rebalance moves some to it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import yaml

from shardctl.config import topology
from shardctl.config.schema import MAX_REPLICAS, PORT_STRIDE
from shardctl.config.topology import Topology
from shardctl.errors import ShardctlError, TopologyError, UsageError
from shardctl.ops.cluster import Cluster
from shardctl.ops.reporting import Reporter
from shardctl.ops.reshard.coordinator import Rebalancer
from shardctl.ops.up import UpReport
from shardctl.state import catalog


def add_shard(
    cluster: Cluster,
    name: str,
    replicas: int,
    *,
    timeout: float,
    reporter: Reporter,
    engine: str | None = None,
    replica_engines: Sequence[str] = (),
) -> UpReport:
    """Provision shard ``name`` with ``replicas`` replicas, then record it in the topology file.

    Recorded only once it runs, so routers that re-read the file find it reachable; the ring
    is unchanged (the shard joins owning no keys).
    """
    ring = catalog.read(cluster.topology, cluster.credentials()).ring()
    if name in ring.nodes:
        raise UsageError(f"shard {name!r} is already in the ring")
    kept = cluster.engines.shard_volumes(cluster.topology, name)
    latest = Rebalancer(cluster).state()
    if kept and latest is not None and name in latest.plan.leaving:
        # Its old data would come back as rows nobody owns (ghosts, duplicates).
        raise UsageError(
            f"the volumes of the removed shard {name!r} were kept ({', '.join(kept)}): remove "
            "them (`docker volume rm`) or add the shard under another name"
        )
    bigger, text = with_shard(cluster.topology, name, replicas, engine, replica_engines)
    report = Cluster(bigger, cluster.engines).up(timeout=timeout, reporter=reporter)
    record(bigger, text)
    if bigger.spec.backup is not None:
        report.notes += _first_base_backup(cluster, bigger, name, reporter)
    return report


def _first_base_backup(
    cluster: Cluster, bigger: Topology, name: str, reporter: Reporter
) -> list[str]:
    """A base backup of the new shard (empty, so quick): restore points need one of every
    shard. A failure is said, not raised: the shard is up and recorded."""
    from shardctl.ops.backup import base

    reporter(name, "base backup (restore points need one of every shard)")
    try:
        made = base.take_shard(bigger, cluster.engines, cluster.credentials(), name)
    except ShardctlError as exc:
        return [f"{name}: no base backup yet ({exc}): run `shardctl backup`"]
    reporter(name, f"base backup {made.name}")
    return []


def with_shard(
    current: Topology,
    name: str,
    replicas: int,
    engine: str | None = None,
    replica_engines: Sequence[str] = (),
) -> tuple[Topology, str]:
    """The topology with shard ``name`` appended, and the file text that declares it; on
    ``engine`` (a name from ``engines:``) with replica i on ``replica_engines[i-1]``.

    The new entry goes after the last shard, indented like it, so the user's comments and
    layout stay. Nothing is written: see :func:`record`.
    """
    if any(s.name == name for s in current.spec.shards):
        raise UsageError(f"shard {name!r} is already declared in {current.path}")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise UsageError(f"--replicas must be between 0 and {MAX_REPLICAS}")
    for given in (engine, *replica_engines):
        if given is not None and given not in current.spec.engines:
            known = ", ".join(sorted(current.spec.engines)) or "none declared"
            raise UsageError(f"unknown engine {given!r} (engines in {current.path}: {known})")
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
    port = _free_port(current, replicas)
    if port is not None:
        entry += f"{' ' * column}port: {port}\n"
    for key, value in (("engine", engine), ("replica_engines", _flow(replica_engines))):
        if value:
            entry += f"{' ' * column}{key}: {value}\n"
    cut = last.end_mark.index
    head, tail = text[:cut], text[cut:]
    if not head.endswith("\n"):
        head += "\n"
    edited = head + entry + tail
    new = topology.parse(edited, path)
    if new.spec.shards[-1].name != name:
        raise TopologyError(f"{path}: could not add shard {name!r} after the last shard")
    return new, edited


def _free_port(current: Topology, replicas: int) -> int | None:
    """None when the new last shard's default ports are the first free ones; else the first
    free slot. After a remove-shard the later shards keep their ports written down, so the
    removed shard's ports are free again: a shard added back under its name gets them."""
    taken = {(n.placement.endpoint, n.host_port) for n in current.nodes}
    base = current.spec.base_port
    for slot in itertools.count():
        port = base + slot * PORT_STRIDE
        if port + replicas > 65535:
            raise UsageError(f"no free port for a new shard above {base}: give one by hand")
        if all((None, port + i) not in taken for i in range(replicas + 1)):
            return None if slot == len(current.spec.shards) else port
    raise AssertionError("unreachable")


def _flow(names: Sequence[str]) -> str:
    """A YAML flow list of engine names (validated as names by the topology afterwards)."""
    return f"[{', '.join(names)}]" if names else ""


def record(topology: Topology, text: str) -> None:
    """Replace the topology file with ``text``, atomically."""
    tmp = topology.path.with_name(f".{topology.path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, topology.path)
