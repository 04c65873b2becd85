"""Archiving goes on, with no one's help, after an async failover that lost WAL the archive
already holds.

Under ``replication: async`` the backup node can be ahead of the replica: it streams the
primary's WAL as it is written, the replica may lag. When the primary is lost then, the
promoted replica forks its new timeline *before* the end of what the archive holds. Once that
end is past the segment where the new timeline starts, the new primary cannot continue the
archive where it stands (its history does not hold those positions). The backup node then
continues in a new WAL generation from the fork's segment: the archive stays whole, a point
taken after the failover is made and restores, and the old timeline's WAL stays in the
repository for points before it. One shard with one replica; the replica is cut off (its
``primary_conninfo`` emptied) while the primary takes writes and a base backup and writes three
segments past it, then the primary is killed. The point after the failover names the base
backup from before the fork: the one taken on the lost WAL cannot start a recovery on the new
timeline (PostgreSQL refuses it).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.ops.backup import archiving
from shardctl.ops.cluster import Cluster
from shardctl.ops.nodes import NodeWork
from shardctl.router.router import Router
from tests.clusters import make_topology, run_shardctl, running, sdk_container
from tests.traffic import rows_by_shard

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    path = make_topology(tmp_path, shards=1, replicas=1, backup={"repository": "repository"})
    with running(path) as cluster:
        yield cluster


def _insert(router: Router, count: int, tag: str) -> dict[str, str]:
    """``count`` acknowledged inserts through the Router: key -> first_name."""
    done = {}
    for _ in range(count):
        key = uuid.uuid4()
        router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, %s)", (key, tag))
        done[str(key)] = tag
    return done


def _one(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None and row[0] is not None, query
    return int(str(row[0]))


def _wait_archived(cluster: Cluster, node: Node, timeout: float = 60) -> None:
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        lsn = _one(conn, "SELECT pg_catalog.pg_current_wal_lsn() - '0/0'")
        archiving.wait_archived(conn, lsn, node.shard, timeout)


def _wait_replayed(cluster: Cluster, primary: Node, replica: Node, timeout: float = 60) -> None:
    with pg.connect(primary, cluster.credentials(), "postgres") as conn:
        lsn = _one(conn, "SELECT pg_catalog.pg_current_wal_lsn() - '0/0'")
    steps = NodeWork(cluster.topology, cluster.engines, cluster.credentials())
    steps.wait_replayed(replica, lsn, time.monotonic() + timeout)


def _backup_log(cluster: Cluster) -> str:
    """The backup node's last lines (what archiving said), for a failure's message."""
    name = f"{cluster.topology.cluster}-backup"
    node = cluster.engines.named(name, cluster.topology.placement(None))
    return "\nbackup node:\n" + cluster.engines.log_tail(node, lines=20)


def _generations(repository: Path, cluster: str, shard: str) -> dict[str, list[str]]:
    folder = repository / cluster / shard / "wal"
    return {g.name: sorted(f.name for f in g.iterdir()) for g in sorted(folder.iterdir())}


def test_archiving_continues_after_a_failover_that_lost_archived_wal(cluster: Cluster) -> None:
    path = cluster.topology.path
    repository = (Path(path).parent / "repository").resolve()
    name = cluster.topology.cluster
    made = run_shardctl("backup", "--name", "b1", "-f", path, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    primary, replica = cluster.topology.shard_nodes("shard-0")
    with Router(cluster) as router:
        before = _insert(router, 20, "before")
    _wait_archived(cluster, primary)
    _wait_replayed(cluster, primary, replica)  # async: the inserts did not wait for it

    # The replica cut off (no primary_conninfo: a paused one would still take what its socket
    # buffers hold); the primary writes three segments more, archived, lost next.
    with pg.connect(replica, cluster.credentials(), "postgres") as conn:
        conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        conn.execute("SELECT pg_catalog.pg_reload_conf()")
        deadline = time.monotonic() + 30
        while _one(conn, "SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver") != 0:
            assert time.monotonic() < deadline, "the replica still streams"
            time.sleep(0.2)
    with Router(cluster) as router:
        lost = _insert(router, 20, "lost")
    # A base backup now comes from the primary (the replica does not stream) and holds the
    # lost writes: recovery on the new timeline cannot start from it.
    on_lost = run_shardctl("backup", "--name", "b2", "-f", path, timeout=600)
    assert on_lost.returncode == 0, on_lost.stdout + on_lost.stderr
    with pg.connect(primary, cluster.credentials(), "app") as conn:
        for _ in range(3):
            conn.execute("INSERT INTO users (id, first_name) VALUES (%s, 'filler')",
                         (uuid.uuid4(),))  # fmt: skip
            conn.execute("SELECT pg_catalog.pg_switch_wal()")
    _wait_archived(cluster, primary)
    sdk_container(cluster, primary).kill()
    failed = run_shardctl("failover", "shard-0", "--yes", "-f", path, timeout=300)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    rejoined = run_shardctl("up", "-f", path, timeout=600)  # the lost primary, back as a replica
    assert rejoined.returncode == 0, rejoined.stdout + rejoined.stderr

    fresh = Cluster.load(path)
    fresh.follow_roles()
    assert fresh.topology.acting_primary("shard-0") == replica.name
    with Router(fresh) as router:
        after = _insert(router, 20, "after")
    # Archiving reaches the new primary's WAL by itself: verify-replication's archiving check
    # waits for it (and fails, naming the shard, when it does not come).
    checked = run_shardctl("verify-replication", "-f", path, timeout=300)
    assert checked.returncode == 0, checked.stdout + checked.stderr + _backup_log(fresh)
    generations = _generations(repository, name, "shard-0")
    assert len(generations) == 2, generations
    pa = run_shardctl("backup", "--point", "pa", "-o", "json", "-f", path, timeout=300)
    assert pa.returncode == 0, pa.stdout + pa.stderr
    made_at = json.loads(pa.stdout)["shards"]["shard-0"]
    assert made_at["timeline"] == 2 and made_at["backup"] == "b1", made_at  # not b2

    # The point after the failover restores: what the new primary acknowledged is there, what
    # the failover lost is not (it never was on the new timeline).
    assert run_shardctl("down", "--volumes", "--yes", "-f", path).returncode == 0
    restored = run_shardctl("restore", "--to", "pa", "--yes", "-f", path, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    back = Cluster.load(path)
    try:
        rows = {k: v for shard in rows_by_shard(back).values() for k, v in shard.items()}
    finally:
        back.close()
    missing = [k for k in {**before, **after} if k not in rows]
    assert missing == [], f"{len(missing)} acknowledged rows not restored: {missing[:3]}"
    assert [k for k in lost if k in rows] == []
    # The old timeline's WAL, lost WAL included, is still in the repository.
    assert "1" in _generations(repository, name, "shard-0")
