"""Day-2 changes on one running cluster, under live ledgered Router writes: a reloadable
setting, a restart-only one, an image change, settings the server refuses, and ``up`` killed in
the middle of a rolling change. Before each change ``up --plan`` must list exactly what ``up``
then does.

The cases run in order on one 2 x 1 cluster (one cluster start for the whole module: CI time).
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from shardctl.db import pg
from shardctl.ops.changes import Change
from shardctl.ops.cluster import Cluster
from shardctl.ops.nodes import Action
from shardctl.state import catalog
from tests.clusters import TEST_IMAGE, make_topology, run_shardctl, running
from tests.traffic import Writer, check_ledger, preload, traffic

DONE = {
    Change.NOTHING: Action.UNCHANGED,
    Change.RELOAD: Action.RELOADED,
    Change.RESTART: Action.RESTARTED,
    Change.RECREATE: Action.RECREATED,
    Change.START: Action.STARTED,
    Change.CREATE: Action.CREATED,
}
TAGS: list[str] = []
"""Image tags made by the image case: removed with the cluster."""


SESSIONS = itertools.count(1)
ROUTER_DEADLINE = 10.0
"""The Router's default deadline: no write may fail at it while a setting rolls out."""


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        with running(make_topology(tmp_path_factory.mktemp("rolling"))) as cluster:
            yield cluster
    finally:
        for tag in TAGS:
            subprocess.run(["docker", "rmi", tag], capture_output=True, check=False, timeout=60)


@pytest.fixture
def day2(shared: Cluster) -> tuple[Cluster, list[uuid.UUID]]:
    """The module's cluster and keys of this case's own (each case checks its own ledger)."""
    shared.follow_roles()  # the earlier cases moved primaries
    return shared, preload(shared, 400)


@contextmanager
def writes(cluster: Cluster, keys: list[uuid.UUID]) -> Iterator[list[Writer]]:
    """Ledgered traffic at the Router's default deadline, with a seed of this session's own
    (see :func:`tests.traffic.traffic`)."""
    seed = 100 * next(SESSIONS)
    with traffic(cluster, keys, deadline=ROUTER_DEADLINE, seed=seed) as writers:
        yield writers


