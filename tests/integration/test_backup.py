"""Backups and point-in-time recovery against real containers, proven by restoring.

One cluster (2 shards x 1 replica, ``backup: {repository: ...}``) serves the module, in order:
a base backup and a point under ledgered Router traffic, the cluster lost with
``down --volumes`` and restored in place to the point (every write acknowledged before the
point's command is there with its value, none started after it returned); a point on a new
timeline after a switchover, restored (from the history the first restore continued); bad
input; a killed backup; archiving stuck on a read-only repository; then a failover (a point on
its new timeline), add-shard (streamed at once) and rebalance (a point on the grown ring): the
failover's point restored into a new cluster with the old ring while the original takes writes,
the grown ring's restored in place, and remove-shard re-pointing the backup node.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardctl.config.constants import BACKUP_SLOT
from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.ops.backup.retention import lsn_segment
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from shardctl.state import catalog
from tests.clusters import backup_samples, make_topology, run_shardctl, running, sdk_container
from tests.traffic import DELETED, Writer, preload, rows_by_shard, traffic

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("backup")
    with running(make_topology(folder, backup={"repository": "repository"})) as cluster:
        yield cluster


class History(dict[uuid.UUID, str | None]):
    """A writer's ledger that also keeps every acknowledged value of each key with when its
    operation started (the writer's previous acknowledgment: a writer does one at a time) and
    when it was acknowledged."""

    def __init__(self) -> None:
        super().__init__()
        self.acked: dict[uuid.UUID, list[tuple[float, float, str | None]]] = {}
        self.last = time.monotonic()

    def __setitem__(self, key: uuid.UUID, value: str | None) -> None:
        now = time.monotonic()
        self.acked.setdefault(key, []).append((self.last, now, value))
        self.last = now
        super().__setitem__(key, value)


def _rows(cluster: Cluster) -> dict[str, str | None]:
    return {k: v for rows in rows_by_shard(cluster).values() for k, v in rows.items()}


def _assert_as_of(
    rows: dict[str, str | None],
    base: dict[str, str | None],
    writers: list[Writer],
    started: float,
    returned: float,
) -> int:
    """The restored ``rows`` hold each key's value as of ``started`` (the point's command
    started): every write acknowledged before it, none started after ``returned``; a write
    acknowledged after ``started`` that started before ``returned`` may be on either side.
    The number of keys checked strictly (no such write)."""
    history: dict[str, list[tuple[float, float, str | None]]] = {
        k: [(0.0, 0.0, v)] for k, v in base.items()
    }
    for writer in writers:
        assert isinstance(writer.ledger, History)
        for written, values in writer.ledger.acked.items():
            history.setdefault(str(written), [(0.0, 0.0, DELETED)]).extend(values)
    strict = 0
    wrong: list[str] = []
    for key, values in history.items():
        values.sort(key=lambda item: item[1])
        at_start = [v for _, acked, v in values if acked <= started][-1]
        window = [v for began, acked, v in values if acked > started and began <= returned]
        allowed = {at_start, *window}
        strict += not window
        found = rows.get(key, DELETED)
        if found not in allowed:
            wrong.append(f"{key}: {found!r}, expected one of {allowed!r}")
    unexpected = [k for k in rows if k not in history]
    assert wrong == [], f"{len(wrong)} keys differ from the point: {wrong[:5]}"
    assert unexpected == [], f"keys never acknowledged: {unexpected[:5]}"
    return strict


class Proof:
    """What a point must hold: the rows before its traffic, the writers, and when its command
    started and returned."""

    def __init__(self, base: dict[str, str | None], writers: list[Writer], started: float,
                 returned: float) -> None:  # fmt: skip
        self.base, self.writers, self.started, self.returned = base, writers, started, returned

    def check(self, cluster: Cluster) -> int:
        """Assert the restored cluster holds the point; the keys checked strictly."""
        return _assert_as_of(_rows(cluster), self.base, self.writers, self.started,
                             self.returned)  # fmt: skip


def _healthy(path: Path) -> None:
    deep = run_shardctl("verify-replication", "--deep", "-f", path)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    distribution = run_shardctl("distribution", "-f", path, "-o", "json")
    assert distribution.returncode == 0, distribution.stdout + distribution.stderr
    assert json.loads(distribution.stdout)["misplaced"] == 0


def _point_under_traffic(cluster: Cluster, name: str, seed: int) -> Proof:
    """Writes before, during and after ``backup --point name``."""
    path = cluster.topology.path
    base = _rows(cluster)
    with traffic(cluster, [uuid.UUID(k) for k in base], seed=seed) as writers:
        for writer in writers:
            writer.ledger = History()
        time.sleep(1.0)
        started = time.monotonic()
        done = run_shardctl("backup", "--point", name, "-f", path)
        returned = time.monotonic()
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(2.5)  # more writes, which the point must not have
    assert sum(w.acknowledged for w in writers) > 0
    assert [f for w in writers for f in w.failed] == []
    return Proof(base, writers, started, returned)


def test_point_restores_in_place_after_down_volumes(cluster: Cluster) -> None:
    path = cluster.topology.path
    preloaded = preload(cluster, 300)
    with traffic(cluster, preloaded) as writers:
        made = run_shardctl("backup", "--name", "b1", "-o", "json", "-f", path)
        assert made.returncode == 0, made.stdout + made.stderr
    assert [f for w in writers for f in w.failed] == []
    report = json.loads(made.stdout)
    assert report["backup"]["complete"] is True
    assert {c["source"] for c in report["backup"]["shards"].values()} == {
        "shard-0-replica-1",
        "shard-1-replica-1",
    }
    proof = _point_under_traffic(cluster, "p1", 10)
    listing = run_shardctl("backups", "-o", "json", "-f", path)
    assert listing.returncode == 0, listing.stderr
    facts = json.loads(listing.stdout)
    assert [p["name"] for p in facts["points"]] == ["b1", "p1"]
    assert all(a["newest_wal_age_seconds"] is not None for a in facts["archives"])

    down = run_shardctl("down", "--volumes", "--yes", "-f", path)
    assert down.returncode == 0, down.stderr
    restored = run_shardctl("restore", "--to", "p1", "--yes", "-f", path, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    fresh = Cluster.load(path)
    assert proof.check(fresh) > 50
    _healthy(path)
    with Router(fresh) as router:  # the application's library works on the restored cluster
        key = uuid.uuid4()
        router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'new')", (key,))


def test_point_after_switchover_restores_a_later_timeline(cluster: Cluster) -> None:
    path = cluster.topology.path
    moved = run_shardctl("switchover", "shard-0", "--yes", "-f", path)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    fresh = Cluster.load(path)
    fresh.follow_roles()
    proof = _point_under_traffic(fresh, "p2", 20)
    point = json.loads((Path(path).parent / "repository" / fresh.topology.cluster / "points" /
                        "p2.json").read_text())  # fmt: skip
    assert point["primaries"]["shard-0"] == "shard-0-replica-1"
    assert point["shards"]["shard-0"]["timeline"] >= 3  # restore, then the switchover

    assert run_shardctl("down", "-f", path).returncode == 0
    restored = run_shardctl("restore", "--to", "p2", "--yes", "-f", path, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    fresh = Cluster.load(path)
    proof.check(fresh)
    fresh.follow_roles()
    assert fresh.topology.acting_primary("shard-0") == "shard-0-replica-1"
    _healthy(path)


def test_bad_input_is_one_line_with_its_exit_code(cluster: Cluster) -> None:
    path = cluster.topology.path
    unknown = run_shardctl("restore", "--to", "nope", "--yes", "-f", path)
    assert unknown.returncode == 2, unknown.stderr
    running = run_shardctl("restore", "--to", "p1", "--yes", "-f", path)
    assert running.returncode == 2 and "shardctl down" in running.stderr, running.stderr
    both = run_shardctl("restore", "--to", "p1", "--latest", "-f", path)
    assert both.returncode == 2, both.stderr
    again = run_shardctl("backup", "--point", "p1", "-f", path)
    assert again.returncode == 2 and "exists" in again.stderr, again.stderr
    bad = run_shardctl("backup", "--point", "no/slash", "-f", path)
    assert bad.returncode == 2, bad.stderr
    for result in (unknown, running, both, again, bad):
        assert "Traceback" not in result.stderr


def test_a_killed_backup_is_never_listed_complete(cluster: Cluster) -> None:
    path = cluster.topology.path
    record = Path(path).parent / "repository" / cluster.topology.cluster / "backups"
    killed = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "backup", "--name", "killed", "-f", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (record / "killed.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (record / "killed.json").exists(), "the backup never started"
    finally:
        killed.kill()  # SIGKILL: no clean-up of any kind
        killed.wait()
    listing = run_shardctl("backups", "-o", "json", "-f", path)
    assert listing.returncode == 0, listing.stderr
    states = {b["name"]: b["complete"] for b in json.loads(listing.stdout)["backups"]}
    assert states == {"b1": True, "killed": False}
    # A point after it still restores from the last complete backup.
    point = run_shardctl("backup", "--point", "after-kill", "-o", "json", "-f", path)
    assert point.returncode == 0, point.stdout + point.stderr
    made = json.loads(point.stdout)
    shards = made["shards"]
    assert {s["backup"] for s in shards.values()} == {"b1"}
    # Its pause, per primary: no primary let writes go on before every point was written, each
    # primary's server time inside its round trip, the last to let go the reported pause.
    held = made["held"]
    assert set(held) == set(shards)
    assert min(h["lifted"] for h in held.values()) >= max(h["pointed"] for h in held.values())
    for h in held.values():
        assert 0 <= h["hold_server"] + h["point_server"] <= h["pointed"] <= h["lifted"]
    assert max(h["lifted"] for h in held.values()) == made["write_pause"]


def test_stuck_archiving_fails_verify_replication(cluster: Cluster) -> None:
    path = cluster.topology.path
    fresh = Cluster.load(path)
    fresh.follow_roles()
    shard = "shard-1"
    folder = Path(path).parent / "repository" / fresh.topology.cluster / shard / "wal"
    deadline = time.monotonic() + 60  # run first, the backup node may not have made it yet
    while not (folder.is_dir() and any(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.5)
    generation = folder / max((p.name for p in folder.iterdir()), key=int)
    generation.chmod(0o555)  # the open segment is still written: the next one cannot be made
    try:
        primary = fresh.topology.shard_nodes(shard)[0]
        with pg.connect(primary, fresh.credentials(), "postgres") as conn:
            conn.execute("SELECT pg_catalog.pg_switch_wal()")
        stuck = run_shardctl("verify-replication", "-f", path)
        assert stuck.returncode == 1, stuck.stdout + stuck.stderr
        assert f"{shard}: archiving stuck" in stuck.stdout + stuck.stderr
        _archiving_shows_stuck(path, shard)
    finally:
        generation.chmod(0o700)
    healthy = run_shardctl("verify-replication", "-f", path)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def _point_record(path: Path, cluster: str, name: str) -> dict[str, Any]:
    folder = Path(path).parent / "repository" / cluster / "points"
    data = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _timeline(cluster: Cluster, node: Node) -> int:
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn())"
        ).fetchone()
    assert row is not None
    return int(str(row[0])[:8], 16)


def _ring(cluster: Cluster) -> catalog.RingRecord:
    """The cluster's current ring record, as its primaries hold it now."""
    fresh = Cluster.load(cluster.topology.path)
    return catalog.read_any(fresh.topology, fresh.credentials()).record()


