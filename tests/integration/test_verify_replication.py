"""`shardctl verify-replication` against real clusters and real failures.

The CLI runs in a subprocess, as CI would run it: exit codes, stdout JSON, stderr lines and
the JUnit file are what is asserted. Every test leaves the shared cluster healthy again (or
uses a cluster of its own when the damage cannot be undone).
"""

from __future__ import annotations

import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from shardctl.db import pg
from shardctl.docker.records import LABEL_CLUSTER
from shardctl.ops.cluster import Cluster
from shardctl.util.waiting import NotYet, wait_for
from tests.clusters import pause, sdk_container
from tests.integration.conftest import TEST_IMAGE, ClusterFactory, run_shardctl

REPLICA = "shard-0-replica-1"
SLOT = "shard_0_replica_1"


def verify(cluster: Cluster, *args: str | Path) -> tuple[int, dict[str, Any], str]:
    """Run the CLI with JSON output; return exit code, document and stderr."""
    result = run_shardctl("verify-replication", "-f", cluster.topology.path, "-o", "json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    data = json.loads(result.stdout) if result.stdout else {}
    return result.returncode, data, result.stderr


def failed(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c["node"], c["check"]): c["detail"] for c in data["checks"] if not c["ok"]}


def container(cluster: Cluster, name: str) -> Container:
    found = sdk_container(cluster, cluster.topology.node(name))
    assert found is not None
    return found


def wait_healthy(cluster: Cluster, timeout: float = 90) -> None:
    """Until every check passes (a repaired replica needs a moment to stream again)."""

    def probe() -> None:
        report = cluster.verify_replication()
        if not report.ok:
            raise NotYet("; ".join(c.line for c in report.failures))

    wait_for(probe, timeout=timeout, what="a healthy cluster", on_timeout=AssertionError)


def insert_users(cluster: Cluster, node: str, n: int) -> list[uuid.UUID]:
    keys = [uuid.uuid4() for _ in range(n)]
    target = cluster.topology.node(node)
    with (
        pg.connect(target, cluster.credentials(), cluster.topology.spec.database) as conn,
        conn.cursor() as cur,
    ):
        cur.executemany(
            "INSERT INTO users (id, first_name) VALUES (%s, %s)",
            [(k, f"user {i}") for i, k in enumerate(keys)],
        )
    return keys


@contextmanager
def paused(box: Container) -> Iterator[None]:
    pause(box)
    try:
        yield
    finally:
        box.unpause()


@contextmanager
def hung(box: Container) -> Iterator[None]:
    """The server process stops answering while its container still runs (a hung node)."""
    box.kill(signal="SIGSTOP")
    try:
        yield
    finally:
        box.kill(signal="SIGCONT")


def test_healthy_cluster_passes_with_canary_and_deep(shared_cluster: Cluster) -> None:
    insert_users(shared_cluster, "shard-0-primary", 50)
    insert_users(shared_cluster, "shard-1-primary", 30)
    code, data, stderr = verify(shared_cluster, "--deep")
    assert code == 0, stderr
    assert data["ok"] is True and failed(data) == {}
    checks = {(c["node"], c["check"]): c for c in data["checks"]}
    canary = checks[(REPLICA, "canary")]
    assert canary["result"] == "pass" and canary["seconds"] is not None
    assert canary["detail"].startswith("canary from shard-0-primary visible after")
    assert checks[(REPLICA, "deep:users")]["detail"].startswith("50 rows, same checksum")
    assert checks[("shard-1-replica-1", "deep:users")]["detail"].startswith("30 rows")
    assert {c["result"] for c in data["checks"]} == {"pass"}


def test_table_output_names_every_check(shared_cluster: Cluster) -> None:
    # -o wide is the table with a row per check; the default groups them per node (80 columns).
    result = run_shardctl("verify-replication", "-o", "wide", "-f", shared_cluster.topology.path)
    assert result.returncode == 0, result.stderr
    assert "all 28 checks passed" in result.stdout
    for check in ("one-primary", "upstream", "walsender", "slot", "lag-bytes", "canary"):
        assert check in result.stdout


