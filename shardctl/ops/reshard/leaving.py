"""Remove a shard: move its keys to the remaining shards with the reshard protocol, then
remove its nodes and drop it from ``topology.yaml`` (a text edit that keeps the user's comments).

The data part is a :class:`~shardctl.ops.reshard.coordinator.Rebalancer` run whose plan removes the
shard (``Plan.leaving``): recorded on every primary, that plan is what marks the shard as
leaving. Once it is done the shard owns nothing, and :func:`decommission` takes it away: first
out of the topology file (so no CLI run or Router reaches for it any more), then its containers,
then its volumes unless they are kept. Every step is idempotent, and the recorded plan says
what is left to do, so ``remove-shard NAME --resume`` finishes from wherever a run stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from shardctl.config import topology
from shardctl.config.schema import PORT_STRIDE
from shardctl.config.topology import Topology
from shardctl.errors import TopologyError, UsageError
from shardctl.ops.cluster import Cluster
from shardctl.ops.reshard.coordinator import Rebalancer, State
from shardctl.ops.reshard.joining import record
from shardctl.state import catalog
from shardctl.state.plan import Phase, Plan, finished

AfterStep = Callable[[str], None]
"""Called after each step of the decommission ("topology", "containers"): the tests' hook to
kill the run there, as ``Rebalancer(after_phase=...)`` is for the data phases."""


def _nothing_after(step: str) -> None:
    pass


@dataclass
class Removal:
    """What ``remove-shard`` did."""

    shard: str
    state: State | None
    """The reshard that moved the shard's keys (None: the shard owned none)."""
    topology_edited: bool = False
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    volumes_kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def removal_state(state: State | None, name: str) -> State | None:
    """``state`` (the latest reshard) if it removes ``name`` and has not removed its nodes yet."""
    if state is None or name not in state.plan.leaving or name in state.report.removed:
        return None
    return None if state.phase is Phase.ABORTED else state


def prepare(
    rebalancer: Rebalancer, name: str, *, resume: bool
) -> tuple[State | None, bool, State | None]:
    """Check that ``name`` can be removed now: (the removal to continue, if any; whether the
    shard owns keys in the ring; the latest reshard as read, once: every primary is asked).
    UsageError (exit 2) for an unknown shard, the last shard, another reshard unfinished, or
    nothing to resume."""
    topo = rebalancer.topology
    declared = [s.name for s in topo.spec.shards]
    current = rebalancer.state()
    ongoing = removal_state(current, name)
    if ongoing is not None:
        if not finished(ongoing.phase) and not resume:
            raise UsageError(
                f"shard {name!r} is being removed (reshard {ongoing.plan.id} is "
                f"{ongoing.phase.value}): run `shardctl remove-shard {name} --resume`, or "
                "`shardctl rebalance --abort` to keep it"
            )
        return ongoing, True, current
    if name not in declared:
        raise UsageError(f"no shard named {name!r} in {topo.path} (shards: {', '.join(declared)})")
    if current is not None and not finished(current.phase):
        raise UsageError(
            f"reshard {current.plan.id} is still {current.phase.value}: finish it with "
            "`shardctl rebalance --resume` or `--abort` before removing a shard"
        )
    if resume:
        raise UsageError(f"no removal of {name!r} to resume")
    ring = catalog.read(topo, rebalancer.cluster.credentials()).ring()
    if (name in ring.nodes and len(ring.nodes) == 1) or declared == [name]:
        raise UsageError(f"{name!r} is the last shard: a cluster needs at least one")
    return None, name in ring.nodes, current


