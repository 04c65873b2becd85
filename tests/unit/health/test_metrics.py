"""The metrics of a snapshot, as pure logic: snapshots built by hand, the exposition parsed back.

The facts are the typed records the scrape reads (built here as in test_checks); the real
scrape, Prometheus and the alert rules are exercised by tests/integration/test_monitoring.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from shardctl.cli.metrics import parse_listen
from shardctl.config.topology import Topology, parse
from shardctl.db.poolers import PoolerFacts, PoolerObservation
from shardctl.docker.engine import Engines
from shardctl.errors import UsageError
from shardctl.health import distribution
from shardctl.health.archiving import ArchiveState
from shardctl.health.facts import ClusterFacts, ContainerState
from shardctl.health.metrics import Collector as MetricsCollector
from shardctl.health.metrics import Family, families
from shardctl.health.scrape import (
    Archiver,
    CatalogEntry,
    RoleChanges,
    RowsView,
    Scraper,
    Snapshot,
    exposure_problem,
    role_changes,
)
from shardctl.state.catalog import RingRecord, initial_record
from shardctl.state.inflight import RESHARD, ROLE_CHANGE, Operation
from tests.unit.health.test_checks import cluster, healthy, topology

ROOT = Path(__file__).resolve().parents[3]
Sample = tuple[str, tuple[tuple[str, str], ...]]


class _Fixed(Collector):
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def collect(self) -> Iterator[Family]:
        yield from families(self.snap)


def exposition(snap: Snapshot) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(snap))
    return generate_latest(registry).decode()


def samples(snap: Snapshot) -> dict[Sample, float]:
    """Every sample: (name, sorted labels) -> value."""
    found: dict[Sample, float] = {}
    for family in text_string_to_metric_families(exposition(snap)):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def of(found: dict[Sample, float], name: str, **labels: str) -> dict[Sample, float]:
    """The samples called ``name`` whose labels include ``labels``."""
    return {k: v for k, v in found.items() if k[0] == name and set(labels.items()) <= set(k[1])}


def value(found: dict[Sample, float], name: str, **labels: str) -> float:
    [only] = of(found, name, **labels).values()
    return only


def snapshot(facts: ClusterFacts, **changes: object) -> Snapshot:
    snap = Snapshot(
        topology=facts.topology,
        facts=facts,
        record=initial_record(facts.topology),
        operations=(),
        collectors={"health": True, "catalog": True, "operations": True},
        seconds=0.25,
    )
    return dataclasses.replace(snap, **changes)  # type: ignore[arg-type]


def test_a_healthy_idle_cluster() -> None:
    topo = topology()
    found = samples(snapshot(cluster(topo, dict(healthy(topo)))))
    nodes = [n.name for n in topo.nodes]
    assert {dict(k[1])["node"] for k in of(found, "shardctl_up")} == set(nodes)
    for key in of(found, "shardctl_up"):
        assert {name for name, _ in key[1]} == {"cluster", "shard", "node", "role"}
    assert set(of(found, "shardctl_up").values()) == {1.0}
    assert set(of(found, "shardctl_healthy").values()) == {1.0}
    assert value(found, "shardctl_primary", node="s0-primary", role="primary") == 1.0
    assert value(found, "shardctl_replica", node="s0-replica-1", role="replica") == 1.0
    # An idle primary is no lag: 0 bytes and 0 seconds on both replicas.
    assert list(of(found, "shardctl_replication_lag_bytes").values()) == [0.0, 0.0]
    assert list(of(found, "shardctl_replication_lag_seconds").values()) == [0.0, 0.0]
    assert set(of(found, "shardctl_replication_streaming").values()) == {1.0}
    assert value(found, "shardctl_replication_slot_active", node="s1-replica-1") == 1.0
    assert set(of(found, "shardctl_shard_primaries").values()) == {1.0}
    assert value(found, "shardctl_postgres_timeline", node="s0-primary") == 1.0
    assert value(found, "shardctl_wal_position_bytes", node="s0-primary") == 5000.0
    assert value(found, "shardctl_ring_epoch", cluster="demo") == 1.0
    shares = of(found, "shardctl_ring_key_share_ratio")
    assert len(shares) == 2 and sum(shares.values()) == pytest.approx(1.0)
    assert value(found, "shardctl_reshard_in_flight") == 0.0
    assert not of(found, "shardctl_reshard_phase")
    assert set(of(found, "shardctl_role_change_fenced").values()) == {0.0}
    assert value(found, "shardctl_scrape_collector_success", collector="health") == 1.0
    assert value(found, "shardctl_scrape_duration_seconds") == 0.25


def test_a_replica_that_does_not_answer_is_down_and_not_streaming() -> None:
    topo = topology()
    facts = dict(healthy(topo))
    stopped = {"s0-replica-1": ContainerState.EXITED}
    found = samples(snapshot(cluster(topo, dict(facts), states=stopped)))
    assert value(found, "shardctl_up", node="s0-replica-1") == 0.0
    assert value(found, "shardctl_container_running", node="s0-replica-1") == 0.0
    assert value(found, "shardctl_replication_streaming", node="s0-replica-1") == 0.0
    assert value(found, "shardctl_healthy", node="s0-replica-1") == 0.0
    assert value(found, "shardctl_primary", node="s0-replica-1") == 0.0
    # What is not known is absent, not zero: no lag of a replica that did not answer.
    assert not of(found, "shardctl_replication_lag_bytes", node="s0-replica-1")
    assert value(found, "shardctl_up", node="s1-replica-1") == 1.0


def test_two_writable_servers_in_a_shard() -> None:
    topo = topology()
    facts = dict(healthy(topo))
    replica = facts["s1-replica-1"]
    facts["s1-replica-1"] = dataclasses.replace(replica, in_recovery=False, current_lsn=6000)
    found = samples(snapshot(cluster(topo, dict(facts))))
    assert value(found, "shardctl_shard_primaries", shard="s1") == 2.0
    assert value(found, "shardctl_shard_primaries", shard="s0") == 1.0
    # Labelled by its acting role (the catalog's), valued by what the server says.
    assert value(found, "shardctl_primary", node="s1-replica-1", role="replica") == 1.0


def test_a_reshard_and_a_role_change_in_flight() -> None:
    topo = topology()
    started = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    operations = (
        Operation(
            RESHARD,
            7,
            "copying",
            ("s0", "s1"),
            "shardctl rebalance --resume",
            ranges_done=3,
            ranges_total=10,
            rows_copied=1200,
            rows_total=5000,
            started_at=started,
            updated_at=started,
        ),
        Operation(ROLE_CHANGE, None, "fenced", ("s1",), "shardctl up"),
    )
    found = samples(snapshot(cluster(topo, dict(healthy(topo))), operations=operations))
    assert value(found, "shardctl_reshard_in_flight") == 1.0
    assert value(found, "shardctl_reshard_phase", phase="copying", id="7") == 1.0
    assert value(found, "shardctl_reshard_copied_rows") == 1200.0
    assert value(found, "shardctl_reshard_planned_rows") == 5000.0
    assert value(found, "shardctl_reshard_copied_ranges") == 3.0
    assert value(found, "shardctl_reshard_planned_ranges") == 10.0
    assert value(found, "shardctl_reshard_updated_timestamp_seconds") == started.timestamp()
    assert value(found, "shardctl_role_change_fenced", shard="s1") == 1.0
    assert value(found, "shardctl_role_change_fenced", shard="s0") == 0.0


def test_operations_not_read_are_absent_not_zero() -> None:
    topo = topology()
    snap = snapshot(cluster(topo, dict(healthy(topo))), operations=None)
    found = samples(dataclasses.replace(snap, collectors={"operations": False}))
    assert not of(found, "shardctl_reshard_in_flight")
    assert value(found, "shardctl_scrape_collector_success", collector="operations") == 0.0


def test_poolers_archivers_role_changes_and_rows() -> None:
    topo = topology()
    node = topo.node("s0-primary")
    pooled = (
        PoolerObservation(
            node, "running", PoolerFacts("x", 1, "transaction", 4, 2, 1, 0, 1.5, False), None
        ),
        PoolerObservation(topo.node("s1-primary"), "exited", None, "container exited"),
    )
    facts = dataclasses.replace(cluster(topo, dict(healthy(topo))), poolers=pooled)
    counted = distribution.Distribution(
        "demo",
        1,
        "balanced",
        [],
        [distribution.ShardRows("users", "s0", 900, 0.5, 0.9, 12, 1)],
        12,
        1,
        None,
    )
    snap = snapshot(
        facts,
        archivers={"s0-primary": Archiver(True, 40, 2, 1000.0, 900.0, 5)},
        role_changes={"s1": RoleChanges(2000.0, 1500.0)},
        rows=RowsView(counted, 42.0, 0.5, True),
    )
    found = samples(snap)
    assert value(found, "shardctl_pooler_up", node="s0-primary") == 1.0
    assert value(found, "shardctl_pooler_up", node="s1-primary") == 0.0
    assert value(found, "shardctl_pooler_clients_waiting", node="s0-primary") == 2.0
    assert value(found, "shardctl_pooler_max_wait_seconds", node="s0-primary") == 1.5
    assert value(found, "shardctl_wal_archived_total", node="s0-primary") == 40.0
    assert value(found, "shardctl_wal_archive_failed_total", node="s0-primary") == 2.0
    assert value(found, "shardctl_wal_archive_pending_files", node="s0-primary") == 5.0
    assert value(found, "shardctl_wal_archiving_enabled", node="s0-primary") == 1.0
    assert value(found, "shardctl_last_role_change_timestamp_seconds", shard="s1") == 2000.0
    assert value(found, "shardctl_last_failover_timestamp_seconds", shard="s1") == 1500.0
    assert value(found, "shardctl_table_rows", shard="s0", table="users") == 900.0
    assert value(found, "shardctl_table_misplaced_rows", shard="s0", table="users") == 12.0
    assert value(found, "shardctl_table_duplicate_keys", shard="s0", table="users") == 1.0
    assert value(found, "shardctl_rows_count_age_seconds") == 42.0
    assert value(found, "shardctl_rows_count_success") == 1.0


def test_failovers_are_told_from_switchovers_by_the_fenced_primary() -> None:
    entries = [
        CatalogEntry(2, "role change: s0 -> s0-replica-1", 100.0, ()),  # switchover
        CatalogEntry(3, "role change: s1 -> s1-replica-1", 200.0, ("s1-primary",)),  # failover
        CatalogEntry(4, "up: re-joined s1-primary", 250.0, ()),
        CatalogEntry(5, "role change: s1 -> s1-primary", 300.0, ()),  # switchover back
        CatalogEntry(3, "role change: s1 -> s1-replica-1", 200.0, ("s1-primary",)),  # 2nd copy
    ]
    assert role_changes(entries) == {
        "s0": RoleChanges(100.0, None),
        "s1": RoleChanges(300.0, 200.0),
    }
    assert role_changes([]) == {}


def with_security(topo: Topology, extra: str) -> Topology:
    text = (
        f"cluster: demo\n{extra}\ntables:\n  - name: users\nshards:\n"
        "  - name: s0\n    replicas: 1\n"
    )
    return parse(text, topo.path)


@pytest.mark.parametrize(
    ("address", "extra", "tls", "refused"),
    [
        ("127.0.0.1", "", False, None),
        ("::1", "", False, None),
        ("localhost", "", False, None),
        ("0.0.0.0", "", False, "in clear"),
        ("0.0.0.0", "", True, None),
        ("10.1.2.3", "allow_plaintext: true\nbind_address: 10.1.2.3", False, None),
    ],
)
def test_the_listener_follows_the_exposure_rule(
    address: str, extra: str, tls: bool, refused: str | None
) -> None:
    topo = with_security(topology(), extra)
    problem = exposure_problem(address, topo, tls=tls)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem and "127.0.0.1" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9560", ("127.0.0.1", 9560)),
        ("[::1]:9560", ("::1", 9560)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["9560", "127.0.0.1", "127.0.0.1:0", ":9560", "host:9560", "a:b"])
def test_bad_listen_addresses_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--listen"):
        parse_listen(text)


def every_metric(snap: Snapshot) -> set[str]:
    return {family.name for family in families(snap)}


def full_snapshot() -> Snapshot:
    topo = topology()
    now = time.time()
    archive = ArchiveState("s0", "s0-primary", "ok", 0, now - 1, 0.0)
    return snapshot(
        cluster(topo, dict(healthy(topo))),
        rows=RowsView(None, None, None, False),
        archives={"s0": archive},
        last_backup={"s0": now - 60},
    )


def test_every_metric_is_documented_and_named_by_the_conventions() -> None:
    documented = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    snap = full_snapshot()
    names = {f.name + ("_total" if f.type == "counter" else "") for f in families(snap)}
    assert len(names) > 40
    for name in names:
        assert f"`{name}`" in documented, f"{name} missing from docs/monitoring.md"
        assert name.startswith("shardctl_")
        # A counter ends in _total, nothing else does; units are suffixes.
        assert name.endswith("_total") == (
            name in {"shardctl_wal_archived_total", "shardctl_wal_archive_failed_total"}
        )
        assert not re.search(r"_(ms|milliseconds|kb|mb|percent)(_|$)", name)
    listed = set(re.findall(r"^\| `(shardctl_[a-z_]+)`", documented, flags=re.M))
    assert listed == names, "docs/monitoring.md lists metrics that do not exist"


def test_the_dashboard_is_valid_json_with_the_expected_panels() -> None:
    board = json.loads((ROOT / "monitoring" / "grafana-dashboard.json").read_text("utf-8"))
    panels = {p["title"]: p for p in board["panels"]}
    for title in ("Role", "Replication lag (seconds)", "Rows per shard", "Reshard progress"):
        assert title in panels, title
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    known = {f.name for f in families(full_snapshot())} | {"shardctl_wal_archive_failed_total"}
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"shardctl_[a-z_]+", target["expr"]))
            assert used and used <= known, (panel["title"], used - known)
            assert 'cluster="$cluster"' in target["expr"]
    assert "shardctl_reshard_copied_rows" in str(panels["Reshard progress"]["targets"])
    assert "shardctl_primary" in str(panels["Role"]["targets"])
    assert "shardctl_table_rows" in str(panels["Rows per shard"]["targets"])
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "cluster"]
    assert "shardctl_up" in variable["definition"]


def test_an_unused_record_type_is_harmless() -> None:
    # A ring record whose ring is invalid yields no share series, never an exception.
    topo = topology()
    bad = RingRecord(3, "nonsense", 0, ("s0",))
    found = samples(snapshot(cluster(topo, dict(healthy(topo))), record=bad))
    assert value(found, "shardctl_ring_epoch") == 3.0
    assert not of(found, "shardctl_ring_key_share_ratio")


class _SlowScraper(Scraper):
    """Reads nothing: counts its readings and holds each until released."""

    def __init__(self, snap: Snapshot) -> None:
        super().__init__(snap.topology, Engines(), lambda: pytest.fail("no credentials"))
        self.snap, self.readings, self.release = snap, 0, threading.Event()

    def snapshot(self) -> Snapshot:
        self.readings += 1
        self.release.wait(10)
        return self.snap


def test_scrapes_during_a_reading_share_it() -> None:
    scraper = _SlowScraper(full_snapshot())
    collector = MetricsCollector(scraper)
    results: list[int] = []

    def scrape() -> None:
        results.append(len(list(collector.collect())))

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # all three are waiting on the first reading
    scraper.release.set()
    for thread in threads:
        thread.join(10)
    assert scraper.readings == 1 and len(results) == 3 and len(set(results)) == 1
    list(collector.collect())  # the next scrape reads afresh
    assert scraper.readings == 2
