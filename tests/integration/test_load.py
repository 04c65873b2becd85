"""``shardctl load``: the load test with a ledger, its verification, and the bulk loader."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, LiteralString

import pytest

from shardctl import Router
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.workload import ledger as ledgers
from tests.clusters import frozen, load_watching_backends, run_shardctl


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
        ["--engine", "fibers"],
        ["--users", "0"],
        ["--users", "1000,lots"],
        ["--users", "10", "--bulk", "--rows", "5"],
        ["--workers", "200"],  # more connections per node than max_connections (100) allows
    ):
        result = run_shardctl("load", "-f", path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2


def test_virtual_users_print_the_seeds_table_and_their_ledger_verifies(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    book = tmp_path / "users.jsonl"
    path = shared_cluster.topology.path
    result = run_shardctl(
        "load", "-f", path, "--users", "200,400", "--workers", "4", "--duration", "2",
        "--ledger", book, "--seed", "3", "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert [(s["users"], s["workers"]) for s in steps] == [(200, 4), (400, 4)]
    for step in steps:
        total = step["total"]
        assert step["failed"] == step["anomalies"] == 0 and step["success_rate"] == 1.0
        assert total["ops"] > 0 and step["throughput"] > 0
        assert 0 < total["p50_ms"] <= total["p95_ms"] <= total["p99_ms"] <= total["max_ms"]
        assert {row["op"] for row in step["per_op"]} == {"insert", "read", "update", "delete"}

    code, check = verify(shared_cluster, book)
    assert code == 0, check
    # The first 200 users got a key each before the first run; the next 200 (and any user who
    # had deleted all its keys) before the second.
    warm = [s["warm_up"] for s in steps]
    assert warm[0] == 200 and 200 <= warm[1] < 400, warm
    inserted = sum(row["ok"] for s in steps for row in s["per_op"] if row["op"] == "insert")
    assert check["keys"] == inserted + sum(warm)

    table = run_shardctl("load", "-f", path, "--users", "50,100", "--workers", "2", "--ops", "200")
    assert table.returncode == 0, table.stderr
    assert "concurrent users" in table.stdout and "success rate" in table.stdout
    rows = [line for line in table.stdout.splitlines() if "ops/s" in line]
    assert len(rows) == 2 and "100.00%" in rows[0] and "100.00%" in rows[1]
    assert rows[0].split()[1] == "50" and rows[1].split()[1] == "100"


def test_virtual_users_share_connections_bounded_by_the_workers(shared_cluster: Cluster) -> None:
    watched = load_watching_backends(
        shared_cluster, "--users", "2000", "--workers", "6", "--ops", "3000",
        "--mix", "insert=50,read=50", "-o", "json", timeout=60,
    )  # fmt: skip
    most, limits = watched.most, watched.max_connections
    assert watched.returncode == 0, watched.stderr
    report = json.loads(watched.stdout)
    assert (report["users"], report["workers"], report["failed"]) == (2000, 6, 0)
    assert report["ops"] == 3000  # the users take turns: each of the 2,000 had one at least
    # 2,000 users, never more than the 6 workers' connections to a node (the pools' bound).
    assert all(0 < seen <= 6 for seen in most.values()), most
    assert limits == {100}


def test_load_duration_holds_while_a_primary_is_frozen(shared_cluster: Cluster) -> None:
    """`docker pause` of one primary: `load --duration 2` still ends on time, ops on the frozen
    shard failing when the run ends. (Every worker meets the frozen shard sooner or later and
    waits there until the end, so whether some op succeeded first is chance; that the other
    shard is not held up is test_router's frozen-primary test.)"""
    with frozen(shared_cluster, "shard-0"):
        started = time.monotonic()
        result = run_shardctl(
            "load", "-f", shared_cluster.topology.path, "--duration", "2", "--workers", "4",
            "-o", "json",
        )  # fmt: skip
        wall = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert report["seconds"] <= 3.0, report["seconds"]  # --duration, within a second
    # Measured from outside too, not only by the tool's own clock: start-up, the 2 s run and
    # its end, never a frozen statement's full 10 s deadline or a hang.
    assert wall < 20, wall
    assert report["failed"] > 0, report
    assert result.returncode == 1


def test_virtual_users_end_on_time_while_a_primary_is_frozen(shared_cluster: Cluster) -> None:
    """The warm-up (new users' first inserts) is held to the duration too: a frozen shard
    delays a `--users` run by at most its duration, and the run itself still ends on time."""
    started = time.monotonic()
    with frozen(shared_cluster, "shard-0"):
        result = run_shardctl(
            "load", "-f", shared_cluster.topology.path, "--users", "500", "--workers", "4",
            "--duration", "2", "-o", "json",
        )  # fmt: skip
        wall = time.monotonic() - started
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report["users"] == 500 and report["seconds"] <= 3.0, report["seconds"]
    assert report["failed"] > 0
    assert report["warm_up"] < 500  # cut short: the frozen shard's users got no key in it
    assert wall < 30, wall  # start-up, a warm-up of at most 2.5 s, the run; never the 60 s
    assert result.returncode == 1


@pytest.mark.parametrize(
    "engine",
    [["--pipeline", "8"], ["--engine", "loop"], ["--engine", "threads"]],
    ids=["pipeline-8", "loop", "threads"],
)
def test_ops_stay_exact_when_their_connections_are_killed(
    shared_cluster: Cluster, tmp_path: Path, engine: list[str]
) -> None:
    """Each engine -- several users' ops pipelined on one connection, one thread carrying
    every op in flight (the default), a thread per worker -- while the application role's
    backends on every primary are terminated again and again: ops break with their answers
    unread, and the ledger still verifies (an op is acknowledged only once known, and each
    user's ops stay in order)."""
    book = tmp_path / "killed.jsonl"
    topology, credentials = shared_cluster.topology, shared_cluster.credentials()
    run = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "load", "-f", str(topology.path), "--duration", "4",
         "--workers", "8", *engine, "--ledger", str(book), "-o", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    conns = [pg.connect(n, credentials, topology.spec.database) for n in topology.primaries()]
    killed = 0
    try:
        while run.poll() is None:
            for conn in conns:
                row = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE usename = %s AND backend_type = 'client backend'",
                    (credentials.app_user,),
                ).fetchone()
                killed += int(str(row[0])) if row else 0
            time.sleep(0.3)
    finally:
        for conn in conns:
            conn.close()
        out, err = run.communicate(timeout=120)
    assert "Traceback" not in err, err
    report = json.loads(out)
    assert killed > 0 and report["ops"] > 0, (killed, report["ops"])
    code, check = verify(shared_cluster, book)
    assert code == 0, check
    assert check["lost"] == check["stale"] == check["resurrected"] == 0
