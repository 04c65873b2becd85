"""Replication checks: the declared topology plus observed facts become findings.

Pure functions, no I/O. :func:`replication_checks` judges one
:class:`~shardctl.health.facts.ClusterFacts` (the facts ``status`` shows too, as
:func:`shardctl.health.status.status_rows`); :mod:`shardctl.health.measured` judges what
:mod:`shardctl.health.verify` measured (a canary row, table checksums). Health facts sit below
this module and never import it.

Every finding is a :class:`Check`: one shard, one node, one named check, passed, failed or
skipped (not checkable because the node, or the primary it is compared with, did not answer;
that cause is itself a failed ``reachable`` check). Checks always come in the same set for the
same topology, so a CI system sees the same test cases on green and red runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from shardctl.config import addresses
from shardctl.config.constants import BACKUP_SLOT
from shardctl.config.schema import HealthSpec, PoolerSpec, Replication, Role
from shardctl.config.topology import Node, Topology
from shardctl.db.poolers import PoolerObservation
from shardctl.health import durability
from shardctl.health.facts import (
    ClusterFacts,
    ContainerState,
    NodeFacts,
    NodeObservation,
)
from shardctl.util.text import duration_text, size_text

REACHABLE = "reachable"
PRIMARY = "one-primary"
UNDECLARED = "undeclared"
RECOVERY = "in-recovery"
UPSTREAM = "upstream"
SYSTEM_ID = "system-id"
TIMELINE = "timeline"
WALSENDER = "walsender"
SLOT = "slot"
LAG_BYTES = "lag-bytes"
LAG_SECONDS = "lag-seconds"
SYNC = "sync"
CANARY = "canary"
POOLER = "pooler"
POOLER_WAITING = "pooler-waiting"
PENDING_RESTART = "pending-restart"
"""Shown, never failed: settings a restart has yet to apply (``shardctl up`` rolls it)."""
DEEP_PREFIX = "deep:"

ORDER = (
    REACHABLE,
    PRIMARY,
    UNDECLARED,
    RECOVERY,
    UPSTREAM,
    SYSTEM_ID,
    TIMELINE,
    WALSENDER,
    SLOT,
    LAG_BYTES,
    LAG_SECONDS,
    CANARY,
    POOLER,
    POOLER_WAITING,
)
"""The order checks are listed in, per node; ``deep:<table>`` checks come last."""

BASE_BACKUP_APP = "pg_basebackup"
BAD_WAL_STATUS = ("lost", "unreserved")


@dataclass(frozen=True)
class Check:
    """One finding: a named check of one node, passed, failed or skipped, and why."""

    shard: str
    node: str
    check: str
    ok: bool
    detail: str
    seconds: float | None = None
    """How long the checked thing took, when that is what was measured (probe, canary)."""
    skipped: bool = False
    """Not checkable (a node did not answer); ``ok`` is True so it never fails on its own."""

    @property
    def result(self) -> str:
        """``pass``, ``fail`` or ``skip``."""
        return "skip" if self.skipped else "pass" if self.ok else "fail"

    @property
    def line(self) -> str:
        """The finding in one line: node, check, reason."""
        return f"{self.node}: {self.check}: {self.detail}"


def passed(node: Node, check: str, detail: str, seconds: float | None = None) -> Check:
    """A passed check of ``node``."""
    return Check(node.shard, node.name, check, True, detail, seconds)


def failed(node: Node, check: str, detail: str, seconds: float | None = None) -> Check:
    """A failed check of ``node``."""
    return Check(node.shard, node.name, check, False, detail, seconds)


def skipped(node: Node, check: str, why: str) -> Check:
    """A check of ``node`` that could not be made."""
    return Check(node.shard, node.name, check, True, f"not checked: {why}", skipped=True)


def all_passed(checks: Iterable[Check]) -> bool:
    """True when no check failed."""
    return all(c.ok for c in checks)


def sort_checks(topology: Topology, checks: Iterable[Check]) -> list[Check]:
    """Checks in topology order (per shard, primary first), then in :data:`ORDER` per node."""
    node_rank = {node.name: i for i, node in enumerate(topology.nodes)}

    def key(check: Check) -> tuple[int, str, int, str]:
        rank = ORDER.index(check.check) if check.check in ORDER else len(ORDER)
        return node_rank.get(check.node, len(node_rank)), check.node, rank, check.check

    return sorted(checks, key=key)


# ---------------------------------------------------------------- facts → checks


def replication_checks(facts: ClusterFacts, limits: HealthSpec) -> list[Check]:
    """Every check that the observed facts alone decide, for every declared node."""
    topology = facts.topology
    checks: list[Check] = []
    for shard in topology.spec.shards:
        primary, *replicas = topology.shard_nodes(shard.name)
        checks += [reachable_check(facts.of(node.name)) for node in (primary, *replicas)]
        checks.append(primary_check(facts, primary, replicas))
        checks.append(undeclared_check(facts.of(primary.name), replicas))
        if topology.replication(shard.name) is Replication.SYNC:
            checks.append(sync_check(facts, primary, replicas))
        for replica in replicas:
            checks += replica_checks(facts, facts.of(replica.name), limits)
    checks += undeclared_containers(topology, facts.undeclared)
    for obs in facts.nodes:
        if obs.facts is not None and obs.facts.pending_restart:
            names = ", ".join(obs.facts.pending_restart)
            checks.append(
                Check(
                    obs.node.shard,
                    obs.node.name,
                    PENDING_RESTART,
                    True,
                    f"a restart is pending for {names}: `shardctl up` restarts it, rolling",
                )
            )
    for pooled in facts.poolers:
        checks += pooler_checks(pooled, facts.topology.pooler(pooled.node.shard))
    return checks


def pooler_checks(obs: PoolerObservation, spec: PoolerSpec | None) -> list[Check]:
    """The pooler of a node: it answers, points at the node, reaches a server in the node's
    acting role; and no more clients wait than ``max_waiting``."""
    node = obs.node
    name = node.pooler_container
    facts = obs.facts
    if facts is None:
        why = f"pooler {name}: {obs.error}"
        return [failed(node, POOLER, why), skipped(node, POOLER_WAITING, f"pooler {name} down")]
    host, port = addresses.pooler_target(node)
    if (facts.host, facts.port) != (host, port):
        found = failed(
            node,
            POOLER,
            f"pooler {name} points at {facts.host}:{facts.port}, not its node {host}:{port}",
        )
    elif facts.server_in_recovery is None:
        found = failed(node, POOLER, f"pooler {name} answers, its server not: {facts.server_error}")
    elif facts.server_in_recovery != (node.role is Role.REPLICA):
        found = failed(
            node,
            POOLER,
            f"pooler {name} reaches a server {'in' if facts.server_in_recovery else 'out of'} "
            f"recovery, but {node.name} is the acting {node.role.value}",
        )
    else:
        found = passed(
            node,
            POOLER,
            f"pooler {name} ({facts.pool_mode}) -> {host}:{port}, {facts.servers_active} active "
            f"+ {facts.servers_idle} idle server connections",
        )
    limit = spec.max_waiting if spec is not None else 0
    waiting = (passed if facts.clients_waiting <= limit else failed)(
        node,
        POOLER_WAITING,
        f"{facts.clients_waiting} client(s) waiting on pooler {name} (at most {limit}), "
        f"longest {facts.max_wait_seconds:.1f} s",
    )
    return [found, waiting]


def reachable_check(obs: NodeObservation) -> Check:
    """The node's container runs and its server answered the probe."""
    node = obs.node
    if obs.facts is not None:
        seconds = obs.probe_seconds
        return passed(node, REACHABLE, f"answered in {duration_text(seconds)}", seconds)
    if obs.container is ContainerState.MISSING:
        what = "replica" if node.role is Role.REPLICA else "primary"
        return failed(node, REACHABLE, f"missing: declared {what} has no container")
    if obs.container is ContainerState.UNREACHABLE:
        return failed(node, REACHABLE, obs.error or "its engine does not answer")
    if obs.container is not ContainerState.RUNNING:
        return failed(node, REACHABLE, f"container {obs.container.value}")
    return failed(node, REACHABLE, f"no answer: {obs.error or 'unknown error'}", obs.probe_seconds)


