"""The replication checks as pure logic: facts built by hand, findings asserted.

Facts are the typed records :func:`shardctl.health.facts.read_facts` returns; building them here is
how the judgement is tested without a server (the integration tests make the real failures).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import cast

import pytest
import typer

from shardctl.cli.replication import parse_size
from shardctl.cli.views import verify as views
from shardctl.config.schema import HealthSpec, TableSpec
from shardctl.config.topology import Node, Topology, parse
from shardctl.health import checks, measured
from shardctl.health.checks import Check
from shardctl.health.facts import (
    ClusterFacts,
    ContainerState,
    NodeFacts,
    NodeObservation,
    ReplicationRow,
    Slot,
    WalReceiver,
)
from shardctl.health.status import status_rows
from shardctl.health.verify import Report

SYSID = 7000000000000000001
NOW = 1_800_000_000.0
LIMITS = HealthSpec(max_lag_bytes=1024 * 1024, max_lag_seconds=30, canary_timeout=5)


def topology(replicas: int = 1) -> Topology:
    text = (
        "cluster: demo\ntables:\n  - name: users\nshards:\n"
        f"  - name: s0\n    replicas: {replicas}\n  - name: s1\n    replicas: {replicas}\n"
    )
    return parse(text, Path("topology.yaml"))


def walsender(replica: Node, **changes: object) -> ReplicationRow:
    row = ReplicationRow(
        application_name="walreceiver",
        client_addr="172.18.0.3",
        state="streaming",
        sent_lsn=5000,
        replay_lsn=5000,
        replay_lag_seconds=None,
        sync_state="async",
        pid=100 + replica.index,
        slot_name=replica.slot,
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def slot(replica: Node, **changes: object) -> Slot:
    found = Slot(
        name=replica.slot,
        slot_type="physical",
        active=True,
        wal_status="reserved",
        safe_wal_size=None,
        restart_lsn=5000,
    )
    return dataclasses.replace(found, **changes)  # type: ignore[arg-type]


def primary_facts(replicas: tuple[Node, ...], **changes: object) -> NodeFacts:
    facts = NodeFacts(
        in_recovery=False,
        system_identifier=SYSID,
        timeline=1,
        current_lsn=5000,
        receive_lsn=None,
        replay_lsn=None,
        replay_timestamp=None,
        server_time=NOW,
        server_version=150000,
        replication=tuple(walsender(r) for r in replicas),
        receiver=None,
        slots=tuple(slot(r) for r in replicas),
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def replica_facts(node: Node, **changes: object) -> NodeFacts:
    facts = NodeFacts(
        in_recovery=True,
        system_identifier=SYSID,
        timeline=1,
        current_lsn=None,
        receive_lsn=5000,
        replay_lsn=5000,
        replay_timestamp=NOW - 3600,  # idle for an hour
        server_time=NOW,
        server_version=150000,
        replication=(),
        receiver=WalReceiver("streaming", node.primary_container, node.slot, 1),
        slots=(),
    )
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


def healthy(topo: Topology) -> dict[str, NodeFacts]:
    """Facts of a healthy, idle cluster, per node name."""
    facts: dict[str, NodeFacts] = {}
    for shard in topo.spec.shards:
        primary, *replicas = topo.shard_nodes(shard.name)
        facts[primary.name] = primary_facts(tuple(replicas))
        for replica in replicas:
            facts[replica.name] = replica_facts(replica)
    return facts


def cluster(
    topo: Topology,
    facts: dict[str, NodeFacts | None],
    states: dict[str, ContainerState] | None = None,
    undeclared: tuple[str, ...] = (),
) -> ClusterFacts:
    states = states or {}
    observations = []
    for node in topo.nodes:
        state = states.get(node.name, ContainerState.RUNNING)
        found = facts.get(node.name) if state is ContainerState.RUNNING else None
        error = None if found is not None else "did not answer: no answer within 6s"
        observations.append(NodeObservation(node, state, found, error, 0.01))
    return ClusterFacts(topo, tuple(observations), undeclared)


def judge(facts: ClusterFacts, limits: HealthSpec = LIMITS) -> dict[tuple[str, str], Check]:
    return {(c.node, c.check): c for c in checks.replication_checks(facts, limits)}


def failures(found: dict[tuple[str, str], Check]) -> dict[tuple[str, str], str]:
    return {k: c.detail for k, c in found.items() if not c.ok}


REPLICA_CHECKS = [
    checks.REACHABLE,
    checks.RECOVERY,
    checks.UPSTREAM,
    checks.SYSTEM_ID,
    checks.TIMELINE,
    checks.WALSENDER,
    checks.SLOT,
    checks.LAG_BYTES,
    checks.LAG_SECONDS,
]


def test_healthy_idle_cluster_passes_every_check_and_skips_none() -> None:
    topo = topology()
    found = checks.replication_checks(cluster(topo, dict(healthy(topo))), LIMITS)
    assert all(c.ok and not c.skipped for c in found), [c.line for c in found if not c.ok]
    per_node = {n.name: [c.check for c in found if c.node == n.name] for n in topo.nodes}
    assert per_node["s0-primary"] == [checks.REACHABLE, checks.PRIMARY, checks.UNDECLARED]
    assert sorted(per_node["s1-replica-1"]) == sorted(REPLICA_CHECKS)
    idle = next(c for c in found if c.node == "s0-replica-1" and c.check == checks.LAG_SECONDS)
    assert idle.detail.startswith("0 s")  # an hour since the last commit is not lag


def test_the_set_of_checks_is_the_same_on_red_runs() -> None:
    topo = topology()
    green = checks.replication_checks(cluster(topo, dict(healthy(topo))), LIMITS)
    red = checks.replication_checks(cluster(topo, {}), LIMITS)
    assert [(c.node, c.check) for c in green] == [(c.node, c.check) for c in red]


def test_pending_wal_uses_the_primarys_replay_lag() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    facts["s0-replica-1"] = replica_facts(replica, receive_lsn=9000, replay_lsn=8000)
    # The primary measured 45 s for this walsender: a stuck replay, over the 30 s limit.
    facts["s0-primary"] = primary_facts(
        (replica,), replication=(walsender(replica, replay_lag_seconds=45.0),)
    )
    found = judge(cluster(topo, facts))
    assert failures(found) == {
        ("s0-replica-1", checks.LAG_SECONDS): (
            "45.0 s behind, 1000 B received but not replayed (limit 30 s)"
        )
    }


def test_a_burst_after_idle_time_is_not_lag() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    # Pending WAL, last replayed commit an hour ago, but the primary says caught up (NULL).
    facts["s0-replica-1"] = replica_facts(replica, receive_lsn=9000, replay_lsn=8000)
    assert failures(judge(cluster(topo, facts))) == {}


def test_without_a_walsender_the_replicas_own_estimate_counts() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    facts["s0-replica-1"] = replica_facts(replica, receive_lsn=9000, replay_lsn=8000)
    facts["s0-primary"] = primary_facts((replica,), replication=())
    lag = judge(cluster(topo, facts))[("s0-replica-1", checks.LAG_SECONDS)]
    assert not lag.ok and lag.detail.startswith("3600.0 s behind")


def test_byte_lag_against_the_primarys_current_position() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s1-replica-1")
    facts["s1-primary"] = primary_facts((replica,), current_lsn=5000 + 3 * 1024 * 1024)
    found = judge(cluster(topo, facts))
    assert failures(found) == {
        ("s1-replica-1", checks.LAG_BYTES): "3.0 MiB behind s1-primary (limit 1.0 MiB)"
    }
    relaxed = judge(cluster(topo, facts), LIMITS.replace(max_lag_bytes=4 << 20))
    assert failures(relaxed) == {}


@pytest.mark.parametrize(
    ("state", "detail"),
    [
        (ContainerState.PAUSED, "container paused"),
        (ContainerState.EXITED, "container exited"),
        (ContainerState.MISSING, "missing: declared replica has no container"),
        (ContainerState.RUNNING, "no answer: did not answer: no answer within 6s"),
    ],
)
def test_a_replica_that_does_not_answer_fails_once_and_skips_the_rest(
    state: ContainerState, detail: str
) -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    facts["s0-replica-1"] = None
    replica = topo.node("s0-replica-1")
    # The primary no longer streams to it; its slot stays but is inactive.
    facts["s0-primary"] = primary_facts(
        (replica,), replication=(), slots=(slot(replica, active=False),)
    )
    found = judge(cluster(topo, facts, {"s0-replica-1": state}))
    assert failures(found) == {
        ("s0-replica-1", checks.REACHABLE): detail,
        ("s0-replica-1", checks.WALSENDER): "s0-primary has no walsender using slot s0_replica_1",
        ("s0-replica-1", checks.SLOT): (
            "slot s0_replica_1 on s0-primary is inactive: nothing streams through it"
        ),
    }
    skipped = {c for (n, c), check in found.items() if check.skipped}
    assert skipped == {
        checks.RECOVERY,
        checks.UPSTREAM,
        checks.SYSTEM_ID,
        checks.TIMELINE,
        checks.LAG_BYTES,
        checks.LAG_SECONDS,
    }


def test_a_promoted_replica_makes_two_primaries() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    facts["s0-replica-1"] = replica_facts(
        replica, in_recovery=False, timeline=2, receiver=None, current_lsn=6000
    )
    facts["s0-primary"] = primary_facts(
        (replica,), replication=(), slots=(slot(replica, active=False),)
    )
    found = failures(judge(cluster(topo, facts)))
    assert found[("s0-primary", checks.PRIMARY)] == (
        "split brain: 2 writable primaries (s0-primary, s0-replica-1); "
        "the catalog's is s0-primary, and no Router writes to the other"
    )
    assert found[("s0-replica-1", checks.RECOVERY)].startswith("not in recovery")
    assert found[("s0-replica-1", checks.TIMELINE)] == "2, but s0-primary is on timeline 1"
    assert ("s0-replica-1", checks.LAG_BYTES) not in found  # skipped: not a replica now


def test_declared_primary_in_recovery_and_a_replica_as_primary() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    # healthy() gave every node its facts: none is None yet
    primary = cast(NodeFacts, facts["s1-primary"])
    facts["s1-primary"] = dataclasses.replace(primary, in_recovery=True)
    replica = facts["s1-replica-1"]
    assert replica is not None
    facts["s1-replica-1"] = dataclasses.replace(replica, in_recovery=False)
    found = failures(judge(cluster(topo, facts)))
    assert found[("s1-primary", checks.PRIMARY)] == "s1-replica-1 is the primary, not s1-primary"
    facts["s1-replica-1"] = replica
    found = failures(judge(cluster(topo, facts)))
    assert found[("s1-primary", checks.PRIMARY)] == ("no primary: s1-primary is in recovery")


def test_a_replica_pointing_at_the_wrong_primary() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    other = topo.node("s1-primary")
    facts["s0-replica-1"] = replica_facts(
        replica,
        system_identifier=SYSID + 1,
        receiver=WalReceiver("streaming", other.container, replica.slot, 1),
    )
    found = failures(judge(cluster(topo, facts)))
    assert found[("s0-replica-1", checks.UPSTREAM)] == (
        "streams from demo-s1-primary, not from its primary demo-s0-primary"
    )
    assert found[("s0-replica-1", checks.SYSTEM_ID)].endswith("not a clone of its primary")


@pytest.mark.parametrize(
    ("receiver", "detail"),
    [
        (None, "no WAL receiver: not streaming from s0-primary"),
        (WalReceiver("waiting", None, None, None), "WAL receiver waiting, not streaming"),
        (
            WalReceiver("streaming", "demo-s0-primary", "other", 1),
            "streams through slot other, not s0_replica_1",
        ),
    ],
)
def test_upstream_needs_a_streaming_receiver_on_its_own_slot(
    receiver: WalReceiver | None, detail: str
) -> None:
    topo = topology()
    node = topo.node("s0-replica-1")
    check = checks.upstream_check(node, replica_facts(node, receiver=receiver))
    assert (check.ok, check.detail) == (False, detail)


@pytest.mark.parametrize(
    ("changes", "detail"),
    [
        ({"state": "startup"}, "walsender on s0-primary is in state startup"),
        ({"state": "catchup"}, "walsender on s0-primary is in state catchup"),
        (
            {"application_name": "pg_basebackup", "state": "backup"},
            "slot s0_replica_1 is used by a base backup in progress",
        ),
    ],
)
def test_walsender_must_be_streaming(changes: dict[str, object], detail: str) -> None:
    topo = topology()
    node = topo.node("s0-replica-1")
    facts = primary_facts((node,), replication=(walsender(node, **changes),))
    check = checks.walsender_check(node, facts)
    assert (check.ok, check.detail) == (False, detail)


@pytest.mark.parametrize(
    ("slots", "detail"),
    [
        ((), "slot s0_replica_1 missing on s0-primary"),
        (({"active": False},), "slot s0_replica_1 on s0-primary is inactive: nothing streams"),
        (({"wal_status": "lost"},), "slot s0_replica_1 on s0-primary has wal_status lost"),
        (
            ({"wal_status": "unreserved", "safe_wal_size": -10},),
            "slot s0_replica_1 on s0-primary has wal_status unreserved, safe_wal_size -10",
        ),
    ],
)
def test_slot_present_active_and_reserving(
    slots: tuple[dict[str, object], ...], detail: str
) -> None:
    topo = topology()
    node = topo.node("s0-replica-1")
    facts = primary_facts((node,), slots=tuple(slot(node, **s) for s in slots))
    check = checks.slot_check(node, facts)
    assert not check.ok and check.detail.startswith(detail)


def test_undeclared_walsenders_and_slots_are_findings() -> None:
    topo = topology(replicas=1)
    replica = topo.node("s0-replica-1")
    stray = Node("demo", "s0", "s0-replica-2", replica.role, 2, 1, replica.placement, "s0-primary")
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    facts["s0-primary"] = primary_facts(
        (replica,),
        replication=(
            walsender(replica),
            walsender(stray, client_addr="10.0.0.9", slot_name=None),
            walsender(stray, application_name="pg_basebackup", state="backup", slot_name=None),
        ),
        slots=(
            slot(replica),
            slot(stray, name="old_replica", active=False),
            slot(stray, name="cdc", slot_type="logical", active=False),  # not ours to judge
        ),
    )
    found = failures(judge(cluster(topo, facts)))
    assert found == {
        ("s0-primary", checks.UNDECLARED): (
            "walsender to 10.0.0.9 (walreceiver, streaming) without a slot; "
            "base backup to 172.18.0.3 (pg_basebackup, backup) in progress; "
            "inactive slot old_replica retains WAL"
        )
    }


def test_undeclared_containers_and_missing_primary() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    found = judge(
        cluster(
            topo,
            facts,
            {"s1-primary": ContainerState.MISSING},
            undeclared=("demo-s0-replica-2", "demo-s7-primary"),
        )
    )
    bad = failures(found)
    assert bad[("demo-s0-replica-2", checks.UNDECLARED)].endswith("is not declared")
    assert found[("demo-s0-replica-2", checks.UNDECLARED)].shard == "s0"
    assert found[("demo-s7-primary", checks.UNDECLARED)].shard == "s7-primary"
    assert bad[("s1-primary", checks.REACHABLE)] == "missing: declared primary has no container"
    assert bad[("s1-primary", checks.PRIMARY)] == (
        "no primary: s1-primary did not answer (gone? `shardctl failover s1` promotes a replica)"
    )
    assert found[("s1-replica-1", checks.SYSTEM_ID)].skipped


def test_status_reports_the_first_failed_check() -> None:
    topo = topology()
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    node = topo.node("s1-replica-1")
    facts["s1-primary"] = primary_facts((node,), slots=())
    rows = {r.name: r for r in status_rows(cluster(topo, facts))}
    assert rows["s1-replica-1"].problem == "slot: slot s1_replica_1 missing on s1-primary"
    assert [r.name for r in rows.values() if not r.healthy] == ["s1-replica-1"]


def test_canary_and_deep_findings() -> None:
    topo = topology()
    node = topo.node("s0-replica-1")
    assert measured.canary_check(node, 0.004, None, LIMITS).detail == (
        "canary from s0-primary visible after 4 ms"
    )
    late = measured.canary_check(node, None, None, LIMITS)
    assert (late.ok, late.detail) == (False, "canary from s0-primary not visible after 5 s")
    users = TableSpec(name="users")
    same = measured.deep_check(
        node, users, measured.TableDigest(3, 9), measured.TableDigest(3, 9), at="at 0/1"
    )
    assert (same.check, same.ok) == ("deep:users", True)
    differ = measured.deep_check(
        node,
        users,
        measured.TableDigest(3, 9),
        measured.TableDigest(2, 7),
        at="at 0/1",
        keys=["k (missing)"],
    )
    assert differ.detail == "2 rows vs 3 on s0-primary, checksums differ at 0/1; id k (missing)"


def test_differing_keys_say_how_and_stop_at_the_limit() -> None:
    primary = {"a": "1", "b": "2", "c": "3"}
    replica = {"a": "1", "b": "x", "d": "4"}
    assert measured.differing_keys(primary, replica) == ["b (differs)", "c (missing)", "d (extra)"]
    assert measured.differing_keys(primary, replica, limit=1) == ["b (differs)", "..."]


def test_checks_sort_by_topology_then_check_order() -> None:
    topo = topology()
    r1, p0 = topo.node("s1-replica-1"), topo.node("s0-primary")
    found = [
        checks.passed(r1, "deep:users", ""),
        checks.passed(r1, checks.CANARY, ""),
        checks.passed(r1, checks.REACHABLE, ""),
        checks.passed(p0, checks.UNDECLARED, ""),
        checks.passed(p0, checks.REACHABLE, ""),
    ]
    ordered = [(c.node, c.check) for c in checks.sort_checks(topo, found)]
    assert ordered == [
        ("s0-primary", "reachable"),
        ("s0-primary", "undeclared"),
        ("s1-replica-1", "reachable"),
        ("s1-replica-1", "canary"),
        ("s1-replica-1", "deep:users"),
    ]


def test_junit_report_has_a_case_per_check_and_failures_with_detail() -> None:
    topo = topology()
    p0, r0 = topo.node("s0-primary"), topo.node("s0-replica-1")
    found = (
        checks.passed(p0, checks.REACHABLE, "answered in 3 ms", 0.003),
        checks.failed(r0, checks.SLOT, "slot s0_replica_1 missing on s0-primary"),
        checks.skipped(r0, checks.CANARY, "s0-replica-1 did not answer"),
    )
    report = Report("demo", found, LIMITS, deep=False, seconds=0.5, answered=1)
    root = ET.fromstring(views.junit_xml(report))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [
        "s0-primary: reachable",
        "s0-replica-1: slot",
        "s0-replica-1: canary",
    ]
    assert {c.get("classname") for c in cases} == {"s0"}
    failure = cases[1].find("failure")
    assert failure is not None
    assert failure.get("message") == "slot s0_replica_1 missing on s0-primary"
    assert cases[2].find("skipped") is not None
    data = views.verify_facts(report)
    assert data["ok"] is False
    assert data["checks"][1] == {
        "shard": "s0",
        "node": "s0-replica-1",
        "check": "slot",
        "ok": False,
        "result": "fail",
        "detail": "slot s0_replica_1 missing on s0-primary",
        "seconds": None,
    }


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("512KiB", 512 << 10),
        ("16MiB", 16 << 20),
        ("1 GiB", 1 << 30),
        ("2M", 2 << 20),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_bad_size() -> None:
    with pytest.raises(typer.BadParameter):
        parse_size("12XB")


def test_a_sync_shard_needs_a_synchronous_replica() -> None:
    text = (
        "cluster: demo\nreplication: sync\ntables:\n  - name: users\nshards:\n"
        "  - name: s0\n  - name: s1\n    replication: async\n"
    )
    topo = parse(text, Path("topology.yaml"))
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    replica = topo.node("s0-replica-1")
    names = '"ANY 1 ("s0-replica-1")'
    facts["s0-primary"] = primary_facts((replica,), replication=(), synchronous_standby_names=names)
    facts["s0-replica-1"] = None
    found = judge(cluster(topo, facts))
    blocked = failures(found)[("s0-primary", checks.SYNC)]
    assert blocked.startswith("writes block: replication sync, durability required")
    assert "s0-replica-1 (did not answer" in blocked and "second replica" in blocked
    assert ("s1-primary", checks.SYNC) not in found  # an async shard has no such check
    # Acknowledging as async (degraded) while a replica streams again: not yet restored.
    facts = dict(healthy(topo))
    found = judge(cluster(topo, facts))
    assert failures(found)[("s0-primary", checks.SYNC)].startswith("degraded: acknowledging")
    synchronous = walsender(replica, sync_state="quorum", application_name="s0-replica-1")
    facts["s0-primary"] = primary_facts(
        (replica,), replication=(synchronous,), synchronous_standby_names=names
    )
    found = judge(cluster(topo, facts))
    assert found[("s0-primary", checks.SYNC)].detail == "synchronous: s0-replica-1"
