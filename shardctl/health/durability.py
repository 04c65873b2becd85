"""The durability policy of ``replication: sync`` shards: a pure decision, no I/O.

A sync shard's primary acknowledges a commit once a standby named in its
``synchronous_standby_names`` has it. When no standby streams, ``durability`` decides:

``required`` (what a bare ``sync`` means)
    the setting stays: commits wait (the shard's writes block) until a standby streams again.
``preferred``
    after ``degrade_after`` seconds without a streaming standby, the setting is emptied: the
    primary acknowledges as async, and the shard is *degraded* until a standby streams again,
    when the setting is restored.

:func:`decide` turns the observed facts, the recorded degradations
(:mod:`shardctl.state.durability`) and the time into one :class:`Decision` per shard;
:mod:`shardctl.ops.durability` applies them. :func:`sync_detail` says the same thing for
``status`` and ``verify-replication`` from the facts alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from shardctl.config.schema import Durability, Replication
from shardctl.config.topology import Node, Topology
from shardctl.health.facts import ClusterFacts, NodeFacts
from shardctl.state.durability import Record


class State(StrEnum):
    """Where a shard's durability stands."""

    ASYNC = "async"
    """``replication: async`` (or no replica to wait for): nothing to decide."""
    SYNCHRONOUS = "synchronous"
    """A standby streams: every acknowledged commit is on it."""
    WAITING = "waiting"
    """``preferred``, no standby for less than ``degrade_after``: commits wait meanwhile."""
    DEGRADED = "degraded"
    """``preferred``, no standby: the primary acknowledges as async."""
    BLOCKED = "blocked"
    """``required``, no standby: commits wait until one streams."""
    UNKNOWN = "unknown"
    """The primary did not answer: nothing is changed."""


@dataclass(frozen=True)
class Decision:
    """What one shard's primary should do now, and the record to keep for it."""

    shard: str
    primary: str
    state: State
    standby_names: str | None
    """The ``synchronous_standby_names`` its primary must have; None: leave it as it is."""
    current_names: str | None
    """What it has (None: it did not answer)."""
    record: Record | None
    """The shard's durability record from now on (None: no record)."""
    missing: tuple[str, ...] = ()
    """Its replicas that do not stream, each with why (``name (reason)``)."""
    detail: str = ""

    @property
    def resets_setting(self) -> bool:
        """Whether the primary's setting must change."""
        return self.standby_names is not None and self.standby_names != self.current_names


def standby_names(topology: Topology, primary: Node) -> str:
    """The ``synchronous_standby_names`` of a shard's primary when it replicates synchronously:
    any one of the shard's other nodes (by ``application_name``); empty under async."""
    others = [n.name for n in topology.shard_nodes(primary.shard) if n.name != primary.name]
    if topology.replication(primary.shard) is not Replication.SYNC or not others:
        return ""
    return "ANY 1 ({})".format(", ".join(f'"{name}"' for name in others))


def streaming_standbys(facts: NodeFacts, replicas: list[Node]) -> list[str]:
    """The shard's replicas the primary streams to, caught up (walsender ``streaming``)."""
    slots = {r.slot: r.name for r in replicas}
    return sorted(
        slots[row.slot_name]
        for row in facts.replication
        if row.slot_name in slots and row.state == "streaming"
    )


def _missing(cluster: ClusterFacts, replicas: list[Node], streaming: list[str]) -> tuple[str, ...]:
    found = []
    for replica in replicas:
        if replica.name in streaming:
            continue
        observed = cluster.of(replica.name)
        why = observed.error or "does not stream"
        found.append(f"{replica.name} ({why})")
    return tuple(found)


def clock(seconds: float) -> str:
    """A moment as the records keep it, for people: ``2026-12-07 01:02:03 UTC``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def decide(
    topology: Topology,
    facts: ClusterFacts,
    records: Mapping[str, Record],
    now: float,
) -> list[Decision]:
    """The policy, shard by shard (see the module docstring); ``now`` in seconds since the
    epoch, like the records' times."""
    shards = topology.spec.shards
    return [_decide(topology, facts, records.get(s.name), s.name, now) for s in shards]