def primary_check(facts: ClusterFacts, primary: Node, replicas: list[Node]) -> Check:
    """Exactly one node of the shard is out of recovery, and it is the catalog's primary (the
    declared one, unless a switchover or failover changed it); two are a split brain."""
    shard_obs = [facts.of(n.name) for n in (primary, *replicas)]
    primaries = [o.node.name for o in shard_obs if o.facts is not None and not o.facts.in_recovery]
    primary_facts = facts.of(primary.name).facts
    if primaries == [primary.name]:
        return passed(primary, PRIMARY, "the only node of the shard out of recovery")
    if len(primaries) > 1:
        return failed(
            primary,
            PRIMARY,
            f"split brain: {len(primaries)} writable primaries ({', '.join(primaries)}); "
            f"the catalog's is {primary.name}, and no Router writes to the other",
        )
    if primaries:
        return failed(primary, PRIMARY, f"{primaries[0]} is the primary, not {primary.name}")
    if primary_facts is None:
        return failed(
            primary,
            PRIMARY,
            f"no primary: {primary.name} did not answer (gone? `shardctl failover "
            f"{primary.shard}` promotes a replica)",
        )
    return failed(primary, PRIMARY, f"no primary: {primary.name} is in recovery")


def sync_check(facts: ClusterFacts, primary: Node, replicas: list[Node]) -> Check:
    """Under ``replication: sync``, a replica is synchronous: else the shard's writes block
    (``durability: required``) or are acknowledged as async (``preferred``, degraded)."""
    if facts.of(primary.name).facts is None:
        return skipped(primary, SYNC, f"{primary.name} did not answer")
    ok, detail = durability.sync_detail(facts.topology, facts, primary, replicas)
    return (passed if ok else failed)(primary, SYNC, detail)


