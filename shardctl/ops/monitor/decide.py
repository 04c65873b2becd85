"""The monitor's decision for one shard: pure, from what it saw in one pass.

It promotes only when the old primary provably cannot acknowledge another write:

* **fenced by fact**: the primary's Docker engine says its container is not running (a frozen,
  ``docker pause``d one is first killed through the engine: a paused process acknowledges
  nothing, and a killed one never will);
* **fenced by quorum**: the shard is ``sync`` with ``durability: required``, every replica
  answered (or its engine says it is stopped), none streams from the old primary any more, and
  the candidate is the most advanced one and was a synchronous standby when the monitor last
  saw the primary: once it is promoted, nothing can acknowledge the old primary's commits.

and only when the primary failed the probe for ``detect_seconds``, no switchover or reshard
cut-over is in flight for the shard, and the shard is not in its hold-down window. Every other
outcome is a report naming why, and the command an operator can run.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shardctl.config.schema import FailoverMode, FailoverSpec


class EngineSays(StrEnum):
    """A container's state as its Docker engine reports it."""

    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    """Exited, created, dead, or no container at all: it runs no PostgreSQL."""
    UNKNOWN = "unknown"
    """The engine did not answer (a lost host): nothing is known."""

    @classmethod
    def of(cls, state: str | None) -> EngineSays:
        """From Docker's ``State.Status`` (None: no such container)."""
        if state in ("running", "restarting", "removing"):
            return cls.RUNNING
        if state == "paused":
            return cls.PAUSED
        return cls.STOPPED


@dataclass(frozen=True)
class ReplicaSeen:
    """One replica of the shard, as seen in this pass."""

    name: str
    answered: bool
    in_recovery: bool = True
    streaming: bool = False
    receive_lsn: int = 0
    engine: EngineSays = EngineSays.RUNNING
    was_sync_standby: bool = False
    """Streaming as a synchronous (or quorum) standby when the primary last answered."""
    role_change_fenced: bool = False
    reshard_cutting_over: bool = False


@dataclass(frozen=True)
class ShardSeen:
    """One shard, as seen in this pass."""

    shard: str
    policy: FailoverSpec
    sync_required: bool
    primary: str
    primary_ok: bool
    failing_for: float
    """Seconds the acting primary has failed the probe (0: it answered)."""
    primary_engine: EngineSays
    replicas: tuple[ReplicaSeen, ...]
    since_automatic: float | None = None
    """Seconds since the last automatic failover of this shard (None: none known)."""


class Verdict(StrEnum):
    """What the monitor does about a shard this pass."""

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    """The primary fails the probe, not yet for ``detect_seconds``."""
    KILL = "kill"
    """The primary is frozen (paused): kill it through its engine, then decide again."""
    PROMOTE = "promote"
    FINISH = "finish"
    """A replica was promoted already (an interrupted failover): finish publishing it."""
    REPORT = "report"
    """Not promoting: ``reason`` says why, ``command`` what an operator can run."""


@dataclass(frozen=True)
class Decision:
    """The verdict for one shard, why, and what to run by hand."""

    shard: str
    verdict: Verdict
    reason: str
    command: str | None = None
    candidate: str | None = None


def candidate_of(seen: ShardSeen) -> ReplicaSeen | None:
    """The replica ``failover`` would promote: answering, in recovery, most WAL received."""
    usable = [r for r in seen.replicas if r.answered and r.in_recovery]
    if not usable:
        return None
    return max(usable, key=lambda r: (r.receive_lsn, r.name))