def _streams(cluster: Cluster, node: Node) -> bool:
    """Whether the backup node streams from ``node`` now (its slot there is active)."""
    with pg.connect(node, cluster.credentials(), "postgres") as conn:
        row = conn.execute(
            "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
            (BACKUP_SLOT,),
        ).fetchone()
    return row is not None and bool(row[0])


def test_points_after_a_failover_and_an_added_shard_restore_their_rings(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A point after a failover (a new timeline) restores into a new cluster with the old ring
    while the original keeps taking writes; a point after add-shard and rebalance restores
    the grown ring in place; remove-shard re-points the backup node at once."""
    path = cluster.topology.path
    name = cluster.topology.cluster
    fresh = Cluster.load(path)
    fresh.follow_roles()
    lost = fresh.topology.shard_nodes("shard-1")[0]
    before = _timeline(fresh, lost)
    # No traffic across the kill: an async failover may lose acknowledged writes, which the
    # point's ledger would then expect.
    sdk_container(fresh, lost).kill()
    failed = run_shardctl("failover", "shard-1", "--yes", "-f", path)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    fresh = Cluster.load(path)
    fresh.follow_roles()
    after_failover = _point_under_traffic(fresh, "pf", 40)
    pf = _point_record(path, name, "pf")
    assert pf["primaries"]["shard-1"] != lost.name
    assert pf["shards"]["shard-1"]["timeline"] > before

    # A new shard is archived from its first write: streamed as soon as add-shard returns.
    added = run_shardctl("add-shard", "shard-2", "--replicas", "0", "-f", path, timeout=600)
    assert added.returncode == 0, added.stdout + added.stderr
    grown = Cluster.load(path)
    grown.follow_roles()
    newcomer = grown.topology.shard_nodes("shard-2")[0]
    deadline = time.monotonic() + 60
    while not _streams(grown, newcomer) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _streams(grown, newcomer), "the backup node does not stream from shard-2"
    with pg.connect(newcomer, grown.credentials(), "app") as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)  # before any row
    # add-shard took a base backup of the new shard alone: a point can be made at once.
    pa = run_shardctl("backup", "--point", "pa", "-o", "json", "-f", path)
    assert pa.returncode == 0, pa.stdout + pa.stderr
    assert json.loads(pa.stdout)["shards"]["shard-2"]["backup"].endswith("-shard-2")
    made = run_shardctl("backup", "--name", "b2", "-f", path, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    # Its retention pruned the WAL no kept base backup needs (before b1's start, every shard).
    listing = json.loads(run_shardctl("backups", "-o", "json", "-f", path).stdout)
    b1 = next(b for b in listing["backups"] if b["name"] == "b1")
    for archive in listing["archives"]:
        if archive["shard"] in b1["shards"]:
            start = lsn_segment(b1["shards"][archive["shard"]]["start_lsn"])
            assert archive["first_segment"] >= start, (archive, start)
    moved = run_shardctl("rebalance", "--yes", "-f", path, timeout=600)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert rows_by_shard(grown)["shard-2"], "the rebalance moved no key to shard-2"
    after_growth = _point_under_traffic(grown, "pg", 50)
    pg_epoch = _point_record(path, name, "pg")["epoch"]
    assert pg_epoch > pf["epoch"]

    # The old ring, into a new cluster, while the grown original takes writes.
    repository = (Path(path).parent / "repository").resolve()
    other = make_topology(tmp_path, backup={"repository": str(repository)})
    try:
        keys = [uuid.UUID(k) for k in list(_rows(grown))[:50]]
        with traffic(grown, keys, seed=60) as writers:
            built = run_shardctl("-f", other, "restore", "--from", name, "--to", "pf",
                                 timeout=600)  # fmt: skip
            assert built.returncode == 0, built.stdout + built.stderr
        assert [f for w in writers for f in w.failed] == []
        copy = Cluster.load(other)
        after_failover.check(copy)
        current = _ring(copy)
        assert current.nodes == ("shard-0", "shard-1")
        assert current.epoch >= pf["epoch"]  # up may add one (re-joining the lost primary)
        copy.follow_roles()
        assert copy.topology.acting_primary("shard-1") == pf["primaries"]["shard-1"]
        _healthy(other)
        _healthy(path)
    finally:
        copy = Cluster.load(other)
        try:
            copy.down(volumes=True)
        finally:
            copy.close()

    # The grown ring, in place.
    assert run_shardctl("down", "-f", path).returncode == 0
    restored = run_shardctl("restore", "--to", "pg", "--yes", "-f", path, timeout=600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    fresh = Cluster.load(path)
    after_growth.check(fresh)
    current = _ring(fresh)
    assert (current.epoch, current.nodes) == (pg_epoch, ("shard-0", "shard-1", "shard-2"))
    _healthy(path)

    # remove-shard: the backup node stops streaming from it at once; its history stays.
    removed = run_shardctl("remove-shard", "shard-2", "--yes", "-f", path, timeout=600)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    smaller = Cluster.load(path)
    node = smaller.engines.named(f"{name}-backup", smaller.topology.placement(None))
    assert node is not None
    targets = node.environment["SHARDCTL_TARGETS"]
    assert "shard-2" not in targets and "shard-1" in targets, targets
    assert (repository / name / "shard-2" / "base" / "b2").is_dir()
    listing = run_shardctl("backups", "-o", "json", "-f", path)
    assert listing.returncode == 0, listing.stderr
    assert "shard-2" in {a["shard"] for a in json.loads(listing.stdout)["archives"]}

    # A switchover after the newest record, then --latest: the catalog names the restored node.
    moved = run_shardctl("switchover", "shard-0", "--yes", "-f", path)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    smaller.follow_roles()
    switched_to = smaller.topology.acting_primary("shard-0")
    marker = uuid.uuid4()
    with Router(smaller) as router:
        router.execute(marker, "INSERT INTO users (id, first_name) VALUES (%s, 'late')", (marker,))
    archived = run_shardctl("verify-replication", "-f", path)  # its archiving check waits
    assert archived.returncode == 0, archived.stdout + archived.stderr
    assert run_shardctl("down", "-f", path).returncode == 0
    latest = run_shardctl("restore", "--latest", "--yes", "-f", path, timeout=600)
    assert latest.returncode == 0, latest.stdout + latest.stderr
    records = repository / name / "restores"
    newest = max(records.glob("*.json"), key=lambda p: int(p.stem))
    shards = json.loads(newest.read_text(encoding="utf-8"))["shards"]
    assert shards["shard-0"]["node"] != switched_to  # the newest record's roles, not the last
    assert shards["shard-0"]["catalog_roles_rewritten"] is True
    fresh = Cluster.load(path)
    fresh.follow_roles()
    assert fresh.topology.acting_primary("shard-0") == shards["shard-0"]["node"]
    assert _rows(fresh)[str(marker)] == "late"
    _healthy(path)


def _archiving(path: Path) -> tuple[int, dict[str, dict[str, object]]]:
    """``status -o json``: its exit code and each shard's archiving (on its primary's row)."""
    status = run_shardctl("status", "-o", "json", "-f", path)
    assert status.returncode in (0, 1), status.stdout + status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    return status.returncode, {n["shard"]: n["archiving"] for n in nodes if n["archiving"]}


def _archiving_shows_stuck(path: Path, shard: str) -> None:
    """status (exit 1, naming the shard) and the metrics agree with verify-replication."""
    deadline = time.monotonic() + 60  # until the newest file is older than canary_timeout
    code, found = _archiving(path)
    while found[shard]["ok"] and time.monotonic() < deadline:
        time.sleep(2)
        code, found = _archiving(path)
    assert code == 1 and not found[shard]["ok"], found
    assert str(found[shard]["problem"]).startswith(f"{shard}: archiving"), found
    assert backup_samples(path)[("shardctl_backup_archiving_ok", shard)] == 0.0


def test_progress_status_and_metrics_show_backups_and_archiving(cluster: Cluster) -> None:
    path = cluster.topology.path
    made = run_shardctl("backup", "--name", "b-progress", "-o", "json", "-f", path)
    assert made.returncode == 0, made.stdout + made.stderr
    # Not a terminal: timestamped lines, the cluster's total in bytes and rate among them.
    assert re.search(
        r"^\d\d:\d\d:\d\d all shards: \S.* [\d.]+ (B|KiB|MiB|GiB)/s", made.stderr, re.M
    ), made.stderr
    record = json.loads(made.stdout)["backup"]
    for shard, copy in record["shards"].items():
        assert copy["size"] > 1_000_000 and copy["bytes_per_second"] > 0, copy
        assert copy["seconds"] > 0 and copy["source"] != record["primaries"][shard], copy
    code, found = _archiving(path)
    assert code == 0 and set(found) == {"shard-0", "shard-1"}, found
    for state in found.values():
        assert state["state"] == "ok" and state["behind_bytes"] is not None, state
        assert state["lag_seconds"] is not None and 0 <= float(str(state["lag_seconds"])) < 10
    now = time.time()
    samples = backup_samples(path)
    for shard in ("shard-0", "shard-1"):
        finished = samples[("shardctl_backup_last_complete_timestamp_seconds", shard)]
        assert now - 600 < finished <= now, finished  # b-progress, just taken
        newest = samples[("shardctl_backup_wal_newest_timestamp_seconds", shard)]
        assert now - 3600 < newest <= now + 1, newest
        assert 0 <= samples[("shardctl_backup_wal_lag_seconds", shard)] < 10
        assert samples[("shardctl_backup_wal_streaming", shard)] == 1.0
        assert samples[("shardctl_backup_archiving_ok", shard)] == 1.0
        assert samples[("shardctl_backup_repository_full", shard)] == 0.0
    assert samples[("shardctl_backup_repository_free_bytes", "")] > 0
