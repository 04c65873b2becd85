"""Switchover and failover against real containers, under live ledgered traffic.

Writers go through ``Router`` objects created before any role change and keep a ledger of
every acknowledged operation; the role changes run through the real CLI, as an operator would.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from shardctl.config.credentials import Login
from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.ops.cluster import Cluster
from shardctl.ops.rolechange import Step
from shardctl.router.router import Router
from shardctl.state import catalog
from tests.clusters import pause, sdk_container
from tests.integration.conftest import ClusterFactory, run_shardctl
from tests.traffic import Writer, check_ledger, preload, traffic


def acknowledged_on(writers: list[Writer], cluster: Cluster, shard: str, after: float) -> int:
    """Operations on ``shard``'s keys acknowledged after ``after`` (time.monotonic())."""
    owner = catalog.read_any(cluster.topology, cluster.credentials()).record().ring().node_for
    return sum(
        1
        for w in writers
        for key, at in dict(w.acked_at).items()  # a copy: the writers are still running
        if at > after and owner(key) == shard
    )


def in_recovery(node: Node, cluster: Cluster) -> bool:
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


def count_rows(node: Node, cluster: Cluster) -> int:
    with pg.connect(node, cluster.credentials(), "app") as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_switchover_failover_and_rejoin_under_live_traffic(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory()
    path = cluster.topology.path
    preloaded = preload(cluster, 3000)
    with traffic(cluster, preloaded, threads=3) as writers:
        time.sleep(1.0)
        switched = run_shardctl("switchover", "shard-0", "--yes", "-f", path)
        assert switched.returncode == 0, switched.stderr
        pause = re.search(r"writes paused (\d+) ms", switched.stdout)
        assert pause is not None, switched.stdout
        assert "shard-0-primary -> shard-0-replica-1" in switched.stdout

        time.sleep(1.0)
        old_primary = cluster.topology.node("shard-1-primary")
        container = sdk_container(cluster, old_primary)
        assert container is not None
        container.kill()
        killed_at = time.monotonic()
        failed = run_shardctl("failover", "shard-1", "--yes", "-f", path)
        assert failed.returncode == 0, failed.stderr
        assert "possibly lost: cannot know" in failed.stdout
        done_at = time.monotonic()
        time.sleep(2.0)
        resumed = acknowledged_on(writers, cluster, "shard-1", done_at)
    # The same Router objects kept writing to shard-1, now to its new primary.
    assert resumed > 0
    assert [w.failed for w in writers] == [[], [], []]
    # Async failover: only writes acknowledged before the kill can be missing.
    check_ledger(cluster, writers, preloaded, may_lose=("shard-1", killed_at))

    status = run_shardctl("status", "-f", path, "-o", "json")
    assert status.returncode == 1  # shard-1-primary is fenced and down until `up`
    up = run_shardctl("up", "-f", path)
    assert up.returncode == 0, up.stderr
    verified = run_shardctl("verify-replication", "--deep", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    fresh = Cluster.load(path)
    fresh.follow_roles()
    assert fresh.topology.shard_nodes("shard-1")[0].name == "shard-1-replica-1"
    assert in_recovery(fresh.topology.node("shard-1-primary"), fresh)

    back = run_shardctl("switchover", "shard-0", "--to", "shard-0-primary", "--yes", "-f", path)
    assert back.returncode == 0, back.stderr
    assert not in_recovery(cluster.topology.node("shard-0-primary"), cluster)
    assert run_shardctl("verify-replication", "-f", path).returncode == 0


def test_sync_replication_loses_nothing_acknowledged_across_a_failover(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=1, replication="sync")
    path = cluster.topology.path
    preloaded = preload(cluster, 1000)
    assert_commits_wait_for_the_replica(cluster)
    with traffic(cluster, preloaded, threads=2) as writers:
        time.sleep(1.5)
        container = sdk_container(cluster, cluster.topology.node("shard-0-primary"))
        assert container is not None
        container.kill()
        failed = run_shardctl("failover", "shard-0", "--yes", "-f", path)
        assert failed.returncode == 0, failed.stderr
        assert "possibly lost: nothing acknowledged" in failed.stdout
        assert "wait until `shardctl up`" in failed.stderr
        up = run_shardctl("up", "-f", path)  # commits wait for a replica until this
        assert up.returncode == 0, up.stderr
        time.sleep(1.0)
    assert [w.failed for w in writers] == [[], []]
    check_ledger(cluster, writers, preloaded)  # nothing excused
    verified = run_shardctl("verify-replication", "-f", path, "-o", "json")
    assert verified.returncode == 0, verified.stdout  # the sync check: a synchronous replica


def assert_commits_wait_for_the_replica(cluster: Cluster) -> None:
    """What makes "nothing acknowledged is lost" true, shown rather than assumed: the replica is
    the primary's synchronous standby, the application role's sessions commit synchronously,
    and with the replica frozen a write through the Router is not acknowledged."""
    primary, replica = cluster.topology.shard_nodes("shard-0")[:2]
    with pg.connect(primary, cluster.credentials(), "postgres") as conn:
        states = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchall()
    assert states in ([("sync",)], [("quorum",)]), states  # ANY 1 (...) reads as quorum
    app = pg.conninfo(
        primary, cluster.credentials(), cluster.topology.spec.database, login=Login.APP
    )
    with psycopg.connect(app, autocommit=True) as conn:  # the setting the application's commits get
        commit = conn.execute("SHOW synchronous_commit").fetchone()
    assert commit is not None and commit[0] in ("on", "remote_write", "remote_apply"), commit
    container = sdk_container(cluster, replica)
    key = uuid.uuid4()
    pause(container)
    try:
        with Router(cluster, deadline=3) as router, pytest.raises(DatabaseUnavailable):
            router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,))
    finally:
        container.unpause()


