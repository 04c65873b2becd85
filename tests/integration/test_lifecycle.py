"""The foundation scenario on a real engine: up, stream, converge, repair, report, down."""

from __future__ import annotations

import json
import uuid

import docker
import psycopg
import pytest

from shardctl.db import pg
from shardctl.docker.records import LABEL_CLUSTER
from shardctl.errors import DockerUnavailable
from shardctl.ops.cluster import Cluster
from shardctl.util.waiting import NotYet, wait_for
from tests.clusters import sdk_container
from tests.integration.conftest import ClusterFactory, run_shardctl


def container_ids(cluster: Cluster) -> dict[str, str]:
    return {str(c.name): str(c.id) for c in cluster.engines.cluster_containers(cluster.topology)}


def status(cluster: Cluster) -> tuple[int, dict[str, dict[str, object]]]:
    result = run_shardctl("status", "-f", cluster.topology.path, "-o", "json")
    assert "Traceback" not in result.stderr
    data = json.loads(result.stdout)
    return result.returncode, {n["node"]: n for n in data["nodes"]}


def wait_visible(cluster: Cluster, node_name: str, key: uuid.UUID) -> None:
    node = cluster.topology.node(node_name)

    def probe() -> None:
        with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
            if conn.execute("SELECT 1 FROM users WHERE id = %s", (key,)).fetchone() is None:
                raise NotYet("row not there yet")

    wait_for(probe, timeout=20, what=f"row on {node_name}", on_timeout=AssertionError)


def insert_user(cluster: Cluster, node_name: str) -> uuid.UUID:
    key = uuid.uuid4()
    node = cluster.topology.node(node_name)
    with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
        conn.execute("INSERT INTO users (id, first_name) VALUES (%s, 'ada')", (key,))
    return key


def test_up_converges_repairs_reports_and_down_leaves_nothing(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(up=False)
    path = cluster.topology.path

    first = run_shardctl("up", "-f", path)
    assert first.returncode == 0, first.stderr
    assert "4 created" in first.stderr

    code, nodes = status(cluster)
    assert code == 0
    assert {n["role"] for n in nodes.values()} == {"primary", "replica"}
    assert all(n["healthy"] and n["state"] == "running" for n in nodes.values())
    assert nodes["shard-0-replica-1"]["in_recovery"] is True

    key = insert_user(cluster, "shard-0-primary")
    wait_visible(cluster, "shard-0-replica-1", key)

    before = container_ids(cluster)
    second = run_shardctl("up", "-f", path)
    assert second.returncode == 0, second.stderr
    assert "4 unchanged" in second.stderr
    assert container_ids(cluster) == before

    replica = sdk_container(cluster, cluster.topology.node("shard-0-replica-1"))
    assert replica is not None
    replica.remove(force=True)
    repaired = run_shardctl("up", "-f", path)
    assert repaired.returncode == 0, repaired.stderr
    assert "1 created" in repaired.stderr
    wait_visible(cluster, "shard-0-replica-1", key)  # re-cloned from its primary
    assert status(cluster)[0] == 0

    primary = sdk_container(cluster, cluster.topology.node("shard-1-primary"))
    assert primary is not None
    primary.stop(timeout=10)
    code, nodes = status(cluster)
    assert code == 1
    assert nodes["shard-1-primary"]["healthy"] is False
    assert nodes["shard-1-primary"]["state"] == "exited"
    assert nodes["shard-0-primary"]["healthy"] is True

    kept = run_shardctl("down", "-f", path)  # keeps volumes: data survives a down/up cycle
    assert kept.returncode == 0, kept.stderr
    assert run_shardctl("up", "-f", path).returncode == 0
    wait_visible(cluster, "shard-0-primary", key)

    gone = run_shardctl("down", "-f", path, "--volumes", "--yes")
    assert gone.returncode == 0, gone.stderr
    client = docker.from_env()
    label: dict[str, str | list[str] | bool] = {
        "label": f"{LABEL_CLUSTER}={cluster.topology.cluster}"
    }
    assert client.containers.list(all=True, filters=label) == []
    assert client.volumes.list(filters=label) == []
    assert client.networks.list(filters=label) == []


def test_down_volumes_refuses_without_confirmation(shared_cluster: Cluster) -> None:
    result = run_shardctl("down", "-f", shared_cluster.topology.path, "--volumes")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert status(shared_cluster)[0] == 0  # nothing was removed


def test_unpullable_image_is_one_clear_line(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(up=False, image="shardctl-test/no-such-image:1")
    result = run_shardctl("up", "-f", cluster.topology.path, "--timeout", "30")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    assert "no-such-image:1 is not present and could not be pulled" in result.stderr
    # What to do, in words a pip user can act on (no script of this repository).
    assert "docker load" in result.stderr and "scripts/" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert cluster.engines.cluster_containers(cluster.topology) == []


def test_status_exit_3_when_the_engine_is_unreachable(
    shared_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    result = run_shardctl("status", "-f", shared_cluster.topology.path)
    assert result.returncode == 3
    assert result.stderr.startswith("error: ")
    assert "Docker engine" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_exec_may_stay_silent_past_the_api_timeout_and_a_bound_is_one_error(
    shared_cluster: Cluster,
) -> None:
    """A base backup's pg_basebackup prints nothing until it is done, for hours on a large
    shard: an exec is not cut off by the bound of other Docker calls (lowered here to 2 s),
    and a caller's own bound ends in one error, not a transport exception."""
    engines = shared_cluster.engines
    node = shared_cluster.topology.nodes[0]
    container = engines.container(node)
    assert container is not None
    api = engines.client(node.placement).api
    saved = api.timeout
    api.timeout = 2
    try:
        code, output = engines.run_in(container, ["sh", "-c", "sleep 4; echo done"])
        assert (code, output) == (0, "done\n")
        with pytest.raises(DockerUnavailable, match="no answer within 1s"):
            engines.run_in(container, ["sh", "-c", "sleep 4; echo late"], timeout=1)
    finally:
        api.timeout = saved


def test_status_reads_each_node_over_one_session(shared_cluster: Cluster) -> None:
    """What status reads (the catalog, every node's facts, what is in flight, the monitor's
    view) goes over one session per node inside ``pg.shared()``, all closed when it ends."""
    topology, login = shared_cluster.topology, shared_cluster.credentials()

    def sessions() -> dict[str, int]:
        """shardctl's sessions on each node, the one asking left out."""
        counts = {}
        for node in topology.nodes:
            info = pg.conninfo(node, login, "postgres")
            with psycopg.connect(info, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_catalog.pg_backend_pid()",
                    (pg.APPLICATION_NAME,),
                ).fetchone()
                counts[node.name] = row[0] if row else -1
        return counts

    with pg.shared():
        facts, _ = shared_cluster.observe_applying_durability()
        assert shared_cluster.in_flight() == []
        shared_cluster.monitor_view()
        held = sessions()
    assert all(o.facts is not None for o in facts.nodes), facts.nodes
    assert held == {node.name: 1 for node in topology.nodes}

    def ended() -> None:
        left = sessions()
        if any(left.values()):  # a closed session's backend may take a moment to exit
            raise NotYet(f"still open: {left}")

    wait_for(ended, timeout=15, what="status's sessions to end", on_timeout=AssertionError)
