"""The monitor's decision: when it promotes, kills, waits or reports, and its invariants."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from shardctl.config.schema import FailoverMode, FailoverSpec
from shardctl.ops.monitor.decide import (
    Decision,
    EngineSays,
    ReplicaSeen,
    ShardSeen,
    Verdict,
    candidate_of,
    decide,
)

AUTO = FailoverSpec(mode=FailoverMode.AUTOMATIC, detect_seconds=5, hold_down_seconds=300)


def shard(**changes: object) -> ShardSeen:
    """shard-0, automatic, async, primary killed 10 s ago, one streaming-capable replica."""
    base = ShardSeen(
        shard="shard-0",
        policy=AUTO,
        sync_required=False,
        primary="shard-0-primary",
        primary_ok=False,
        failing_for=10.0,
        primary_engine=EngineSays.STOPPED,
        replicas=(ReplicaSeen("shard-0-replica-1", True, receive_lsn=100),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_healthy_primary_is_left_alone() -> None:
    assert decide(shard(primary_ok=True)).verdict is Verdict.HEALTHY


def test_a_stopped_primary_is_promoted_away_from_once_detected() -> None:
    decision = decide(shard())
    assert decision.verdict is Verdict.PROMOTE
    assert decision.candidate == "shard-0-replica-1"
    assert "fenced by fact" in decision.reason


def test_not_before_detect_seconds() -> None:
    assert decide(shard(failing_for=4.9)).verdict is Verdict.SUSPECT


def test_manual_only_reports_with_the_command() -> None:
    decision = decide(shard(policy=FailoverSpec()))
    assert decision.verdict is Verdict.REPORT
    assert decision.command == "shardctl failover shard-0"
    assert "manual" in decision.reason


def test_a_paused_primary_is_killed_first() -> None:
    assert decide(shard(primary_engine=EngineSays.PAUSED)).verdict is Verdict.KILL


def test_async_running_or_unknown_engine_is_not_promoted() -> None:
    for engine in (EngineSays.RUNNING, EngineSays.UNKNOWN):
        decision = decide(shard(primary_engine=engine))
        assert decision.verdict is Verdict.REPORT
        assert "async" in decision.reason
        assert decision.command == "shardctl failover shard-0"


def test_sync_required_promotes_the_synchronous_standby_of_a_lost_host() -> None:
    replica = ReplicaSeen("shard-0-replica-1", True, receive_lsn=100, was_sync_standby=True)
    seen = shard(primary_engine=EngineSays.UNKNOWN, sync_required=True, replicas=(replica,))
    decision = decide(seen)
    assert decision.verdict is Verdict.PROMOTE
    assert "synchronous standby" in decision.reason


def test_sync_required_never_promotes_while_a_replica_still_streams_from_it() -> None:
    replica = ReplicaSeen(
        "shard-0-replica-1", True, streaming=True, receive_lsn=100, was_sync_standby=True
    )
    seen = shard(primary_engine=EngineSays.RUNNING, sync_required=True, replicas=(replica,))
    decision = decide(seen)
    assert decision.verdict is Verdict.REPORT
    assert "cut off" in decision.reason


def test_sync_required_needs_every_replica_to_answer() -> None:
    replicas = (
        ReplicaSeen("shard-0-replica-1", True, receive_lsn=100, was_sync_standby=True),
        ReplicaSeen("shard-0-replica-2", False),
    )
    seen = shard(primary_engine=EngineSays.UNKNOWN, sync_required=True, replicas=replicas)
    assert decide(seen).verdict is Verdict.REPORT
    stopped = (replicas[0], ReplicaSeen("shard-0-replica-2", False, engine=EngineSays.STOPPED))
    seen = dataclasses.replace(seen, replicas=stopped)
    assert decide(seen).verdict is Verdict.PROMOTE


def test_a_switchover_or_a_cut_over_in_flight_blocks() -> None:
    fenced = ReplicaSeen("shard-0-replica-1", True, role_change_fenced=True)
    assert decide(shard(replicas=(fenced,))).verdict is Verdict.REPORT
    cutting = ReplicaSeen("shard-0-replica-1", True, reshard_cutting_over=True)
    decision = decide(shard(replicas=(cutting,)))
    assert decision.verdict is Verdict.REPORT
    assert decision.command == "shardctl rebalance --resume"


def test_hold_down_blocks_unless_the_engine_says_the_new_primary_died() -> None:
    assert decide(shard(since_automatic=10.0)).verdict is Verdict.PROMOTE
    held = decide(shard(since_automatic=10.0, primary_engine=EngineSays.PAUSED))
    assert held.verdict is Verdict.REPORT
    assert "hold-down" in held.reason
    assert decide(shard(since_automatic=301.0, primary_engine=EngineSays.PAUSED)).verdict is (
        Verdict.KILL
    )


def test_a_replica_promoted_already_is_finished_not_doubled() -> None:
    promoted = ReplicaSeen("shard-0-replica-1", True, in_recovery=False)
    decision = decide(shard(replicas=(promoted,), failing_for=0.0))
    assert decision.verdict is Verdict.FINISH
    assert decision.candidate == "shard-0-replica-1"
    two = (promoted, dataclasses.replace(promoted, name="shard-0-replica-2"))
    assert decide(shard(replicas=two)).verdict is Verdict.REPORT  # split brain: by hand


def test_the_candidate_is_the_most_advanced_answering_replica() -> None:
    replicas = (
        ReplicaSeen("shard-0-replica-1", True, receive_lsn=100),
        ReplicaSeen("shard-0-replica-2", True, receive_lsn=300),
        ReplicaSeen("shard-0-replica-3", False, receive_lsn=999),
    )
    chosen = candidate_of(shard(replicas=replicas))
    assert chosen is not None and chosen.name == "shard-0-replica-2"


# ------------------------------------------------------------------ invariants

engines = st.sampled_from(list(EngineSays))
replica_views = st.builds(
    ReplicaSeen,
    name=st.sampled_from(["r1", "r2", "r3"]),
    answered=st.booleans(),
    in_recovery=st.booleans(),
    streaming=st.booleans(),
    receive_lsn=st.integers(0, 10**6),
    engine=engines,
    was_sync_standby=st.booleans(),
    role_change_fenced=st.booleans(),
    reshard_cutting_over=st.booleans(),
)
views = st.builds(
    ShardSeen,
    shard=st.just("s"),
    policy=st.builds(
        FailoverSpec,
        mode=st.sampled_from(list(FailoverMode)),
        detect_seconds=st.floats(1, 60),
        hold_down_seconds=st.floats(0, 600),
    ),
    sync_required=st.booleans(),
    primary=st.just("p"),
    primary_ok=st.booleans(),
    failing_for=st.floats(0, 120),
    primary_engine=engines,
    replicas=st.lists(replica_views, max_size=3, unique_by=lambda r: r.name).map(tuple),
    since_automatic=st.none() | st.floats(0, 1000),
)


def _proven_unable_to_acknowledge(seen: ShardSeen, decision: Decision) -> bool:
    if seen.primary_engine is EngineSays.STOPPED:
        return True
    chosen = next(r for r in seen.replicas if r.name == decision.candidate)
    return (
        seen.sync_required
        and chosen.was_sync_standby
        and not any(r.streaming for r in seen.replicas if r.answered)
        and all(r.answered or r.engine is EngineSays.STOPPED for r in seen.replicas)
    )


@given(views)
def test_it_promotes_only_what_it_can_prove(seen: ShardSeen) -> None:
    decision = decide(seen)
    if decision.verdict is Verdict.PROMOTE:
        assert not seen.primary_ok
        assert seen.policy.mode is FailoverMode.AUTOMATIC
        assert seen.failing_for >= seen.policy.detect_seconds
        assert not any(r.role_change_fenced or r.reshard_cutting_over for r in seen.replicas)
        chosen = [r for r in seen.replicas if r.name == decision.candidate]
        assert chosen and chosen[0].answered and chosen[0].in_recovery
        assert _proven_unable_to_acknowledge(seen, decision)
        if seen.since_automatic is not None:
            held = seen.since_automatic < seen.policy.hold_down_seconds
            assert not held or seen.primary_engine is EngineSays.STOPPED
    if decision.verdict is Verdict.KILL:
        assert seen.primary_engine is EngineSays.PAUSED
        assert seen.policy.mode is FailoverMode.AUTOMATIC
    if decision.verdict in (Verdict.PROMOTE, Verdict.FINISH, Verdict.KILL):
        assert seen.policy.mode is FailoverMode.AUTOMATIC
        assert not any(r.role_change_fenced for r in seen.replicas)
    if decision.verdict is Verdict.REPORT:
        assert decision.reason


@given(views)
def test_never_two_candidates_and_a_healthy_primary_is_never_touched(seen: ShardSeen) -> None:
    decision = decide(seen)
    if seen.primary_ok:
        assert decision.verdict is Verdict.HEALTHY
    promoted = [r for r in seen.replicas if r.answered and not r.in_recovery]
    if decision.verdict is Verdict.PROMOTE:
        assert promoted == []  # a replica promoted already is finished, not joined by another
    if decision.verdict is Verdict.FINISH:
        assert [r.name for r in promoted] == [decision.candidate]
