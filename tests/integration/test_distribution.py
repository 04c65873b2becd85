"""``shardctl distribution`` and ``shardctl ring`` against a real 2 shards x 1 replica cluster."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.workload.bulk import bulk_load
from tests.integration.conftest import run_shardctl


@pytest.fixture(scope="module")
def router(shared_cluster: Cluster) -> Iterator[Router]:
    with Router(shared_cluster) as r:
        yield r


def distribution(cluster: Cluster) -> tuple[int, dict[str, Any]]:
    result = run_shardctl("distribution", "-f", cluster.topology.path, "-o", "json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def insert_on(cluster: Cluster, shard: str, key: uuid.UUID) -> None:
    node = cluster.topology.node(f"{shard}-primary")
    with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
        conn.execute("INSERT INTO users (id, email) VALUES (%s, 'direct@x')", (key,))


def delete_direct(cluster: Cluster) -> None:
    for node in cluster.topology.primaries():
        with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
            conn.execute("DELETE FROM users WHERE email = 'direct@x'")


def test_rows_written_through_the_router_are_all_in_place(
    shared_cluster: Cluster, router: Router
) -> None:
    bulk_load(router, 3000, chunk=1000)
    for _ in range(50):
        key = uuid.uuid4()
        router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,))

    code, data = distribution(shared_cluster)
    assert code == 0
    assert (data["misplaced"], data["duplicates"]) == (0, 0)
    assert data["epoch"] == 1
    [users] = data["tables"]
    assert users["rows"] == 3050
    shards = {s["shard"]: s for s in data["shards"]}
    assert set(shards) == {"shard-0", "shard-1"}
    assert sum(s["rows"] for s in shards.values()) == 3050
    assert all(s["expected_share"] == pytest.approx(0.5) for s in shards.values())
    assert all(abs(s["actual_share"] - 0.5) < 0.05 for s in shards.values())
    assert data["skew"] == pytest.approx(max(s["rows"] for s in shards.values()) / (3050 / 2))

    table = run_shardctl("distribution", "-f", shared_cluster.topology.path)
    assert table.returncode == 0
    assert "users" in table.stdout and "ok" in table.stdout


def test_a_row_on_the_wrong_shard_is_misplaced(shared_cluster: Cluster, router: Router) -> None:
    key = next(k for k in iter(uuid.uuid4, None) if router.owner(k) == "shard-0")
    insert_on(shared_cluster, "shard-1", key)
    try:
        code, data = distribution(shared_cluster)
        assert code == 1
        assert (data["misplaced"], data["duplicates"]) == (1, 0)
        shards = {s["shard"]: s for s in data["shards"]}
        assert (shards["shard-1"]["misplaced"], shards["shard-0"]["misplaced"]) == (1, 0)

        table = run_shardctl("distribution", "-f", shared_cluster.topology.path)
        assert table.returncode == 1
        assert "misplaced 1" in table.stdout
    finally:
        delete_direct(shared_cluster)


def test_a_key_on_two_shards_is_a_duplicate(shared_cluster: Cluster, router: Router) -> None:
    key = next(k for k in iter(uuid.uuid4, None) if router.owner(k) == "shard-1")
    insert_on(shared_cluster, "shard-1", key)  # its owner
    insert_on(shared_cluster, "shard-0", key)  # and a stray copy
    try:
        code, data = distribution(shared_cluster)
        assert code == 1
        assert (data["misplaced"], data["duplicates"]) == (1, 1)
        shards = {s["shard"]: s for s in data["shards"]}
        assert shards["shard-0"]["duplicates"] == shards["shard-1"]["duplicates"] == 1
    finally:
        delete_direct(shared_cluster)
    assert distribution(shared_cluster)[0] == 0


def test_ring_shows_the_catalog_and_reports_a_disagreeing_topology(
    shared_cluster: Cluster,
) -> None:
    path = shared_cluster.topology.path
    result = run_shardctl("ring", "-f", path, "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["epoch"] == 1
    assert data["algorithm"] == shared_cluster.topology.spec.ring.algorithm.value
    assert [n["shard"] for n in data["shards"]] == ["shard-0", "shard-1"]
    assert sum(n["share"] for n in data["shards"]) == pytest.approx(1.0)
    assert data["primaries"] == {"shard-0": 1, "shard-1": 1}
    assert data["warnings"] == [] and data["problems"] == []

    table = run_shardctl("ring", "-f", path)
    assert table.returncode == 0
    assert "epoch 1" in table.stdout and "shard-1" in table.stdout

    # Same cluster, a topology that says md5: the catalog's ring is used, the drift reported.
    spec = yaml.safe_load(path.read_text())
    spec["ring"] = {"algorithm": "md5", "vnodes": 64}
    other = Path(path).with_name("drifted.yaml")
    other.write_text(yaml.safe_dump(spec))
    drifted = run_shardctl("ring", "-f", other, "-o", "json")
    assert drifted.returncode == 0
    assert json.loads(drifted.stdout)["algorithm"] == data["algorithm"]
    assert "md5" in drifted.stderr and "the cluster's ring is used" in drifted.stderr