def undeclared_check(obs: NodeObservation, replicas: list[Node]) -> Check:
    """The primary streams to no undeclared replica and keeps no undeclared physical slot."""
    primary, facts = obs.node, obs.facts
    if facts is None:
        return skipped(primary, UNDECLARED, f"{primary.name} did not answer")
    declared = {r.slot for r in replicas} | {BACKUP_SLOT}  # the backup node's: see archiving
    extras: list[str] = []
    for row in facts.replication:
        if row.slot_name in declared and row.application_name != BASE_BACKUP_APP:
            continue
        who = f"{row.client_addr or 'local'} ({row.application_name or 'no name'}, {row.state})"
        if row.application_name == BASE_BACKUP_APP:
            extras.append(f"base backup to {who} in progress")
        elif row.slot_name is None:
            extras.append(f"walsender to {who} without a slot")
        else:
            extras.append(f"walsender to {who} through undeclared slot {row.slot_name}")
    for slot in facts.slots:
        if slot.slot_type == "physical" and slot.name not in declared and not slot.active:
            # (an inactive backup slot is the archiving check's to report)
            extras.append(f"inactive slot {slot.name} retains WAL")
    if extras:
        return failed(primary, UNDECLARED, "; ".join(extras))
    return passed(primary, UNDECLARED, "no undeclared walsender or physical slot")


def replica_checks(facts: ClusterFacts, obs: NodeObservation, limits: HealthSpec) -> list[Check]:
    """Recovery, upstream, identity, walsender, slot and lag checks of one declared replica."""
    node, own = obs.node, obs.facts
    primary_obs = facts.primary_of(node)
    theirs = primary_obs.facts
    checks: list[Check] = []
    if own is None:
        why = f"{node.name} did not answer"
        checks += [skipped(node, c, why) for c in (RECOVERY, UPSTREAM, SYSTEM_ID, TIMELINE)]
    else:
        checks.append(recovery_check(node, own))
        checks.append(upstream_check(node, own, facts.topology))
        if theirs is None:
            why = f"{node.primary_name} did not answer"
            checks += [skipped(node, SYSTEM_ID, why), skipped(node, TIMELINE, why)]
        else:
            checks.append(system_id_check(node, own, theirs))
            checks.append(timeline_check(node, own, theirs))
    if theirs is None:
        why = f"{node.primary_name} did not answer"
        checks += [skipped(node, WALSENDER, why), skipped(node, SLOT, why)]
    else:
        checks.append(walsender_check(node, theirs))
        checks.append(slot_check(node, theirs))
    checks.append(lag_bytes_check(facts, obs, limits))
    checks.append(lag_seconds_check(facts, obs, limits))
    return checks


def recovery_check(node: Node, facts: NodeFacts) -> Check:
    """A declared replica is in recovery."""
    if facts.in_recovery:
        return passed(node, RECOVERY, "in recovery")
    return failed(node, RECOVERY, "not in recovery: promoted or started as a primary")


def upstream_check(node: Node, facts: NodeFacts, topology: Topology | None = None) -> Check:
    """The replica's WAL receiver streams from its acting primary through its own slot (on
    another engine: from the primary's advertised address, which ``topology`` gives)."""
    receiver = facts.receiver
    if receiver is None:
        return failed(node, UPSTREAM, f"no WAL receiver: not streaming from {node.primary_name}")
    if receiver.status != "streaming":
        return failed(node, UPSTREAM, f"WAL receiver {receiver.status}, not streaming")
    upstream = addresses.upstream_address(topology, node)[0] if topology is not None else None
    expected = {node.primary_container, node.primary_name} | ({upstream} if upstream else set())
    if receiver.sender_host not in expected:
        return failed(
            node,
            UPSTREAM,
            f"streams from {receiver.sender_host or 'an unknown host'}, "
            f"not from its primary {upstream or node.primary_container}",
        )
    if receiver.slot_name != node.slot:
        return failed(
            node,
            UPSTREAM,
            f"streams through slot {receiver.slot_name or '(none)'}, not {node.slot}",
        )
    return passed(node, UPSTREAM, f"streaming from {receiver.sender_host} through {node.slot}")


