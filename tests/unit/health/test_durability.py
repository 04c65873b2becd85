"""The durability policy of sync shards as pure logic: facts and records built by hand, the
decisions asserted (tests/integration/test_sync_durability.py makes them real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.config.topology import Topology, parse
from shardctl.health import durability
from shardctl.health.durability import Decision, State, decide
from shardctl.health.facts import NodeFacts
from shardctl.state.durability import Record
from tests.unit.health.test_checks import cluster, healthy, primary_facts, walsender

NOW = 1_800_000_000.0
NAMES = 'ANY 1 ("s0-replica-1")'


def topology(s0: str, top: str = "async") -> Topology:
    text = (
        f"cluster: demo\nreplication: {top}\ntables:\n  - name: users\nshards:\n"
        f"  - name: s0\n    replication: {s0}\n  - name: s1\n"
    )
    return parse(text, Path("topology.yaml"))


def s0(
    topo: Topology, *, streaming: bool, names: str = NAMES, records: dict[str, Record] | None = None
) -> Decision:
    """The decision for s0 with its replica streaming or gone, its primary set to ``names``."""
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    rows = (walsender(replica, application_name=replica.name),) if streaming else ()
    facts["s0-primary"] = primary_facts(
        (replica,), replication=rows, synchronous_standby_names=names
    )
    if not streaming:
        facts["s0-replica-1"] = None
    decisions = {d.shard: d for d in decide(topo, cluster(topo, facts), records or {}, NOW)}
    assert decisions["s1"].state is State.ASYNC and not decisions["s1"].resets_setting
    return decisions["s0"]


@pytest.mark.parametrize("declared", ["sync", "{mode: sync, durability: required}"])
def test_required_keeps_waiting_and_says_what_unblocks(declared: str) -> None:
    decision = s0(topology(declared), streaming=False)
    assert decision.state is State.BLOCKED
    assert decision.standby_names == NAMES and not decision.resets_setting
    assert decision.record is None
    assert "s0-replica-1 (did not answer" in decision.detail
    assert "streams again" in decision.detail and "third host" in decision.detail


def test_preferred_waits_for_the_delay_then_degrades_and_records_it() -> None:
    topo = topology("{mode: sync, durability: preferred, degrade_after: 5}")
    first = s0(topo, streaming=False)
    assert first.state is State.WAITING and not first.resets_setting
    assert first.record == Record("s0", NOW, None, ("s0-replica-1",))
    soon = Record("s0", NOW - 4.9, None, ("s0-replica-1",))
    assert s0(topo, streaming=False, records={"s0": soon}).state is State.WAITING
    late = Record("s0", NOW - 5.0, None, ("s0-replica-1",))
    degraded = s0(topo, streaming=False, records={"s0": late})
    assert degraded.state is State.DEGRADED
    assert degraded.standby_names == "" and degraded.resets_setting
    assert degraded.record == Record("s0", NOW - 5.0, NOW, ("s0-replica-1",))
    assert degraded.detail.startswith("degraded: acknowledging writes as async since")
    # Once degraded it stays so, and keeps when it began, until a standby streams.
    again = s0(topo, streaming=False, names="", records={"s0": degraded.record or late})
    assert again.state is State.DEGRADED and not again.resets_setting
    assert again.record == degraded.record


def test_a_standby_streaming_again_restores_sync_and_clears_the_record() -> None:
    topo = topology("{mode: sync, durability: preferred}")
    record = Record("s0", NOW - 60, NOW - 55, ("s0-replica-1",))
    restored = s0(topo, streaming=True, names="", records={"s0": record})
    assert restored.state is State.SYNCHRONOUS
    assert restored.standby_names == NAMES and restored.resets_setting
    assert restored.record is None and "sync restored" in restored.detail


def test_delay_zero_degrades_at_once_and_an_emptied_setting_counts_as_degraded() -> None:
    topo = topology("{mode: sync, durability: preferred, degrade_after: 0}")
    assert s0(topo, streaming=False).state is State.DEGRADED
    slow = topology("{mode: sync, durability: preferred, degrade_after: 600}")
    emptied = s0(slow, streaming=False, names="")
    assert emptied.state is State.DEGRADED and emptied.record is not None


def test_the_top_level_policy_applies_unless_a_shard_overrides_it() -> None:
    topo = topology("async", top="{mode: sync, durability: preferred}")
    assert topo.replication_spec("s1").durability.value == "preferred"
    assert topo.replication_spec("s0").mode.value == "async"
    assert durability.standby_names(topo, topo.node("s1-primary")) == 'ANY 1 ("s1-replica-1")'
    assert durability.standby_names(topo, topo.node("s0-primary")) == ""


def test_a_primary_that_did_not_answer_is_left_alone() -> None:
    topo = topology("{mode: sync, durability: preferred}")
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    facts["s0-primary"] = None
    record = Record("s0", NOW - 60, NOW - 55)
    found = {d.shard: d for d in decide(topo, cluster(topo, facts), {"s0": record}, NOW)}
    assert found["s0"].state is State.UNKNOWN
    assert found["s0"].standby_names is None and found["s0"].record == record