def without_shard(current: Topology, name: str) -> tuple[Topology, str]:
    """The topology without shard ``name``, and the file text that declares it.

    The shard's entry is cut from the text, from its dash to the end of the line of its last
    value; every other line, comments included, stays. Nothing is written: see
    :func:`shardctl.ops.reshard.joining.record`.
    """
    path = current.path
    text = path.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert isinstance(root, yaml.MappingNode)
    shards = next(v for k, v in root.value if k.value == "shards")
    if not isinstance(shards, yaml.SequenceNode) or shards.flow_style:
        raise UsageError(
            f"{path}: shards is written in flow style ([...]); remove {name!r} by hand or "
            "write the shards as a block list"
        )
    entry = next(
        (
            item
            for item in shards.value
            if isinstance(item, yaml.MappingNode)
            and any(k.value == "name" and v.value == name for k, v in item.value)
        ),
        None,
    )
    if entry is None or entry.flow_style:
        raise UsageError(f"{path}: shard {name!r} is not a block entry of shards; edit by hand")
    # A shard without an explicit port has one from its place in the list: the shards after
    # the removed one would all move to another port. Their ports are written down instead.
    items = list(shards.value)
    pins: list[tuple[int, str]] = []
    for index, item in enumerate(items[items.index(entry) + 1 :], start=items.index(entry) + 1):
        if not isinstance(item, yaml.MappingNode) or item.flow_style:
            raise UsageError(f"{path}: shard {index} is not a block entry of shards; edit by hand")
        if any(k.value == "port" for k, _ in item.value):
            continue
        port = current.spec.base_port + index * PORT_STRIDE
        pins.append((_line_end(text, item), f"{' ' * item.start_mark.column}port: {port}\n"))
    start = text.rfind("\n", 0, entry.start_mark.index) + 1
    end = _line_end(text, entry)
    edited = text
    for at, line in reversed(pins):
        edited = edited[:at] + line + edited[at:]
    edited = edited[:start] + edited[end:]
    smaller = topology.parse(edited, path)
    remaining = [s.name for s in smaller.spec.shards]
    expected = [s.name for s in current.spec.shards if s.name != name]
    if remaining != expected:
        raise TopologyError(f"{path}: could not remove shard {name!r} from the shards list")
    return smaller, edited


def _line_end(text: str, item: yaml.MappingNode) -> int:
    """Where the line of an entry's last value ends (after its newline)."""
    end = text.find("\n", item.value[-1][1].end_mark.index)
    if end < 0:
        raise UsageError("the topology file must end with a newline to be edited")
    return end + 1


def remove_shard(
    cluster: Cluster,
    rebalancer: Rebalancer,
    name: str,
    *,
    keep_volumes: bool,
    resume: bool = False,
    plan: Plan | None = None,
    after_step: AfterStep = _nothing_after,
) -> Removal:
    """Move ``name``'s keys to the remaining shards, then remove its nodes and its topology
    entry (volumes too unless ``keep_volumes``). Call holding ``rebalancer.exclusive()``.

    ``plan`` is the plan shown to the user (refused if the cluster changed since); with
    ``resume``, an interrupted removal continues from its recorded phase.
    """
    state, owns_keys, current = prepare(rebalancer, name, resume=resume)
    if state is None and owns_keys:
        # Under the coordinator lock (see above): the reshard just read is still the latest.
        state = rebalancer.start(plan, leaving=[name], current=current, read=False)
    if state is not None and state.phase is not Phase.DONE:
        state = rebalancer.run(state)
        if state.phase is not Phase.DONE:
            return Removal(name, state)
    return decommission(cluster, rebalancer, name, state, keep_volumes, after_step)


def decommission(
    cluster: Cluster,
    rebalancer: Rebalancer,
    name: str,
    state: State | None,
    keep_volumes: bool,
    after_step: AfterStep = _nothing_after,
) -> Removal:
    """Take a shard that owns no keys away: topology entry, containers, volumes (idempotent)."""
    removal = Removal(name, state)
    before = cluster.topology
    if any(s.name == name for s in before.spec.shards):
        smaller, text = without_shard(before, name)
        record(smaller, text)
        removal.topology_edited = True
        cluster.resize(smaller)
    after_step("topology")
    engines = cluster.engines
    for container in engines.shard_containers(before, name):
        engines.remove_container(container, stop_timeout=20)
        removal.containers.append(str(container.name))
    # The backup node stops streaming from it at once; its archive stays in the repository.
    note = cluster.follow_archiving()
    if note is not None:
        removal.notes.append(note)
    after_step("containers")
    if keep_volumes:
        removal.volumes_kept = engines.shard_volumes(before, name)
    else:
        removal.volumes = engines.remove_shard_volumes(before, name)
    if state is not None:
        removal.state = rebalancer.record_removed(state, name)
    return removal
