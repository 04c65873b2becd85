"""Several Docker hosts, for real on one machine: two engines, each in its own network
namespace (scripts/second-host.sh), every replica on the other host than its primary.

Replication crosses hosts through the primaries' advertised addresses and published ports; the
CLI and the Routers reach every node the same way. One host is then lost as a whole (its engine
stopped, its address gone): the other host's nodes are still reported, a failover promotes a
replica there, and ``up`` brings the lost host's nodes back as replicas when it returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import yaml

from shardctl.db import pg
from shardctl.docker.clients import make_client
from shardctl.docker.records import LABEL_CLUSTER
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from tests.clusters import (
    Host,
    make_topology,
    pgdata_of,
    sdk_container,
    simulated_hosts,
    split_topology,
)
from tests.integration.conftest import run_shardctl
from tests.traffic import check_ledger, preload, traffic


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    """Two simulated hosts for the module; removed with all they hold, even on failure."""
    with simulated_hosts(2) as made:
        yield made


@pytest.fixture
def split(hosts: list[Host], tmp_path: Path) -> Iterator[Cluster]:
    """A 2 shards x 1 replica cluster over the two hosts, every replica on the other host."""
    for host in hosts:
        host.start()  # a test that lost a host may have failed before bringing it back
    path = split_topology(tmp_path, hosts)
    cluster = Cluster.load(path)
    try:
        yield cluster
    finally:
        try:
            for host in hosts:
                host.start()
            cluster.down(volumes=True)  # a failure here fails the test: nothing left behind
        finally:
            cluster.close()


def sender_host(cluster: Cluster, replica: str) -> str:
    """Where a replica's WAL receiver streams from, as the replica itself says."""
    node = cluster.topology.node(replica)
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute("SELECT sender_host FROM pg_catalog.pg_stat_wal_receiver").fetchone()
    assert row is not None, f"{replica} does not stream"
    return str(row[0])


def leftovers(host: Host, cluster: str) -> list[str]:
    """Containers, volumes and networks of ``cluster`` still on ``host``'s engine."""
    client = make_client(host.endpoint)
    try:
        labelled: dict[str, str | list[str] | bool] = {"label": f"{LABEL_CLUSTER}={cluster}"}
        return (
            [str(c.name) for c in client.containers.list(all=True, filters=labelled)]
            + [str(v.name) for v in client.volumes.list(filters=labelled)]
            + [str(n.name) for n in client.networks.list(filters=labelled)]
        )
    finally:
        client.close()


