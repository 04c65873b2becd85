"""A PgBouncer in front of every node (issue 17), in transaction mode: provisioned by `up`,
checked by `verify-replication`, and every Router guarantee kept through it."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shardctl.config.credentials import POOLER_ADMIN
from shardctl.docker.specs import POOLER_DIR
from shardctl.errors import DatabaseUnavailable
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from tests.clusters import (
    free_base_port,
    load_watching_backends,
    make_topology,
    run_shardctl,
    running,
    sdk_container,
)
from tests.traffic import (
    assert_placed_and_replicated,
    check_ledger,
    preload,
    rows_by_shard,
    traffic,
)

POOLER_IMAGE = os.environ.get("SHARDCTL_POOLER_IMAGE", "shardctl-test/pgbouncer:1")
POOL_SIZE = 4
OFFSET = 40
"""Poolers on node port + 40: room for three shards' nodes below them."""


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 2 x 1 cluster (md5 ring) with a transaction-mode PgBouncer per node, Routers through
    them by default."""
    folder = tmp_path_factory.mktemp("pooled")
    path = make_topology(
        folder,
        base_port=free_base_port(2 * OFFSET),
        ring={"algorithm": "md5", "vnodes": 150},
        pooler={
            "image": POOLER_IMAGE,
            "mode": "transaction",
            "pool_size": POOL_SIZE,
            "port_offset": OFFSET,
            "router": True,
        },
    )
    with running(path) as cluster:
        yield cluster


def admin(cluster: Cluster, node_name: str, command: str) -> list[dict[str, object]]:
    """Rows of an admin console SHOW on the pooler of ``node_name``."""
    node = Cluster.load(cluster.topology.path).topology.node(node_name)
    assert node.pooler_port is not None
    with psycopg.connect(
        host=node.placement.advertise,
        port=node.pooler_port,
        dbname="pgbouncer",
        user=POOLER_ADMIN,
        password=cluster.credentials().pooler_password,
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
    ) as conn:
        cur = conn.execute(command)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def test_verify_names_a_stopped_pooler_and_up_repairs_it(pooled: Cluster) -> None:
    path = pooled.topology.path
    ok = run_shardctl("verify-replication", "-f", path, "-o", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    checks = json.loads(ok.stdout)["checks"]
    # Every pooled node of the cluster as it is now (other tests of this module grow it).
    pooled_nodes = Cluster.load(path).topology.pooled_nodes()
    assert len(pooled_nodes) >= 4
    passed = sum(c["check"] == "pooler" and c["result"] == "pass" for c in checks)
    assert passed == len(pooled_nodes), checks

    stopped = pooled.topology.node("shard-1-primary").pooler_container
    pooled.engines.client().containers.get(stopped).stop(timeout=1)
    failing = run_shardctl("verify-replication", "-f", path)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    named = f"shard-1-primary: pooler: pooler {stopped}: container exited"
    assert named in failing.stdout + failing.stderr
    status = run_shardctl("status", "-f", path, "-o", "json")
    assert status.returncode == 1
    assert "pooler" in status.stdout

    repaired = run_shardctl("up", "-f", path)
    assert repaired.returncode == 0, repaired.stderr
    again = run_shardctl("verify-replication", "-f", path)
    assert again.returncode == 0, again.stdout + again.stderr


def test_router_through_poolers_loses_nothing_across_add_shard_and_rebalance(
    pooled: Cluster,
) -> None:
    path = pooled.topology.path
    preloaded = preload(pooled, 5_000)
    stale = Router(pooled, via="pooler", epoch_check_interval=3600)  # never re-reads by itself
    old_ring = stale.ring
    with traffic(pooled, preloaded) as writers:
        assert writers[0].router.via == "pooler"  # the topology's pooler.router
        time.sleep(1.0)
        added = run_shardctl("add-shard", "shard-2", "-f", path, "--replicas", "1")
        assert added.returncode == 0, added.stderr
        done = run_shardctl("rebalance", "--yes", "-f", path, "-o", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["report"]["rows_copied"] > 0
        time.sleep(2.0)  # writers keep going on the new ring, through shard-2's pooler too
    router = writers[0].router
    assert all(not w.failed for w in writers), [w.failed[:3] for w in writers]
    assert sum(w.acknowledged for w in writers) > 200
    assert router.stats.dual_writes > 0  # the reshard's dual writes went through poolers
    stored, expected = check_ledger(pooled, writers, preloaded)
    assert stored == expected
    assert_placed_and_replicated(path)

    for shard in ("shard-0", "shard-1", "shard-2"):
        stats = {r["database"]: r for r in admin(pooled, f"{shard}-primary", "SHOW STATS")}
        assert int(str(stats["app"]["total_xact_count"])) > 0, shard  # traffic went through it
        pools = [
            r for r in admin(pooled, f"{shard}-primary", "SHOW POOLS") if r["database"] == "app"
        ]
        servers = sum(int(str(p[k])) for p in pools for k in ("sv_active", "sv_idle", "sv_used"))
        assert servers <= POOL_SIZE, (shard, pools)

    load = run_shardctl("load", "-f", path, "--via", "pooler", "--duration", "2", "-w", "8")
    assert load.returncode == 0, load.stdout + load.stderr

    # A stale Router through the poolers: its write reaches the old owner's pooler, the fence
    # refuses it there (inside the write's own transaction), the Router re-reads and follows.
    with Router(pooled, via="pooler") as fresh:
        ring = fresh.ring
    moved = next(k for k in preloaded if old_ring.node_for(k) != ring.node_for(k))
    try:
        assert stale.ring.node_for(moved) == old_ring.node_for(moved)
        written = stale.execute(
            moved,
            "INSERT INTO users (id, first_name) VALUES (%s, 'stale') "
            "ON CONFLICT (id) DO UPDATE SET first_name = 'stale'",
            (moved,),
        )
        assert written == 1
        assert stale.stats.fenced_writes >= 1 and stale.epoch > 1
    finally:
        stale.close()
    holders = {
        s: rows[str(moved)] for s, rows in rows_by_shard(pooled).items() if str(moved) in rows
    }
    assert holders == {ring.node_for(moved): "stale"}


def test_router_follows_a_switchover_to_the_new_primarys_pooler(pooled: Cluster) -> None:
    path = pooled.topology.path
    switched = run_shardctl("switchover", "shard-0", "--yes", "-f", path)
    assert switched.returncode == 0, switched.stderr
    verified = run_shardctl("verify-replication", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with Router.from_topology(path, via="pooler") as router:
        key = uuid.UUID(int=1, version=4)
        router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'after')", (key,))
        assert router.fetch(key, "SELECT first_name FROM users WHERE id = %s", (key,)) == [
            ("after",)
        ]
    promoted = Cluster.load(path)
    promoted.follow_roles()
    assert promoted.topology.node("shard-0-replica-1").pooler_port is not None
    served = admin(pooled, "shard-0-replica-1", "SHOW STATS")
    assert any(r["database"] == "app" and int(str(r["total_xact_count"])) > 0 for r in served)


def test_a_router_via_pooler_without_poolers_is_refused(tmp_path: Path) -> None:
    path = make_topology(tmp_path, 1, 0)
    with pytest.raises(Exception, match="declares no pooler"):
        Router.from_topology(path, via="pooler")


def test_load_through_poolers_takes_more_workers_than_the_servers_admit(pooled: Cluster) -> None:
    """120 workers: more than max_connections (100) leaves the load test straight to the
    servers, refused there; through the poolers they run, on at most pool_size server
    connections per primary (the very reason for a pooler)."""
    path = pooled.topology.path
    direct = run_shardctl("load", "-f", path, "--via", "direct", "--workers", "120", "--ops", "9")
    assert direct.returncode == 2, direct.stdout + direct.stderr
    assert "the servers' max_connections leaves 87" in direct.stderr
    acting = Cluster.load(path)
    acting.follow_roles()
    watched = load_watching_backends(
        acting, "--via", "pooler", "--users", "2000", "--workers", "120", "--ops", "2000",
        "-o", "json",
    )  # fmt: skip
    most = watched.most
    assert watched.returncode == 0, watched.stderr
    report = json.loads(watched.stdout)
    assert (report["workers"], report["ops"], report["failed"]) == (120, 2000, 0)
    assert all(0 < seen <= POOL_SIZE for seen in most.values()), most


def test_poolers_no_longer_declared_are_removed_by_up(pooled: Cluster) -> None:
    path = pooled.topology.path
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("pooler:\n", "pooler:\n  replicas: false\n", 1), "utf-8")
    try:
        assert Cluster.load(path).topology.pooler("shard-0") is not None
        narrowed = run_shardctl("up", "-f", path)
        assert narrowed.returncode == 0, narrowed.stderr
        assert "removed" in narrowed.stdout + narrowed.stderr
        names = {str(c.name) for c in pooled.engines.cluster_containers(pooled.topology)}
        assert not any(n.endswith("-replica-1-pooler") for n in names), names
        assert any(n.endswith("-primary-pooler") for n in names), names
        verified = run_shardctl("verify-replication", "-f", path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        # The module's other tests expect every node pooled, whatever order they run in.
        path.write_text(text, "utf-8")
        restored = run_shardctl("up", "-f", path)
        assert restored.returncode == 0, restored.stderr


def test_the_superuser_and_the_replication_role_cannot_log_in_through_a_pooler(
    pooled: Cluster,
) -> None:
    """docs/security.md: only the application role is in a pooler's userlist (and the admin
    console's user), so the other two are refused by the pooler itself -- not merely by the
    server's pg_hba.conf behind it, which would refuse them even from a pooler that let them in.
    """
    credentials = pooled.credentials()
    node = Cluster.load(pooled.topology.path).topology.node("shard-0-primary")
    assert node.pooler_port is not None
    listed = sdk_container(pooled, node, pooler=True).exec_run(
        ["cat", f"{POOLER_DIR}/userlist.txt"], user="postgres"
    )
    assert listed.exit_code == 0, listed.output
    assert isinstance(listed.output, bytes)  # not streamed
    users = [line.split('"')[1] for line in listed.output.decode().splitlines() if line]
    assert sorted(users) == sorted([credentials.app_user, POOLER_ADMIN]), users
    for user, password in (
        (credentials.superuser, credentials.superuser_password),
        (credentials.replication_user, credentials.replication_password),
    ):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(
                host=node.placement.advertise,
                port=node.pooler_port,
                dbname=pooled.topology.spec.database,
                user=user,
                password=password,
                connect_timeout=10,
            ).close()
        assert "pg_hba.conf" not in str(refused.value), (user, str(refused.value))
    app_user, app_password = credentials.app_user, credentials.app_password
    with psycopg.connect(
        host=node.placement.advertise,
        port=node.pooler_port,
        dbname=pooled.topology.spec.database,
        user=app_user,
        password=app_password,
        connect_timeout=10,
    ) as conn:  # the same pooler lets the application role in: the refusals above are real
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_stopped_pooler_is_no_silent_way_around_it(pooled: Cluster) -> None:
    """docs/router.md: a Router through the poolers never falls back to the server when its
    node's pooler stops; the write fails with DatabaseUnavailable and reaches no server."""
    path = pooled.topology.path
    acting = Cluster.load(path)
    acting.follow_roles()
    primary = acting.topology.shard_nodes("shard-1")[0]
    with Router.from_topology(path, via="pooler", deadline=3) as router:
        key = next(k for k in iter(uuid.uuid4, None) if router.ring.node_for(k) == "shard-1")
        pooled.engines.client().containers.get(primary.pooler_container).stop(timeout=1)
        try:
            with pytest.raises(DatabaseUnavailable):
                router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,))
            assert str(key) not in rows_by_shard(pooled)["shard-1"]  # not written around it
        finally:
            repaired = run_shardctl("up", "-f", path)
            assert repaired.returncode == 0, repaired.stderr