def system_id_check(node: Node, facts: NodeFacts, primary: NodeFacts) -> Check:
    """The replica is a clone of its primary (same system identifier)."""
    if facts.system_identifier == primary.system_identifier:
        return passed(node, SYSTEM_ID, f"{facts.system_identifier}, same as {node.primary_name}")
    return failed(
        node,
        SYSTEM_ID,
        f"{facts.system_identifier} differs from {node.primary_name}'s "
        f"{primary.system_identifier}: not a clone of its primary",
    )


def timeline_check(node: Node, facts: NodeFacts, primary: NodeFacts) -> Check:
    """The replica follows its primary's timeline."""
    if facts.timeline is not None and facts.timeline == primary.timeline:
        return passed(node, TIMELINE, f"{facts.timeline}, same as {node.primary_name}")
    mine = "unknown" if facts.timeline is None else str(facts.timeline)
    theirs = "unknown" if primary.timeline is None else str(primary.timeline)
    return failed(node, TIMELINE, f"{mine}, but {node.primary_name} is on timeline {theirs}")


def walsender_check(node: Node, primary: NodeFacts) -> Check:
    """The primary has a walsender streaming to this replica (found by its slot)."""
    rows = [r for r in primary.replication if r.slot_name == node.slot]
    if not rows:
        return failed(
            node, WALSENDER, f"{node.primary_name} has no walsender using slot {node.slot}"
        )
    row = rows[0]
    if row.application_name == BASE_BACKUP_APP:
        return failed(node, WALSENDER, f"slot {node.slot} is used by a base backup in progress")
    if row.state != "streaming":
        return failed(node, WALSENDER, f"walsender on {node.primary_name} is in state {row.state}")
    return passed(
        node, WALSENDER, f"{node.primary_name} streams to {row.client_addr} ({row.sync_state})"
    )


def slot_check(node: Node, primary: NodeFacts) -> Check:
    """The replica's slot exists on the primary, is active and still reserves its WAL."""
    slot = primary.slot(node.slot)
    if slot is None:
        return failed(node, SLOT, f"slot {node.slot} missing on {node.primary_name}")
    where = f"slot {node.slot} on {node.primary_name}"
    if slot.wal_status in BAD_WAL_STATUS:
        safe = "" if slot.safe_wal_size is None else f", safe_wal_size {slot.safe_wal_size}"
        return failed(node, SLOT, f"{where} has wal_status {slot.wal_status}{safe}")
    if slot.slot_type != "physical":
        return failed(node, SLOT, f"{where} is a {slot.slot_type} slot, not physical")
    if not slot.active:
        return failed(node, SLOT, f"{where} is inactive: nothing streams through it")
    return passed(node, SLOT, f"{where} active, wal_status {slot.wal_status}")


def lag_bytes_check(facts: ClusterFacts, obs: NodeObservation, limits: HealthSpec) -> Check:
    """Replay position within ``max_lag_bytes`` of the primary's current WAL position."""
    node = obs.node
    if obs.facts is None:
        return skipped(node, LAG_BYTES, f"{node.name} did not answer")
    if not obs.facts.in_recovery:
        return skipped(node, LAG_BYTES, "not in recovery")
    lag = facts.lag_bytes(obs)
    if lag is None:
        return skipped(node, LAG_BYTES, f"{node.primary_name} did not answer")
    text = f"{size_text(lag)} behind {node.primary_name} (limit {size_text(limits.max_lag_bytes)})"
    return (passed if lag <= limits.max_lag_bytes else failed)(node, LAG_BYTES, text)


def lag_seconds_check(facts: ClusterFacts, obs: NodeObservation, limits: HealthSpec) -> Check:
    """Replay delay within ``max_lag_seconds``; nothing left to replay counts as zero lag."""
    node, own = obs.node, obs.facts
    if own is None:
        return skipped(node, LAG_SECONDS, f"{node.name} did not answer")
    if not own.in_recovery:
        return skipped(node, LAG_SECONDS, "not in recovery")
    lag = facts.lag_seconds(obs) or 0.0
    limit = f"limit {limits.max_lag_seconds:g} s"
    if lag == 0.0:
        return passed(node, LAG_SECONDS, f"0 s: everything received is replayed ({limit})")
    pending = max(0, (own.receive_lsn or 0) - (own.replay_lsn or 0))
    text = f"{lag:.1f} s behind, {size_text(pending)} received but not replayed ({limit})"
    return (passed if lag <= limits.max_lag_seconds else failed)(node, LAG_SECONDS, text)


def undeclared_containers(topology: Topology, names: Iterable[str]) -> Iterator[Check]:
    """A failed check for every container labelled with the cluster but not declared."""
    shards = [s.name for s in topology.spec.shards]
    for name in names:
        bare = name.removeprefix(f"{topology.cluster}-")
        shard = next((s for s in shards if bare.startswith(f"{s}-")), bare.split("-replica-")[0])
        yield Check(
            shard,
            name,
            UNDECLARED,
            False,
            f"container {name} carries the cluster's label but is not declared",
        )