def _decide(
    topology: Topology, facts: ClusterFacts, record: Record | None, shard: str, now: float
) -> Decision:
    primary, *replicas = topology.shard_nodes(shard)
    observed = facts.of(primary.name).facts
    if observed is None:
        return Decision(shard, primary.name, State.UNKNOWN, None, None, record,
                        detail=f"{primary.name} did not answer")  # fmt: skip
    current, full = observed.synchronous_standby_names, standby_names(topology, primary)
    if not full:
        return Decision(shard, primary.name, State.ASYNC, full, current, None)
    streaming = streaming_standbys(observed, replicas)
    if streaming:
        was = " (sync restored)" if record is not None and record.degraded else ""
        return Decision(shard, primary.name, State.SYNCHRONOUS, full, current, None,
                        detail=f"synchronous: {', '.join(streaming)}{was}")  # fmt: skip
    missing = _missing(facts, replicas, streaming)
    names = tuple(m.split(" ", 1)[0] for m in missing)
    spec = topology.replication_spec(shard)
    if spec.durability is Durability.REQUIRED:
        return Decision(shard, primary.name, State.BLOCKED, full, current, None, missing,
                        blocked_detail(shard, missing))  # fmt: skip
    since = record.no_standby_since if record is not None else now
    degraded_since = record.degraded_since if record is not None else None
    if degraded_since is None and (not current or now - since >= spec.degrade_after):
        degraded_since = now  # the delay has passed (or the setting was emptied already)
    if degraded_since is not None:
        return Decision(shard, primary.name, State.DEGRADED, "", current,
                        Record(shard, since, degraded_since, names), missing,
                        degraded_detail(missing, degraded_since))  # fmt: skip
    return Decision(shard, primary.name, State.WAITING, full, current,
                    Record(shard, since, None, names), missing,
                    waiting_detail(missing, since, spec.degrade_after))  # fmt: skip


def blocked_detail(shard: str, missing: tuple[str, ...]) -> str:
    """Why a ``required`` shard's writes wait, and what unblocks them."""
    first = missing[0].split(" ", 1)[0] if missing else "a replica"
    return (
        f"writes block: replication sync, durability required, and no standby streams "
        f"(missing: {', '.join(missing) or 'no replica'}); they resume when {first} streams "
        f"again (`shardctl up` once its host is back), or give {shard} a second replica on a "
        "third host (`ANY 1` of two stays writable through one host's loss); "
        "`durability: preferred` would acknowledge as async instead"
    )


def degraded_detail(missing: tuple[str, ...], since: float | None) -> str:
    """What a degraded ``preferred`` shard does, and what restores it."""
    when = f" since {clock(since)}" if since is not None else ""
    return (
        f"degraded: acknowledging writes as async{when}, no synchronous standby "
        f"(missing: {', '.join(missing) or 'no replica'}); a failover now may lose them; "
        "sync comes back as soon as a standby streams (`shardctl up` once its host is back)"
    )


def waiting_detail(missing: tuple[str, ...], since: float, delay: float) -> str:
    """A ``preferred`` shard without a standby, not yet degraded: its commits wait."""
    return (
        f"no synchronous standby since {clock(since)} (missing: {', '.join(missing)}): "
        f"writes wait, and go async {delay:g} s after that (durability: preferred) at the "
        "next `shardctl monitor` pass, `status`, `verify-replication`, `up` or `failover`"
    )


def sync_detail(
    topology: Topology, facts: ClusterFacts, primary: Node, replicas: list[Node]
) -> tuple[bool, str]:
    """Whether a sync shard's primary has a synchronous standby now, and the line that says
    so or what is wrong (degraded, blocked, waiting), from the facts alone."""
    observed = facts.of(primary.name).facts
    assert observed is not None
    synchronous = [
        r.application_name
        for r in observed.replication
        if r.slot_name in {n.slot for n in replicas}
        and r.state == "streaming"
        and r.sync_state in ("sync", "quorum")
    ]
    if synchronous and observed.synchronous_standby_names:
        return True, f"synchronous: {', '.join(sorted(synchronous))}"
    streaming = streaming_standbys(observed, replicas)
    missing = _missing(facts, replicas, streaming)
    if not observed.synchronous_standby_names:
        if streaming:
            return False, (
                f"degraded: acknowledging writes as async although {', '.join(streaming)} "
                "streams again; the next `status`, `verify-replication`, `up` or monitor pass "
                "restores sync"
            )
        return False, degraded_detail(missing, None)
    if topology.replication_spec(primary.shard).durability is Durability.REQUIRED:
        return False, blocked_detail(primary.shard, missing)
    return False, (
        f"no synchronous standby (missing: {', '.join(missing) or 'no replica'}): writes wait "
        "until one streams, or go async once the degradation delay has passed (durability: "
        "preferred)"
    )
