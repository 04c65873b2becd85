"""remove-shard against real containers: the shard's keys move to the remaining shards under
live ledgered traffic through ``Router``, with the resharding guarantees; then its nodes go.

The removal runs through the real CLI in a subprocess, or, to be killed like a real process,
through the test-only entry script ``kill_remove_after.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.ops.reshard.coordinator import Rebalancer
from shardctl.router.router import Router
from shardctl.state import catalog
from shardctl.state.plan import without_node
from tests.integration.conftest import ClusterFactory, run_shardctl
from tests.traffic import (
    WRITER_DEADLINE,
    Writer,
    assert_placed_and_replicated,
    check_ledger,
    preload,
    rows_by_shard,
)

KILL_REMOVE_AFTER = Path(__file__).with_name("kill_remove_after.py")
MD5 = {"algorithm": "md5", "vnodes": 150}


def run_killed(path: Path, shard: str, step: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Start (or with ``--resume`` resume) a removal in a subprocess that dies after ``step``."""
    return subprocess.run(
        [sys.executable, str(KILL_REMOVE_AFTER), str(path), shard, step, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def ring_of(path: Path) -> catalog.RingRecord:
    cluster = Cluster.load(path)
    return catalog.read(cluster.topology, cluster.credentials()).record()


def leftovers(cluster: Cluster, shard: str) -> tuple[list[str], list[str]]:
    """The shard's containers and volumes still on the engine."""
    containers = [str(c.name) for c in cluster.engines.shard_containers(cluster.topology, shard)]
    return containers, cluster.engines.shard_volumes(cluster.topology, shard)


def test_remove_shard_under_live_writes_loses_nothing(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(shards=3, replicas=1, ring=MD5)
    path = cluster.topology.path
    path.write_text("# the test cluster; this comment must survive\n" + path.read_text())
    preloaded = preload(cluster, 6000)
    before = ring_of(path).ring()
    on_leaving = sum(1 for k in preloaded if before.node_for(k) == "shard-1")

    shown = run_shardctl("remove-shard", "shard-1", "--plan", "-f", path, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    planned = json.loads(shown.stdout)
    assert planned["leaving"] == ["shard-1"]
    assert {m["source"] for m in planned["moves"]} == {"shard-1"}  # md5: nothing else moves
    assert {m["target"] for m in planned["moves"]} == {"shard-0", "shard-2"}
    assert planned["rows"] == on_leaving  # exact: counted on the server, before any traffic

    router = Router(cluster, max_size=4, epoch_check_interval=0.5, deadline=WRITER_DEADLINE)
    writers = [Writer(router, seed, preloaded[seed::4]) for seed in range(4)]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        done = run_shardctl(
            "remove-shard", "shard-1", "--yes", "-f", path, "-o", "json",
            "--rows-per-chunk", "1000",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        time.sleep(2.0)  # writers keep going on the smaller ring
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        router.close()

    assert all(not w.failed for w in writers), [w.failed[:3] for w in writers]
    acknowledged = sum(w.acknowledged for w in writers)
    assert acknowledged > 300
    assert router.stats.dual_writes > 0
    check_ledger(cluster, writers, preloaded)  # 0 lost, stale, ghost, duplicated, misplaced
    report = result["report"]
    # What was copied is the plan (counted again when the run started, under traffic): the
    # leaving shard's rows, give or take the writes to them since. Exact in the quiet test below.
    assert abs(result["plan"]["rows"] - planned["rows"]) <= acknowledged
    assert abs(report["rows_copied"] - result["plan"]["rows"]) <= acknowledged
    after = ring_of(path)
    assert after.ring() == without_node(before, "shard-1")
    assert after.epoch == 2
    assert leftovers(cluster, "shard-1") == ([], [])
    assert sorted(result["containers_removed"]) == [
        f"{cluster.topology.cluster}-shard-1-primary",
        f"{cluster.topology.cluster}-shard-1-replica-1",
    ]
    text = path.read_text()
    assert "shard-1" not in text and text.startswith("# the test cluster")
    print(
        f"\nremove-shard under load: {acknowledged} writes acknowledged, plan {planned['rows']} "
        f"rows, copied {report['rows_copied']}, write pause {report['write_pause_ms']:.0f} ms, "
        f"{router.stats.dual_writes} dual writes, {report['keys_resynced']} keys re-synced"
    )

    assert_placed_and_replicated(path)


def test_killed_removal_resumes_and_the_shard_comes_back_to_its_place(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=3, replicas=0, ring=MD5)
    path = cluster.topology.path
    preloaded = preload(cluster, 3000)
    original = ring_of(path).ring()
    router = Router(cluster, epoch_check_interval=0.2, deadline=WRITER_DEADLINE)
    writer = Writer(router, 3, preloaded[:600])

    def write_while_dead() -> None:
        before = writer.acknowledged
        stop = threading.Event()
        thread = threading.Thread(target=writer.run, args=(stop,))
        thread.start()
        time.sleep(0.5)
        stop.set()
        thread.join()
        assert writer.failed == []
        assert writer.acknowledged > before, "nothing was written in the window"

    def killed_after(step: str, *args: str) -> None:
        result = run_killed(path, "shard-1", step, *args)
        assert result.returncode == 137, result.stdout + result.stderr
        write_while_dead()

    unknown = run_shardctl("remove-shard", "shard-9", "--yes", "-f", path)
    assert unknown.returncode == 2 and "no shard 'shard-9'" in unknown.stderr

    killed_after("copying")
    assert ring_of(path).epoch == 1
    other = run_shardctl("remove-shard", "shard-0", "--yes", "-f", path)
    assert other.returncode == 2 and "is still" in other.stderr, other.stderr
    again = run_shardctl("remove-shard", "shard-1", "--yes", "-f", path)
    assert again.returncode == 2 and "--resume" in again.stderr, again.stderr
    shown = run_shardctl("rebalance", "--plan", "-f", path, "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["leaving"] == ["shard-1"]  # every CLI run sees it leaving

    killed_after("cutting-over", "--resume")
    assert ring_of(path).epoch == 2
    killed_after("cleaning", "--resume")
    killed_after("topology", "--resume")
    assert "shard-1" not in path.read_text()
    assert leftovers(cluster, "shard-1")[0] != []  # killed before its containers went
    killed_after("containers", "--resume")
    assert leftovers(cluster, "shard-1")[0] == []  # killed after they went
    finished = run_shardctl("remove-shard", "shard-1", "--resume", "--yes", "-f", path)
    assert finished.returncode == 0, finished.stderr
    assert leftovers(cluster, "shard-1") == ([], [])
    check_ledger(cluster, [writer], preloaded)
    state = Rebalancer(Cluster.load(path)).state()
    assert state is not None and state.report.removed == ["shard-1"]

    # Added back, the md5 ring is the former ring bit for bit, and the data follows it.
    added = run_shardctl("add-shard", "shard-1", "-f", path, "--replicas", "0")
    assert added.returncode == 0, added.stderr
    grown = run_shardctl("rebalance", "--yes", "-f", path)
    assert grown.returncode == 0, grown.stderr
    back = ring_of(path).ring()
    assert back.ranges() == original.ranges()
    write_while_dead()
    check_ledger(cluster, [writer], preloaded)
    keys = {str(k) for k in preloaded} | {str(k) for k, v in writer.ledger.items() if v}
    on_shard_1 = set(rows_by_shard(cluster)["shard-1"])
    assert on_shard_1 == {k for k in keys if original.node_for(uuid.UUID(k)) == "shard-1"} - {
        str(k) for k, v in writer.ledger.items() if v is None
    }

    # Removed again: shard-0 and shard-2 take back ranges they gave to shard-1 when it came
    # back; their old fence on those ranges must lift, or every write there would be refused.
    removed = run_shardctl("remove-shard", "shard-1", "--yes", "-f", path, "-o", "json")
    assert removed.returncode == 0, removed.stderr
    result = json.loads(removed.stdout)
    assert result["report"]["fences_lifted"] > 0
    # Nothing wrote during this run: the rows moved are the plan's, exactly.
    assert result["report"]["rows_copied"] == result["plan"]["rows"] > 0
    write_while_dead()
    moved_back = [k for k in writer.live if original.node_for(k) == "shard-1"][:50]
    for key in moved_back:
        router.execute(key, "UPDATE users SET first_name = 'again' WHERE id = %s", (key,))
        writer.ledger[key] = "again"
    check_ledger(cluster, [writer], preloaded)
    router.close()


def test_the_last_shard_is_not_removed(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(shards=1, replicas=0)
    refused = run_shardctl("remove-shard", "shard-0", "--yes", "-f", cluster.topology.path)
    assert refused.returncode == 2
    assert "last shard" in refused.stderr
    node = cluster.topology.primaries()[0]
    with pg.connect(node, cluster.credentials(), "app") as conn:  # nothing was recorded
        assert conn.execute("SELECT count(*) FROM shardctl.reshard").fetchone() == (0,)


def test_rows_already_on_a_receiving_shard_are_replaced_by_the_copy(
    cluster_factory: ClusterFactory,
) -> None:
    """A row someone wrote by hand on a removal's receiving shard, in a range it is about to
    receive, does not survive the removal: a stale copy of a key the leaving shard holds ends
    with the leaving shard's value, and a key no shard has is gone (found by the copy's probe or
    by verification's checksums, whichever meets it first)."""
    cluster = cluster_factory(shards=3, replicas=0, ring=MD5)
    path = cluster.topology.path
    preloaded = preload(cluster, 3000)
    old = catalog.read(cluster.topology, cluster.credentials()).ring()
    new = without_node(old, "shard-2")

    def receives(key: uuid.UUID, shard: str) -> bool:
        return old.node_for(key) == "shard-2" and new.node_for(key) == shard

    stale = [k for k in preloaded if receives(k, "shard-0")][:5]
    phantom = [k for k in (uuid.uuid4() for _ in range(3000)) if receives(k, "shard-1")][:5]
    assert len(stale) == len(phantom) == 5
    for shard, keys, name in (("shard-0", stale, "stale"), ("shard-1", phantom, "phantom")):
        node = cluster.topology.shard_nodes(shard)[0]
        with pg.connect(node, cluster.credentials(), "app") as conn:
            for key in keys:
                conn.execute("INSERT INTO users (id, first_name) VALUES (%s, %s)", (key, name))

    done = run_shardctl("remove-shard", "shard-2", "--yes", "-f", path, "-o", "json")
    assert done.returncode == 0, done.stderr
    shrunk = Cluster.load(path)
    placed = rows_by_shard(shrunk)
    assert [k for k in phantom if str(k) in placed["shard-1"]] == []
    assert all(placed["shard-0"].get(str(k)) == "preloaded" for k in stale)
    check_ledger(shrunk, [], preloaded)
