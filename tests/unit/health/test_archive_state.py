"""Archiving judged from facts already read (status, metrics): the backup node's slot on each
acting primary, and the repository's newest WAL time when given."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from shardctl.config.constants import BACKUP_SLOT
from shardctl.config.topology import Topology, parse
from shardctl.health.archiving import ArchiveState, archive_states
from shardctl.health.facts import ClusterFacts, NodeFacts, Slot
from shardctl.health.metrics import families
from shardctl.health.status import status_rows
from tests.unit.health.test_checks import LIMITS, cluster, healthy, topology
from tests.unit.health.test_metrics import of, samples, snapshot, value

NOW = 1_800_000_000.0


def backed_up() -> Topology:
    text = (
        "cluster: demo\ntables:\n  - name: users\nshards:\n"
        "  - name: s0\n    replicas: 1\n  - name: s1\n    replicas: 1\n"
        "backup:\n  repository: backups\n"
    )
    return parse(text, Path("topology.yaml"))


def with_backup_slot(facts: NodeFacts, **changes: object) -> NodeFacts:
    slot = Slot(BACKUP_SLOT, "physical", True, "reserved", None, facts.current_lsn)
    return dataclasses.replace(facts, slots=(*facts.slots, dataclasses.replace(slot, **changes)))  # type: ignore[arg-type]


def archived(topo: Topology, **per_primary: dict[str, object]) -> ClusterFacts:
    """A healthy cluster whose primaries have the backup slot (changed per primary)."""
    facts: dict[str, NodeFacts | None] = dict(healthy(topo))
    for primary in topo.primaries():
        own = facts[primary.name]
        assert own is not None
        changes = per_primary.get(primary.name.replace("-", "_"), {})
        facts[primary.name] = with_backup_slot(own, **changes)
    return cluster(topo, facts)


def test_no_backup_key_no_archiving_facts() -> None:
    topo = topology()
    assert archive_states(cluster(topo, dict(healthy(topo))), LIMITS) == {}
    assert all(r.archiving is None for r in status_rows(cluster(topo, dict(healthy(topo)))))


def test_caught_up_is_ok_with_no_lag_even_when_the_newest_file_is_old() -> None:
    facts = archived(backed_up())
    found = archive_states(facts, LIMITS, {"s0": NOW - 3600, "s1": None}, now=NOW)
    assert set(found) == {"s0", "s1"}
    assert found["s0"] == ArchiveState("s0", "s0-primary", "ok", 0, NOW - 3600, 0.0)
    assert found["s1"].ok and found["s1"].lag_seconds == 0.0 and found["s1"].problem is None


def test_wal_waiting_behind_an_old_newest_file_is_behind_naming_the_shard() -> None:
    facts = archived(backed_up(), s1_primary={"restart_lsn": 4000})
    found = archive_states(facts, LIMITS, {"s0": NOW - 1, "s1": NOW - 120}, now=NOW)
    assert found["s0"].ok
    s1 = found["s1"]
    assert (s1.state, s1.behind_bytes, s1.lag_seconds) == ("behind", 1000, 120.0)
    assert s1.problem is not None and s1.problem.startswith("s1: archiving behind: 1000 B")
    # WAL waiting for less than the canary timeout: a busy shard, not a stuck one.
    recent = archive_states(facts, LIMITS, {"s1": NOW - 0.4}, now=NOW)["s1"]
    assert recent.ok and recent.lag_seconds == pytest.approx(0.4)
    # Without the repository's times, only more than max_lag_bytes waiting is behind.
    assert archive_states(facts, LIMITS)["s1"].state == "ok"
    far = archived(backed_up(), s1_primary={"restart_lsn": 0})
    limits = LIMITS.replace(max_lag_bytes=100)
    assert archive_states(far, limits)["s1"].state == "behind"


def test_an_idle_slot_or_none_is_a_problem_of_the_primary_row() -> None:
    topo = backed_up()
    facts = archived(topo, s0_primary={"active": False})
    plain: dict[str, NodeFacts | None] = dict(healthy(topo))
    s1 = plain["s1-primary"]
    assert s1 is not None
    facts = cluster(topo, {**{o.node.name: o.facts for o in facts.nodes}, "s1-primary": s1})
    found = archive_states(facts, LIMITS)
    assert found["s0"].state == "not streaming" and "not streaming" in str(found["s0"].problem)
    assert found["s1"].state == "no slot" and BACKUP_SLOT in str(found["s1"].problem)
    rows = {r.name: r for r in status_rows(facts)}
    assert not rows["s0-primary"].healthy and rows["s0-primary"].health == "archiving stuck"
    assert str(rows["s0-primary"].problem).startswith("archiving: s0: archiving")
    assert rows["s0-replica-1"].healthy and rows["s0-replica-1"].archiving is None
    # A primary that does not answer: unknown, its own problem (no answer) is the row's.
    gone = cluster(topo, {**{o.node.name: o.facts for o in facts.nodes}, "s0-primary": None})
    assert archive_states(gone, LIMITS)["s0"].state == "unknown"
    assert status_rows(gone)[0].health == "no answer"


def test_a_full_repository_is_named_whatever_the_slot_shows_and_read_only_when_needed() -> None:
    topo = backed_up()
    stopped = archived(topo, s0_primary={"active": False})
    reads: list[int] = []

    def free(room: int) -> Callable[[], int | None]:
        def read() -> int | None:
            reads.append(room)
            return room

        return read

    found = archive_states(stopped, LIMITS, free_space=free(3 * 1024 * 1024))
    s0 = found["s0"]
    assert s0.state == "not streaming" and s0.repository_full and found["s1"].ok
    assert s0.problem == (
        "s0: archiving stuck: the backup repository is full (3.0 MiB free); "
        "free space or lower `backup.retention`"
    )
    row = {r.name: r for r in status_rows(stopped, free_space=free(1024))}["s0-primary"]
    assert row.health == "archiving stuck" and "repository is full" in str(row.problem)
    # Room enough: the backup node is simply not streaming, as before.
    roomy = archive_states(stopped, LIMITS, free_space=free(10 * 1024**3))["s0"]
    assert not roomy.repository_full and "not streaming" in str(roomy.problem)
    # Unknown room says nothing about fullness.
    unknown = archive_states(stopped, LIMITS, free_space=lambda: None)["s0"]
    assert not unknown.repository_full and "not streaming" in str(unknown.problem)
    assert reads == [3 * 1024 * 1024, 1024, 10 * 1024**3]  # once per judgement
    # Every shard archiving: the repository is not read at all.
    archive_states(archived(topo), LIMITS, free_space=free(0))
    assert reads == [3 * 1024 * 1024, 1024, 10 * 1024**3]


def test_metrics_of_the_repository_and_the_slot() -> None:
    topo = backed_up()
    facts = archived(topo, s1_primary={"restart_lsn": 4000, "active": False})
    archives = archive_states(facts, LIMITS, {"s0": NOW - 5, "s1": NOW - 90}, now=NOW)
    snap = snapshot(facts, archives=archives, last_backup={"s0": NOW - 600, "s1": NOW - 700})
    found = samples(snap)
    assert value(found, "shardctl_backup_last_complete_timestamp_seconds", shard="s0") == NOW - 600
    assert value(found, "shardctl_backup_wal_newest_timestamp_seconds", shard="s1") == NOW - 90
    assert value(found, "shardctl_backup_wal_lag_seconds", shard="s0") == 0.0
    assert value(found, "shardctl_backup_wal_lag_seconds", shard="s1") == 90.0
    assert value(found, "shardctl_backup_wal_lag_bytes", shard="s1") == 1000.0
    assert value(found, "shardctl_backup_wal_streaming", shard="s0") == 1.0
    assert value(found, "shardctl_backup_wal_streaming", shard="s1") == 0.0
    assert value(found, "shardctl_backup_archiving_ok", shard="s0") == 1.0
    assert value(found, "shardctl_backup_archiving_ok", shard="s1") == 0.0
    # The room not read: s1's archiving is stuck, and whether for want of room is not known.
    assert value(found, "shardctl_backup_repository_full", shard="s0") == 0.0
    assert of(found, "shardctl_backup_repository_full", shard="s1") == {}
    assert not any(name == "shardctl_backup_repository_free_bytes" for name, _ in found)
    # The repository read with its room (as `metrics` reads it): s1 is stuck for want of it.
    full = archive_states(facts, LIMITS, {"s0": NOW - 5, "s1": NOW - 90}, now=NOW,
                          free_space=lambda: 1024)  # fmt: skip
    found = samples(snapshot(facts, archives=full, repository_free=1024))
    assert value(found, "shardctl_backup_repository_full", shard="s1") == 1.0
    assert value(found, "shardctl_backup_repository_full", shard="s0") == 0.0
    assert value(found, "shardctl_backup_repository_free_bytes") == 1024.0
    # Without backup: no such family at all.
    plain = topology()
    names = {f.name for f in families(snapshot(cluster(plain, dict(healthy(plain)))))}
    assert not any(name.startswith("shardctl_backup_") for name in names)
