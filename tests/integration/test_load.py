"""``shardctl load``: the load test with a ledger, its verification, and the bulk loader."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, LiteralString

from shardctl import Router, pg
from shardctl import ledger as ledgers
from shardctl.cluster import Cluster
from tests.clusters import run_shardctl


def verify(cluster: Cluster, *paths: Path) -> tuple[int, dict[str, Any]]:
    args = [a for p in paths for a in ("--verify", str(p))]
    result = run_shardctl("load", "-f", cluster.topology.path, *args, "-o", "json")
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)


def on_owner(cluster: Cluster, router: Router, key: str, statement: LiteralString) -> None:
    node = cluster.topology.node(f"{router.owner(key)}-primary")
    with pg.connect(node, cluster.credentials(), cluster.topology.spec.database) as conn:
        conn.execute(statement, (key,))


def test_load_run_is_verified_clean_and_tampering_is_caught(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    book = tmp_path / "ledger.jsonl"
    result = run_shardctl(
        "load", "-f", shared_cluster.topology.path, "--duration", "3", "--workers", "4",
        "--ledger", book, "--seed", "7", "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["workers"] == 4
    assert report["failed"] == 0 and report["anomalies"] == 0
    assert report["success_rate"] == 1.0
    ops = {row["op"]: row for row in report["per_op"]}
    assert set(ops) == {"insert", "read", "update", "delete"}
    assert all(row["ops"] > 0 for row in ops.values())
    assert 0 < ops["insert"]["p50_ms"] <= ops["insert"]["p99_ms"] <= ops["insert"]["max_ms"]

    code, check = verify(shared_cluster, book)
    assert code == 0, check
    assert check["ok"] and check["lost"] == check["stale"] == check["resurrected"] == 0
    assert check["keys"] == ops["insert"]["ok"]
    assert check["absent"] > 0 and check["present"] > 0

    with Router(shared_cluster) as router:
        _, expected = ledgers.read([book])
        present = [k for k, e in expected.items() if e.states[0] is not None]
        deleted = [k for k, e in expected.items() if e.states == [None]]
        on_owner(shared_cluster, router, present[0], "UPDATE users SET email = 'x' WHERE id = %s")
        on_owner(shared_cluster, router, present[1], "DELETE FROM users WHERE id = %s")
        on_owner(shared_cluster, router, deleted[0], "INSERT INTO users (id) VALUES (%s)")

    code, check = verify(shared_cluster, book)
    assert code == 1
    assert (check["stale"], check["lost"], check["resurrected"]) == (1, 1, 1)
    assert {f["key"] for f in check["findings"]} == {present[0], present[1], deleted[0]}

    table = run_shardctl("load", "-f", shared_cluster.topology.path, "--verify", book)
    assert table.returncode == 1
    assert "stale" in table.stderr and present[0] in table.stderr


def test_bulk_load_fills_every_shard_and_its_ledger_verifies(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    book = tmp_path / "bulk.jsonl"
    path = shared_cluster.topology.path
    result = run_shardctl("load", "-f", path, "--bulk", "--rows", "5000", "--ledger", book)
    assert result.returncode == 0, result.stderr
    assert "5,000 rows" in result.stdout

    code, check = verify(shared_cluster, book)
    assert code == 0
    assert (check["keys"], check["present"]) == (5000, 5000)

    placed = run_shardctl("distribution", "-f", path, "-o", "json")
    assert placed.returncode == 0
    assert json.loads(placed.stdout)["misplaced"] == 0


def test_load_usage_errors_exit_2(shared_cluster: Cluster, tmp_path: Path) -> None:
    path = shared_cluster.topology.path
    for args in (
        ["--rows", "10"],
        ["--bulk"],
        ["--verify", str(tmp_path / "missing.jsonl")],
        ["--mix", "insert=0,read=1"],
        ["--read-from", "nowhere"],
    ):
        result = run_shardctl("load", "-f", path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2


def test_load_duration_holds_while_a_primary_is_frozen(shared_cluster: Cluster) -> None:
    """`docker pause` of one primary: `load --duration 2` still ends on time (ops on the frozen
    shard fail at the Router's deadline or when the run ends), and the other shard's ops go on."""
    frozen = shared_cluster.topology.shard_nodes("shard-0")[0]
    container = shared_cluster.engines.container(frozen)
    assert container is not None
    container.pause()
    rescue = threading.Timer(60, container.unpause)  # should load hang after all
    rescue.start()
    try:
        result = run_shardctl(
            "load", "-f", shared_cluster.topology.path, "--duration", "2", "--workers", "4",
            "-o", "json",
        )  # fmt: skip
    finally:
        rescue.cancel()
        container.unpause()
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert report["seconds"] <= 3.0, report["seconds"]  # --duration, within a second
    assert report["failed"] > 0 and report["ok"] > 0, report
    assert result.returncode == 1
