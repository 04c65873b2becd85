"""The rows of ``shardctl status``: one per declared node, healthy or with its first problem,
which is its first failed check of ``verify-replication`` (:mod:`shardctl.health.checks`), so
the two commands never disagree. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shardctl.config import addresses
from shardctl.config.schema import Role
from shardctl.health.archiving import ARCHIVING, ArchiveState, FreeSpace, archive_states
from shardctl.health.checks import (
    CANARY,
    LAG_BYTES,
    LAG_SECONDS,
    POOLER,
    POOLER_WAITING,
    PRIMARY,
    REACHABLE,
    RECOVERY,
    SLOT,
    SYNC,
    SYSTEM_ID,
    TIMELINE,
    UNDECLARED,
    UPSTREAM,
    WALSENDER,
    Check,
    replication_checks,
)
from shardctl.health.facts import ActualRole, ClusterFacts, ContainerState


@dataclass(frozen=True)
class StatusRow:
    """One line of ``shardctl status``."""

    shard: str
    name: str
    role: Role
    """The catalog's role: declared, or as a switchover or failover made it."""
    declared_role: Role
    """The role topology.yaml gives the node."""
    engine: str
    """The Docker engine (host) the node runs on, by its name in the topology."""
    actual_role: ActualRole
    """What the server itself says (primary: not in recovery)."""
    state: ContainerState
    address: str
    port: int
    in_recovery: bool | None
    timeline: int | None
    lsn: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    slot: str | None
    healthy: bool
    problem: str | None
    """The first failed check in full (``check: detail``), for ``-o wide`` and JSON."""
    health: str = "ok"
    """``ok`` or the problem as a short phrase for the 80-column table."""
    pending_restart: tuple[str, ...] = ()
    """Settings only a restart applies that the node has yet to (``-o wide`` and JSON)."""
    archiving: ArchiveState | None = None
    """On an acting primary of a cluster with ``backup:``: its shard's WAL archiving."""


_SHORT = {
    PRIMARY: "primary problem",
    UNDECLARED: "undeclared standby",
    RECOVERY: "not in recovery",
    UPSTREAM: "not streaming",
    SYSTEM_ID: "not a clone",
    TIMELINE: "timeline differs",
    WALSENDER: "no walsender",
    SLOT: "slot problem",
    LAG_BYTES: "lagging",
    LAG_SECONDS: "lagging",
    CANARY: "canary failed",
    POOLER: "pooler problem",
    POOLER_WAITING: "pooler queueing",
    ARCHIVING: "archiving stuck",
}
_SYNC_PHRASES = (("writes block", "writes blocked"), ("degraded", "degraded (async)"))


def health_phrase(check: Check) -> str:
    """A failed check as a phrase of a few words (the detail goes to ``-o wide`` and JSON)."""
    if check.check == REACHABLE:
        if check.detail.startswith("missing"):
            return "no container"
        if check.detail.startswith("container "):
            return check.detail  # "container exited", "container paused"
        return "no answer"
    if check.check == PRIMARY:
        for start, phrase in (
            ("split brain", "split brain"),
            ("no primary", "no primary"),
        ):
            if check.detail.startswith(start):
                return phrase
        return "wrong primary"
    if check.check == SYNC:
        return next((p for start, p in _SYNC_PHRASES if check.detail.startswith(start)), "no sync")
    return _SHORT.get(check.check, f"{check.check} failed")


def status_rows(
    facts: ClusterFacts,
    newest_wal: Mapping[str, float | None] | None = None,
    free_space: FreeSpace | None = None,
) -> list[StatusRow]:
    """The status table: one row per declared node, healthy or with the first problem found.

    The problem is the node's first failed check of ``verify-replication`` (the same checks on
    the same facts, with the topology's thresholds), so the two commands never disagree. With
    ``backup:``, an acting primary's row also carries its shard's archiving, judged from the
    same facts (:func:`~shardctl.health.archiving.archive_states`; ``newest_wal``, when the
    repository was read, adds the age of its newest WAL; ``free_space``, read only when one is
    not ok, names a full repository): not ok is the row's problem too.
    """
    limits = facts.topology.spec.health
    problems: dict[str, Check] = {}
    for check in replication_checks(facts, limits):
        if not check.ok:
            problems.setdefault(check.node, check)
    archives = archive_states(facts, limits, newest_wal, free_space=free_space)
    for state in archives.values():
        if not state.ok and state.problem is not None:
            node = facts.of(state.primary).node
            problems.setdefault(
                node.name, Check(node.shard, node.name, ARCHIVING, False, state.problem)
            )
    rows = []
    for obs in facts.nodes:
        node, node_facts = obs.node, obs.facts
        host, port = addresses.address(node)
        problem = problems.get(node.name)
        rows.append(
            StatusRow(
                shard=node.shard,
                name=node.name,
                role=node.role,
                declared_role=node.declared_role,
                engine=node.placement.name,
                actual_role=node_facts.role if node_facts else ActualRole.UNKNOWN,
                state=obs.container,
                address=host,
                port=port,
                in_recovery=node_facts.in_recovery if node_facts else None,
                timeline=node_facts.timeline if node_facts else None,
                lsn=node_facts.lsn if node_facts else None,
                lag_bytes=facts.lag_bytes(obs),
                lag_seconds=facts.lag_seconds(obs),
                slot=node.slot if node.role is Role.REPLICA else None,
                healthy=problem is None,
                problem=None if problem is None else f"{problem.check}: {problem.detail}",
                health="ok" if problem is None else health_phrase(problem),
                pending_restart=node_facts.pending_restart if node_facts else (),
                archiving=_archiving_of(archives, node.name),
            )
        )
    return rows


def _archiving_of(archives: Mapping[str, ArchiveState], node: str) -> ArchiveState | None:
    return next((a for a in archives.values() if a.primary == node), None)