def test_up_never_creates_an_empty_primary_over_a_replicas_data(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=1)
    path = cluster.topology.path
    preload(cluster, 500)
    primary = cluster.topology.node("shard-0-primary")
    cluster.engines.remove_node(primary)  # the container and its disk: a lost host

    refused = run_shardctl("up", "-f", path)
    assert refused.returncode == 1
    assert "shardctl failover shard-0" in refused.stderr
    assert cluster.engines.container(primary) is None  # nothing was created

    assert run_shardctl("failover", "shard-0", "--yes", "-f", path).returncode == 0
    up = run_shardctl("up", "-f", path)
    assert up.returncode == 0, up.stderr
    replica = cluster.topology.node("shard-0-replica-1")
    assert count_rows(replica, cluster) == 500  # the new primary kept every row
    deadline = time.monotonic() + 30
    while count_rows(primary, cluster) != 500 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert count_rows(primary, cluster) == 500  # re-cloned as its replica
    assert run_shardctl("verify-replication", "-f", path).returncode == 0


def test_a_fenced_old_primary_started_by_hand_takes_no_write(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=1)
    path = cluster.topology.path
    old = cluster.topology.node("shard-0-primary")
    container = sdk_container(cluster, old)
    assert container is not None
    with Router(cluster, epoch_check_interval=0.2) as router:
        first = uuid.uuid4()
        router.execute(first, "INSERT INTO users (id) VALUES (%s)", (first,))
        container.kill()
        assert run_shardctl("failover", "shard-0", "--yes", "-f", path).returncode == 0
        container.start()  # by hand, as an operator might
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if in_recovery(old, cluster):
                    break
            except Exception:
                time.sleep(0.2)
        assert in_recovery(old, cluster)  # standby.signal: it came back read-only
        later = uuid.uuid4()
        router.execute(later, "INSERT INTO users (id) VALUES (%s)", (later,))
    with pg.connect(old, cluster.credentials(), "app") as conn:
        assert conn.execute("SELECT 1 FROM users WHERE id = %s", (later,)).fetchone() is None
    new = cluster.topology.node("shard-0-replica-1")
    with pg.connect(new, cluster.credentials(), "app") as conn:
        assert conn.execute("SELECT 1 FROM users WHERE id = %s", (later,)).fetchone() is not None
    status = run_shardctl("status", "-f", path)
    assert status.returncode == 1  # the fenced node does not stream: reported until `up`
    assert "shard-0-primary" in status.stdout


def writable(cluster: Cluster) -> list[str]:
    """The nodes of the cluster that answer and accept writes."""
    names = []
    for node in cluster.topology.nodes:
        try:
            if not in_recovery(node, cluster):
                names.append(node.name)
        except DatabaseUnavailable:
            continue
    return names


KILL_SWITCHOVER_AFTER = Path(__file__).with_name("kill_switchover_after.py")


def test_a_switchover_killed_after_any_step_converges(cluster_factory: ClusterFactory) -> None:
    """Killed after each step in turn, then `up` (and `failover` where `up` names it) converge,
    with never two writable primaries and nothing acknowledged lost."""
    cluster = cluster_factory(shards=1)
    path = cluster.topology.path
    preloaded = preload(cluster, 500)
    recovered_by: dict[str, str] = {}
    with traffic(cluster, preloaded, threads=2) as writers:
        for step in Step:
            killed = subprocess.run(
                [sys.executable, str(KILL_SWITCHOVER_AFTER), str(path), "shard-0", step.value],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert killed.returncode == 137, (step, killed.stdout, killed.stderr)
            assert len(writable(cluster)) <= 1, f"two writable primaries after {step}"
            up = run_shardctl("up", "-f", path)
            recovered_by[step] = "up"
            if up.returncode != 0:
                assert "shardctl failover shard-0" in up.stderr, (step, up.stderr)
                failed = run_shardctl("failover", "shard-0", "--yes", "-f", path)
                assert failed.returncode == 0, (step, failed.stderr)
                up = run_shardctl("up", "-f", path)
                recovered_by[step] = "failover, up"
            assert up.returncode == 0, (step, up.stderr)
            assert len(writable(cluster)) == 1, step
            verified = run_shardctl("verify-replication", "-f", path)
            assert verified.returncode == 0, (step, verified.stdout + verified.stderr)
        time.sleep(0.5)
    print("recovered by:", recovered_by)  # which states the kills left, shown with -s
    assert [w.failed for w in writers] == [[], []], recovered_by
    check_ledger(cluster, writers, preloaded)