def test_replicas_on_the_other_host_keep_every_write_through_a_reshard(
    split: Cluster, hosts: list[Host]
) -> None:
    a, b = hosts
    path = split.topology.path
    up = run_shardctl("up", "-f", path)
    assert up.returncode == 0, up.stderr

    # Each replica streams from its primary's host address, never a container name.
    assert sender_host(split, "shard-0-replica-1") == a.address
    assert sender_host(split, "shard-1-replica-1") == b.address
    status = run_shardctl("status", "-f", path, "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    engines = {n["node"]: (n["engine"], n["address"]) for n in json.loads(status.stdout)["nodes"]}
    assert engines == {
        "shard-0-primary": ("a", a.address),
        "shard-0-replica-1": ("b", b.address),
        "shard-1-primary": ("b", b.address),
        "shard-1-replica-1": ("a", a.address),
    }

    preloaded = preload(split, 1000)
    with traffic(split, preloaded) as writers:
        time.sleep(1.0)
        added = run_shardctl(
            "add-shard", "shard-2", "--engine", "b", "--replica-engine", "a", "-f", path
        )
        assert added.returncode == 0, added.stderr
        moved = run_shardctl("rebalance", "--yes", "-f", path)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        time.sleep(1.0)
    assert [w.failed for w in writers] == [[], []]
    assert sum(w.acknowledged for w in writers) > 50
    check_ledger(split, writers, preloaded)

    grown = Cluster.load(path)
    assert grown.topology.node("shard-2-primary").placement.name == "b"
    assert grown.topology.node("shard-2-replica-1").placement.name == "a"
    assert sender_host(grown, "shard-2-replica-1") == b.address
    distribution = run_shardctl("distribution", "-f", path)
    assert distribution.returncode == 0, distribution.stdout + distribution.stderr
    verified = run_shardctl("verify-replication", "--deep", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    down = run_shardctl("down", "--volumes", "--yes", "-f", path)
    assert down.returncode == 0, down.stderr
    assert leftovers(a, split.topology.cluster) == []
    assert leftovers(b, split.topology.cluster) == []


def test_a_lost_host_is_reported_failed_over_and_rejoins(split: Cluster, hosts: list[Host]) -> None:
    a, b = hosts
    path = split.topology.path
    split.up(timeout=180)
    keys = preload(split, 500)
    assert run_shardctl("verify-replication", "-f", path).returncode == 0  # replicas caught up

    b.stop()
    status = run_shardctl("status", "-f", path, "-o", "json")
    assert status.returncode == 1, status.stdout + status.stderr
    nodes = {n["node"]: n for n in json.loads(status.stdout)["nodes"]}
    for lost in ("shard-0-replica-1", "shard-1-primary"):
        assert nodes[lost]["state"] == "unreachable"
        assert f"host {b.address} unreachable" in nodes[lost]["problem"]
    assert nodes["shard-0-primary"]["healthy"]  # the surviving host is still judged
    verified = run_shardctl("verify-replication", "-f", path)
    assert verified.returncode == 1
    assert f"shard-1-primary: reachable: host {b.address} unreachable" in verified.stderr

    failed = run_shardctl("failover", "shard-1", "--yes", "-f", path)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    assert "shard-1-primary -> shard-1-replica-1" in failed.stdout
    moved = Cluster.load(path)
    moved.follow_roles()
    assert moved.topology.shard_nodes("shard-1")[0].name == "shard-1-replica-1"
    router = Router(moved)
    try:
        key = next(k for k in keys if router.owner(k) == "shard-1")
        changed = router.execute(key, "UPDATE users SET first_name = 'after' WHERE id = %s", (key,))
        assert changed == 1  # written on the promoted replica, on the surviving host
    finally:
        router.close()

    b.start()
    up = run_shardctl("up", "-f", path)
    assert up.returncode == 0, up.stderr
    status = run_shardctl("status", "-f", path, "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    nodes = {n["node"]: n for n in json.loads(status.stdout)["nodes"]}
    assert (nodes["shard-1-primary"]["role"], nodes["shard-1-primary"]["actual_role"]) == (
        "replica",
        "replica",
    )
    assert sender_host(moved, "shard-1-primary") == a.address
    verified = run_shardctl("verify-replication", "--deep", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    rows = 0
    for primary in moved.topology.primaries():
        with pg.connect(primary, moved.credentials(), "app") as conn:
            row = conn.execute("SELECT count(*) FROM users").fetchone()
            rows += cast(int, row[0]) if row else 0  # count(*) is a bigint
    assert rows == len(keys)


def test_pg_hba_on_several_hosts_admits_nat_but_not_this_hosts_other_containers(
    split: Cluster,
) -> None:
    """Several hosts relax pg_hba for what arrives by NAT (shardctl's host, other hosts'
    replicas); the superuser stays refused from the same host's other containers."""
    split.up(timeout=240)
    split.follow_roles()
    creds = split.credentials()
    assert creds.app_password is not None
    primary = split.topology.node("shard-0-primary")  # on a
    neighbour = split.topology.node("shard-1-replica-1")  # on a too, another shard's node
    assert primary.placement.name == neighbour.placement.name == "a"
    container = sdk_container(split, primary)
    assert container is not None
    pgdata = pgdata_of(split, primary)
    result = container.exec_run(["cat", f"{pgdata}/pg_hba.conf"])
    assert isinstance(result.output, bytes)  # not streamed
    rules = [
        line.split()
        for line in result.output.decode().splitlines()
        if line and not line.startswith("#")
    ]
    su, repl = creds.superuser, creds.replication_user
    assert [r[:3] for r in rules] == [
        ["local", "all", "all"],
        ["host", "all", su],  # the gateway
        ["host", "all", su],  # this host's container network: reject
        ["host", "all", su],  # elsewhere (NAT from other hosts, shardctl's host)
        ["host", "replication", repl],  # other hosts' replicas
        ["host", "all", su],  # anything else: reject
        ["host", "replication", repl],  # this host's network
        ["host", "app", creds.app_user],
    ]
    assert rules[2][-1] == "reject" and rules[3][-2:] == ["all", "scram-sha-256"]
    assert rules[4][-2:] == ["all", "scram-sha-256"] and rules[5][-2:] == ["all", "reject"]

    def login(user: str, password: str, dbname: str) -> tuple[int, str]:
        # The right password, for this probe only: pg_hba must refuse the superuser anyway.
        probe = sdk_container(split, neighbour)
        assert probe is not None
        done = probe.exec_run(
            [
                "psql",
                f"host={primary.container} dbname={dbname} user={user} connect_timeout=5",
                "-c",
                "SELECT 1",
            ],
            environment={"PGPASSWORD": password},
        )
        assert isinstance(done.output, bytes)  # not streamed
        return int(done.exit_code or 0), done.output.decode("utf-8", "replace")

    code, out = login(su, creds.superuser_password, "postgres")
    assert code != 0 and "pg_hba.conf rejects connection" in out, out
    code, out = login(creds.app_user, creds.app_password, "app")
    assert code == 0, out  # the network works: only the superuser is refused


def test_a_cluster_whose_every_engine_is_gone_exits_3(tmp_path: Path) -> None:
    path = make_topology(tmp_path, 1, 1)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["engines"] = {
        "a": {"endpoint": f"unix://{tmp_path}/a.sock", "advertise": "127.0.0.1"},
        "b": {"endpoint": f"unix://{tmp_path}/b.sock", "advertise": "127.0.0.2"},
    }
    data["shards"] = [{"name": "shard-0", "engine": "a", "replica_engines": ["b"]}]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    status = run_shardctl("status", "-f", path)
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stderr.count("\n") == 1 and "engine a" in status.stderr