def edit(path: Path, **changes: object) -> Cluster:
    """Change top-level keys of the topology file; the cluster as a new command sees it."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    fresh = Cluster.load(path)
    fresh.follow_roles()
    return fresh


def facts(cluster: Cluster, setting: str) -> dict[str, tuple[str, float, str]]:
    """Node → (the setting's live value, postmaster start time, container id)."""
    out = {}
    for node in cluster.topology.nodes:
        with pg.connect(node, cluster.credentials(), "postgres") as conn:
            row = conn.execute(
                "SELECT pg_catalog.current_setting(%s), "
                "extract(epoch FROM pg_catalog.pg_postmaster_start_time())::float8",
                (setting,),
            ).fetchone()
        assert row is not None
        container = cluster.engines.container(node)
        assert container is not None
        out[node.name] = (str(row[0]), float(str(row[1])), str(container.id))
    return out


def planned_then_done(cluster: Cluster, **up: object) -> dict[str, Change]:
    """``up --plan``, then ``up``: every node's action is what the plan said; the plan."""
    plan = {n.node: n.action for n in cluster.plan().nodes}
    report = cluster.up(timeout=300, **up)  # type: ignore[arg-type]
    done = {name: report.actions.get(name, Action.UNCHANGED) for name in plan}
    assert done == {name: DONE[action] for name, action in plan.items()}, (plan, report)
    return plan


def test_refused_settings_change_nothing(day2: tuple[Cluster, list[uuid.UUID]]) -> None:
    cluster, _ = day2
    path = cluster.topology.path
    before = facts(cluster, "work_mem")
    for settings, said in (
        ({"shared_bufers": "64MB"}, "did you mean shared_buffers?"),
        ({"work_mem": "lots"}, 'invalid value for parameter "work_mem"'),
        ({"max_connections": 9999999}, "outside the valid range"),
    ):
        edit(path, postgres=settings)
        line = 1 + path.read_text(encoding="utf-8").splitlines().index("postgres:")
        for command in (("validate",), ("up",), ("up", "--plan")):
            result = run_shardctl(*command, "-f", path)
            assert result.returncode == 2, (command, result.stderr)
            assert f"topology.yaml:{line + 1}: postgres." in result.stderr, result.stderr
            assert said in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
    edit(path, postgres={})
    assert facts(cluster, "work_mem") == before  # nothing restarted, no new container


def test_a_reloadable_setting_is_reloaded(day2: tuple[Cluster, list[uuid.UUID]]) -> None:
    cluster, preloaded = day2
    before = facts(cluster, "work_mem")
    with writes(cluster, preloaded) as writers:
        time.sleep(0.5)
        changed = edit(cluster.topology.path, postgres={"work_mem": "12MB"})
        plan = planned_then_done(changed)
        time.sleep(0.5)
    assert set(plan.values()) == {Change.RELOAD}
    after = facts(changed, "work_mem")
    for name, (value, started, container) in after.items():
        assert value == "12MB", name
        assert (started, container) == before[name][1:], f"{name} was restarted or recreated"
    assert [w.failed for w in writers] == [[], []]
    check_ledger(cluster, writers, preloaded)


def test_a_restart_only_setting_rolls_one_shard_at_a_time(
    day2: tuple[Cluster, list[uuid.UUID]],
) -> None:
    cluster, preloaded = day2
    epoch = catalog.read_any(cluster.topology, cluster.credentials()).record().epoch
    with writes(cluster, preloaded) as writers:
        time.sleep(0.5)
        changed = edit(cluster.topology.path, postgres={"work_mem": "12MB", "max_connections": 120})
        plan = planned_then_done(changed)
        time.sleep(0.5)
    assert set(plan.values()) == {Change.RESTART}
    after = facts(changed, "max_connections")
    assert {value for value, _, _ in after.values()} == {"120"}
    _one_shard_at_a_time(changed, after)
    _every_primary_change_fenced(changed, epoch)
    assert [w.failed for w in writers] == [[], []]  # at the Router's default deadline
    check_ledger(cluster, writers, preloaded)


def test_an_image_change_rolls_the_same_way(day2: tuple[Cluster, list[uuid.UUID]]) -> None:
    cluster, preloaded = day2
    tag = f"{TEST_IMAGE.rsplit(':', 1)[0]}:rolling-{uuid.uuid4().hex[:8]}"
    subprocess.run(["docker", "tag", TEST_IMAGE, tag], check=True, timeout=60)
    TAGS.append(tag)
    try:
        epoch = catalog.read_any(cluster.topology, cluster.credentials()).record().epoch
        with writes(cluster, preloaded) as writers:
            time.sleep(0.5)
            changed = edit(cluster.topology.path, image=tag)
            reasons = {n.node: n.reasons for n in changed.plan().nodes}
            plan = planned_then_done(changed)
            time.sleep(0.5)
        assert set(plan.values()) == {Change.RECREATE}
        assert all(f"image: {TEST_IMAGE} → {tag}" in r for r in reasons.values()), reasons
        for node in changed.topology.nodes:
            container = changed.engines.container(node)
            assert container is not None and container.image == tag
        _one_shard_at_a_time(changed, facts(changed, "max_connections"))
        _every_primary_change_fenced(changed, epoch)
        assert [w.failed for w in writers] == [[], []]
        check_ledger(cluster, writers, preloaded)
    finally:
        edit(cluster.topology.path, image=TEST_IMAGE)  # the next case rolls back to it


def test_up_killed_mid_roll_converges(day2: tuple[Cluster, list[uuid.UUID]]) -> None:
    cluster, preloaded = day2
    path = cluster.topology.path
    epoch = catalog.read_any(cluster.topology, cluster.credentials()).record().epoch
    with writes(cluster, preloaded) as writers:
        time.sleep(0.5)
        edit(path, image=TEST_IMAGE, postgres={"work_mem": "12MB", "max_connections": 130})
        up = subprocess.Popen(
            [sys.executable, "-m", "shardctl", "up", "-f", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:  # killed once the first shard's primary moved: in the middle of a shard's roll
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and up.poll() is None:
                record = catalog.read_any(cluster.topology, cluster.credentials()).record()
                if record.epoch > epoch:
                    break
                time.sleep(0.2)
        finally:
            up.kill()
            up.wait(timeout=60)
        assert up.returncode == -9, "up finished before it could be killed"
        plan = run_shardctl("up", "--plan", "-o", "json", "-f", path)
        assert plan.returncode == 0, plan.stderr
        left = {n["node"]: n["action"] for n in json.loads(plan.stdout)["nodes"]}
        assert "recreate" in left.values(), left  # the second shard was not reached
        # Its settings were applied already (a reload): the restart shows as pending.
        status = run_shardctl("status", "-o", "json", "-f", path)
        pending = {n["node"]: n["pending_restart"] for n in json.loads(status.stdout)["nodes"]}
        assert ["max_connections"] in pending.values(), pending
        verified = run_shardctl("verify-replication", "-f", path)
        assert "a restart is pending for max_connections" in verified.stderr, verified.stderr
        fresh = Cluster.load(path)
        fresh.follow_roles()
        planned_then_done(fresh)
        time.sleep(0.5)
    assert {v for v, _, _ in facts(fresh, "max_connections").values()} == {"130"}
    assert all(n.action is Change.NOTHING for n in fresh.plan().nodes)
    verified = run_shardctl("verify-replication", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [w.failed for w in writers] == [[], []]
    check_ledger(cluster, writers, preloaded)


def _one_shard_at_a_time(cluster: Cluster, after: dict[str, tuple[str, float, str]]) -> None:
    """No node of another shard started inside one shard's window (its nodes' start times)."""
    by_shard: dict[str, list[float]] = {}
    for node in cluster.topology.nodes:
        by_shard.setdefault(node.shard, []).append(after[node.name][1])
    for shard, starts in by_shard.items():
        low, high = min(starts), max(starts)
        for other, theirs in by_shard.items():
            if other != shard:
                inside = [t for t in theirs if low <= t <= high]
                assert inside == [], f"{other} restarted during {shard}'s roll"


def _every_primary_change_fenced(cluster: Cluster, epoch: int) -> None:
    """One role change per shard, each through the switchover (its catalog record)."""
    database = cluster.topology.spec.database
    with pg.connect(cluster.topology.primaries()[0], cluster.credentials(), database) as conn:
        rows = conn.execute(
            "SELECT epoch, created_by FROM shardctl.ring WHERE epoch > %s ORDER BY epoch",
            (epoch,),
        ).fetchall()
    made_by = [str(r[1]) for r in rows]
    assert len([m for m in made_by if m.startswith("role change: ")]) == 2, made_by


def test_restart_and_reinit_on_demand(day2: tuple[Cluster, list[uuid.UUID]]) -> None:
    cluster, preloaded = day2
    path = cluster.topology.path
    asked = run_shardctl("restart", "shard-1", "-f", path)  # no terminal to ask on
    assert asked.returncode == 2 and "--yes" in asked.stderr, asked.stderr
    with writes(cluster, preloaded) as writers:
        time.sleep(0.5)
        before = facts(cluster_now(path), "max_connections")
        restarted = run_shardctl("restart", "shard-1", "--yes", "-f", path)
        assert restarted.returncode == 0, restarted.stderr
        assert "shard-1:" in restarted.stderr and "write pause" in restarted.stderr
        after = facts(cluster_now(path), "max_connections")
        for node in cluster.topology.shard_nodes("shard-1"):
            assert after[node.name][1] > before[node.name][1], f"{node.name} not restarted"
        for node in cluster.topology.shard_nodes("shard-0"):
            assert after[node.name][1:] == before[node.name][1:], f"{node.name} was touched"
        now = cluster_now(path)
        primary, replica = now.topology.shard_nodes("shard-0")
        refused = run_shardctl("reinit", primary.name, "--yes", "-f", path)
        assert refused.returncode == 2 and "switchover" in refused.stderr, refused.stderr
        cloned = run_shardctl("reinit", replica.name, "--yes", "-f", path)
        assert cloned.returncode == 0, cloned.stderr
        assert facts(now, "max_connections")[replica.name][2] != after[replica.name][2]
        time.sleep(0.5)
    verified = run_shardctl("verify-replication", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [w.failed for w in writers] == [[], []]
    check_ledger(cluster, writers, preloaded)


def cluster_now(path: Path) -> Cluster:
    """The cluster with the acting roles as the catalog has them now."""
    fresh = Cluster.load(path)
    fresh.follow_roles()
    return fresh


def test_lowering_a_setting_a_standby_must_match_restarts_the_primary_first(
    day2: tuple[Cluster, list[uuid.UUID]],
) -> None:
    """A standby started with less ``max_connections`` than its primary refuses to replay:
    lowering it restarts each primary in place first (its writes pause, and that is said),
    then the replicas; no switchover, since the replica would be the one with less."""
    cluster, preloaded = day2
    path = cluster.topology.path
    before = facts(cluster, "max_connections")
    lower = int(next(iter(before.values()))[0]) - 20
    with traffic(cluster, preloaded, seed=100 * next(SESSIONS)) as writers:  # 60 s deadline
        time.sleep(0.5)
        changed = edit(path, postgres={"work_mem": "12MB", "max_connections": lower})
        report = changed.up(timeout=300)
        time.sleep(0.5)
    after = facts(changed, "max_connections")
    assert {value for value, _, _ in after.values()} == {str(lower)}
    for shard, line in report.shards.items():
        assert "primary restarted in place, write pause" in line, (shard, line)
        assert "switchover" not in line, (shard, line)
        primary, replica = changed.topology.shard_nodes(shard)  # the acting roles
        assert after[primary.name][1] < after[replica.name][1], f"{shard}: replica first"
    verified = run_shardctl("verify-replication", "-f", path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert [w.failed for w in writers] == [[], []]
    check_ledger(cluster, writers, preloaded)