def test_idle_longer_than_the_time_threshold_is_not_lag(shared_cluster: Cluster) -> None:
    code, _, stderr = verify(shared_cluster)  # settles any write of the previous test
    assert code == 0, stderr
    time.sleep(2.5)
    code, data, stderr = verify(shared_cluster, "--max-lag-seconds", "1")
    assert code == 0, stderr
    lag = next(c for c in data["checks"] if (c["node"], c["check"]) == (REPLICA, "lag-seconds"))
    assert lag["detail"].startswith("0 s")


def test_paused_replica_fails_naming_it(shared_cluster: Cluster) -> None:
    with paused(container(shared_cluster, REPLICA)):
        code, data, stderr = verify(shared_cluster)
    assert code == 1
    assert failed(data)[(REPLICA, "reachable")] == "container paused"
    assert f"{REPLICA}: reachable: container paused" in stderr
    assert all(node.startswith(REPLICA) for node, _ in failed(data))  # others unaffected
    wait_healthy(shared_cluster)


def test_hung_replica_fails_by_timeout_without_stalling_the_rest(shared_cluster: Cluster) -> None:
    # A canary that waited for the hung node would take 30 s; the probe gives up after 2 s.
    started = time.monotonic()
    with hung(container(shared_cluster, REPLICA)):
        code, data, stderr = verify(shared_cluster, "--timeout", "2", "--canary-timeout", "30")
    elapsed = time.monotonic() - started
    assert code == 1, stderr
    assert failed(data) == {(REPLICA, "reachable"): failed(data)[(REPLICA, "reachable")]}
    assert "timeout" in failed(data)[(REPLICA, "reachable")]
    other = {(c["node"], c["check"]): c for c in data["checks"]}
    assert other[("shard-1-replica-1", "canary")]["result"] == "pass"
    assert elapsed < 20, f"verify-replication took {elapsed:.1f}s with one hung node"
    wait_healthy(shared_cluster)


def test_stopped_replica_fails_in_junit_and_up_repairs_it(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    report = tmp_path / "report.xml"
    container(shared_cluster, REPLICA).stop(timeout=10)
    code, data, stderr = verify(shared_cluster, "--junit", report)
    assert code == 1
    bad = failed(data)
    assert bad[(REPLICA, "reachable")] == "container exited"
    assert bad[(REPLICA, "walsender")] == f"shard-0-primary has no walsender using slot {SLOT}"
    assert f"{REPLICA}: reachable: container exited" in stderr

    root = ET.parse(report).getroot()
    assert root.get("failures") == str(len(bad))
    failures = {
        case.get("name"): case.find("failure")
        for case in root.iter("testcase")
        if case.find("failure") is not None
    }
    assert set(failures) == {f"{node}: {check}" for node, check in bad}
    reachable = failures[f"{REPLICA}: reachable"]
    assert reachable is not None and reachable.get("message") == "container exited"

    up = run_shardctl("up", "-f", shared_cluster.topology.path)
    assert up.returncode == 0, up.stderr
    code, data, stderr = verify(shared_cluster, "--junit", report)
    assert code == 0, stderr
    assert ET.parse(report).getroot().get("failures") == "0"


def test_dropped_slot_fails_naming_the_slot_and_up_repairs_it(shared_cluster: Cluster) -> None:
    replica = container(shared_cluster, REPLICA)
    replica.stop(timeout=10)  # an active slot cannot be dropped
    primary = shared_cluster.topology.node("shard-0-primary")
    with pg.connect(primary, shared_cluster.credentials(), "postgres") as conn:
        conn.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (SLOT,))
    replica.start()
    code, data, stderr = verify(shared_cluster, "--canary-timeout", "2")
    assert code == 1
    assert failed(data)[(REPLICA, "slot")] == f"slot {SLOT} missing on shard-0-primary"
    assert f"{REPLICA}: slot: slot {SLOT} missing on shard-0-primary" in stderr

    up = run_shardctl("up", "-f", shared_cluster.topology.path)
    assert up.returncode == 0, up.stderr
    wait_healthy(shared_cluster)
    code, _, stderr = verify(shared_cluster, "--deep")
    assert code == 0, stderr