def decide(seen: ShardSeen) -> Decision:
    """The monitor's decision for one shard (see the module docstring)."""
    shard = seen.shard
    by_hand = f"shardctl failover {shard}"

    def report(reason: str, command: str | None = by_hand) -> Decision:
        return _report(seen, reason, command)

    if seen.primary_ok:
        return Decision(shard, Verdict.HEALTHY, f"{seen.primary} answers")
    detect = seen.policy.detect_seconds
    automatic = seen.policy.mode is FailoverMode.AUTOMATIC
    promoted = [r for r in seen.replicas if r.answered and not r.in_recovery]
    if len(promoted) > 1:
        names = ", ".join(r.name for r in promoted)
        return report(f"split brain: {names} all accept writes; fix it by hand", None)
    if any(r.role_change_fenced for r in seen.replicas):
        # Before finishing a promotion too: a switchover's own candidate holds the fence
        # until the switchover publishes it.
        return report(
            f"{seen.primary} does not answer and a switchover of {shard} is in flight (its "
            "fence is on the replicas); if it was interrupted, failover finishes it"
        )
    if promoted:
        name = promoted[0].name
        if not automatic:
            return report(f"{name} was promoted already", f"{by_hand} --to {name}")
        return Decision(
            shard, Verdict.FINISH, f"{name} was promoted already: finishing", candidate=name
        )
    if seen.failing_for < detect:
        return Decision(
            shard,
            Verdict.SUSPECT,
            f"{seen.primary} fails the probe for {seen.failing_for:.1f}s of {detect:g}s",
        )
    dead = f"{seen.primary} failed the probe for {seen.failing_for:.0f}s"
    if not automatic:
        return report(f"{dead}; failover: manual, the monitor only reports")
    if any(r.reshard_cutting_over for r in seen.replicas):
        return report(f"{dead}, but a reshard is cutting over", "shardctl rebalance --resume")
    candidate = candidate_of(seen)
    if candidate is None:
        return report(f"{dead}, and no replica answers in recovery: nothing to promote", None)
    held = seen.since_automatic is not None and seen.since_automatic < seen.policy.hold_down_seconds
    engine = seen.primary_engine
    if held and engine is not EngineSays.STOPPED:
        return report(
            f"{dead}; in hold-down: {shard} failed over automatically "
            f"{seen.since_automatic:.0f}s ago (hold_down_seconds "
            f"{seen.policy.hold_down_seconds:g}), and its engine says {engine}"
        )
    if engine is EngineSays.STOPPED:
        return Decision(
            shard,
            Verdict.PROMOTE,
            f"{dead} and its engine says it is not running (fenced by fact)",
            candidate=candidate.name,
        )
    if engine is EngineSays.PAUSED:
        return Decision(
            shard,
            Verdict.KILL,
            f"{dead} and its engine says it is paused (frozen): killing it to fence it by fact",
        )
    return _by_quorum(seen, candidate, dead)


def _report(seen: ShardSeen, reason: str, command: str | None = "") -> Decision:
    """Not promoting; ``command`` "" means ``shardctl failover SHARD``."""
    if command == "":
        command = f"shardctl failover {seen.shard}"
    return Decision(seen.shard, Verdict.REPORT, reason, command)


def _by_quorum(seen: ShardSeen, candidate: ReplicaSeen, dead: str) -> Decision:
    """The primary may be alive (running, or its engine unreachable): promote only when a
    synchronous standby makes its acknowledgement impossible."""
    engine = (
        "its engine does not answer"
        if seen.primary_engine is EngineSays.UNKNOWN
        else ("its engine says it is running")
    )
    if not seen.sync_required:
        return _report(
            seen, f"{dead}, but {engine}: under async replication it may still acknowledge writes"
        )
    silent = [
        r.name for r in seen.replicas if not r.answered and r.engine is not EngineSays.STOPPED
    ]
    if silent:
        return _report(
            seen,
            f"{dead} and {engine}; {', '.join(silent)} does not answer either, so the most "
            "advanced synchronous standby cannot be known",
        )
    streaming = [r.name for r in seen.replicas if r.answered and r.streaming]
    if streaming:
        return _report(
            seen,
            f"{dead}, but {', '.join(streaming)} still streams from it: it is alive and only "
            "this monitor is cut off from it",
            "shardctl status",
        )
    if not candidate.was_sync_standby:
        return _report(
            seen,
            f"{dead} and {engine}; {candidate.name} was not seen as its synchronous standby "
            "(since this monitor started), so it may lack an acknowledged write",
        )
    return Decision(
        seen.shard,
        Verdict.PROMOTE,
        f"{dead} and {engine}; {candidate.name} was its synchronous standby "
        "(sync, durability required): the old primary cannot acknowledge a write once it is "
        "promoted",
        candidate=candidate.name,
    )