def test_undeclared_slot_and_container_are_findings(shared_cluster: Cluster) -> None:
    primary = shared_cluster.topology.node("shard-1-primary")
    name = f"{shared_cluster.topology.cluster}-shard-1-replica-2"
    stray = shared_cluster.engines.client(primary.placement).containers.create(
        TEST_IMAGE, command=["true"], name=name, labels={LABEL_CLUSTER: primary.cluster}
    )
    try:
        with pg.connect(primary, shared_cluster.credentials(), "postgres") as conn:
            conn.execute("SELECT pg_catalog.pg_create_physical_replication_slot('stray')")
        try:
            code, data, stderr = verify(shared_cluster)
        finally:
            with pg.connect(primary, shared_cluster.credentials(), "postgres") as conn:
                conn.execute("SELECT pg_catalog.pg_drop_replication_slot('stray')")
    finally:
        stray.remove(force=True)
    assert code == 1
    assert failed(data) == {
        ("shard-1-primary", "undeclared"): "inactive slot stray retains WAL",
        (name, "undeclared"): f"container {name} carries the cluster's label but is not declared",
    }
    assert f"FAIL {name}: undeclared" in stderr
    code, _, stderr = verify(shared_cluster)
    assert code == 0, stderr


def test_row_changed_on_a_replica_promoted_by_hand(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory()
    keys = insert_users(cluster, "shard-1-primary", 20)
    wait_healthy(cluster)
    replica = cluster.topology.node("shard-1-replica-1")
    with pg.connect(replica, cluster.credentials(), cluster.topology.spec.database) as conn:
        conn.execute("SELECT pg_catalog.pg_promote()")
        conn.execute("UPDATE users SET first_name = 'changed' WHERE id = %s", (keys[7],))

    code, data, stderr = verify(cluster, "--deep")
    assert code == 1
    bad = failed(data)
    assert bad[("shard-1-primary", "one-primary")] == (
        "split brain: 2 writable primaries (shard-1-primary, shard-1-replica-1); "
        "the catalog's is shard-1-primary, and no Router writes to the other"
    )
    assert bad[("shard-1-replica-1", "in-recovery")].startswith("not in recovery")
    assert bad[("shard-1-replica-1", "timeline")] == "2, but shard-1-primary is on timeline 1"
    assert bad[("shard-1-replica-1", "deep:users")] == (
        f"20 rows on both, checksums differ while out of recovery; id {keys[7]} (differs)"
    )
    assert "shard-1-replica-1: deep:users: 20 rows on both" in stderr
    assert not any(node.startswith("shard-0") for node, _ in bad)


def test_every_node_unreachable_exits_3(cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    cluster = cluster_factory(up=False)
    report = tmp_path / "report.xml"
    code, data, stderr = verify(cluster, "--junit", report)
    assert code == 3
    # The one not-running message every command gives (issue 10's exit-code policy).
    assert f"the cluster `{cluster.topology.cluster}` is not running: run `shardctl up`" in stderr
    assert failed(data)[("shard-0-primary", "reachable")] == (
        "missing: declared primary has no container"
    )
    assert ET.parse(report).getroot().get("failures") != "0"


def test_bad_usage_exits_2(shared_cluster: Cluster) -> None:
    result = run_shardctl(
        "verify-replication", "-f", shared_cluster.topology.path, "--max-lag-bytes", "lots"
    )
    assert result.returncode == 2
    assert "'lots' is not a size" in result.stderr and "Traceback" not in result.stderr
