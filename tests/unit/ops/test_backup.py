"""The backup repository's records, names, WAL listing and retention, and the containers the
backup node and a restore are made from (pure logic; the real thing: test_backup.py)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from shardctl.config import topology
from shardctl.docker.backup_specs import backup_node_spec, restore_spec
from shardctl.docker.records import ContainerSpec, create_arguments
from shardctl.errors import TopologyError, UsageError
from shardctl.ops.backup.listing import list_backups
from shardctl.ops.backup.repository import (
    BackupRecord,
    PointRecord,
    Repository,
    RepositoryError,
    ShardBackup,
    ShardPoint,
    check_name,
)
from shardctl.ops.backup.restore import _declared, roles_at
from shardctl.ops.backup.retention import apply_retention
from shardctl.ops.backup.store import EngineStore, LocalStore

TOPOLOGY = """
cluster: demo
image: shardctl-test/postgres:15
backup: {repository: repo, retention: {base_backups: 2}}
shards: [{name: s1}, {name: s2}]
"""


def _topology(tmp_path: Path, text: str = TOPOLOGY) -> topology.Topology:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    return topology.load(path)


def test_the_repository_is_relative_to_the_topology_and_per_cluster(tmp_path: Path) -> None:
    repo = Repository.of(_topology(tmp_path))
    assert repo.root == (tmp_path / "repo").absolute()
    assert repo.folder == repo.root / "demo"
    assert Repository.of(_topology(tmp_path), "other").folder == repo.root / "other"


def test_no_backup_key_and_a_relative_remote_repository_are_usage_errors(tmp_path: Path) -> None:
    plain = TOPOLOGY.replace("backup: {repository: repo, retention: {base_backups: 2}}\n", "")
    with pytest.raises(UsageError, match="no backup repository declared"):
        Repository.of(_topology(tmp_path, plain))
    for relative in ("repo", "~/repo", "./repo"):
        remote = TOPOLOGY.replace(
            "backup: {repository: repo",
            "engines: {far: {endpoint: 'tcp://10.9.9.9:2376'}}\n"
            f"backup: {{repository: '{relative}', engine: far",
        )
        with pytest.raises(UsageError, match="another host: give an absolute path on that host"):
            Repository.of(_topology(tmp_path, remote))


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("unix:///run/other.sock", True),
        ("tcp://10.9.9.9:2376", False),
        ("ssh://backup@vault", False),
    ],
)
def test_a_repository_on_another_hosts_engine_is_read_through_that_engine(
    tmp_path: Path, endpoint: str, local: bool
) -> None:
    text = TOPOLOGY.replace(
        "backup: {repository: repo",
        f"engines: {{far: {{endpoint: '{endpoint}'}}}}\n"
        "backup: {repository: /srv/backups/../repo, engine: far",
    )
    repo = Repository.of(_topology(tmp_path, text))
    assert repo.remote is not local
    assert isinstance(repo.store, LocalStore) is local
    if not local:
        assert repo.root == Path("/srv/repo")  # as given (normalised), never made local
        assert isinstance(repo.store, EngineStore)
        assert repo.store.owner == "demo"
        assert repo.where == "/srv/repo on engine far"
        # one store (one client, one helper) per repository and engine in a process
        assert Repository.of(_topology(tmp_path, text), "other").store is repo.store


def test_an_unknown_backup_engine_is_a_topology_error(tmp_path: Path) -> None:
    text = TOPOLOGY.replace("backup: {repository: repo", "backup: {repository: repo, engine: nope")
    with pytest.raises(TopologyError, match="unknown engine 'nope'"):
        _topology(tmp_path, text)


@pytest.mark.parametrize("name", ["p1", "b20261207T010000Z", "before-upgrade", "a.b_c"])
def test_good_names(name: str) -> None:
    assert check_name(name, "point") == name


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "é", "../x"])
def test_bad_names_are_usage_errors(name: str) -> None:
    with pytest.raises(UsageError, match="not a valid point name"):
        check_name(name, "point")


def test_records_round_trip_and_a_killed_backup_stays_incomplete(tmp_path: Path) -> None:
    repo = Repository.of(_topology(tmp_path))
    repo.prepare()
    copy = ShardBackup("s1-replica-1", "demo/s1/base/b1", 10, 1.5, 1, "0/2000028", "0/3000100")
    started = BackupRecord("b1", "demo", 100.0, primaries={"s1": "s1-primary"})
    repo.write_backup(started)  # what a SIGKILL leaves behind
    assert repo.backup("b1") == started
    assert repo.complete_backups() == []
    done = BackupRecord("b1", "demo", 100.0, 110.0, True, shards={"s1": copy})
    repo.write_backup(done)
    assert repo.complete_backups() == [done]
    point = PointRecord("p1", "demo", 120.0, 3, {"s1": "s1-replica-1"},
                        {"s1": ShardPoint("0/3000200", 2, "b1")}, 0.05)  # fmt: skip
    repo.write_point(point)
    assert repo.point("p1") == point
    assert repo.point("p2") is None
    assert [p.name for p in repo.points()] == ["p1"]
    assert not list((repo.folder / "points").glob(".*"))  # no temporary file left


def test_an_unwritable_repository_is_an_infrastructure_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "repo"
        blocker.write_text("a file, not a directory")  # fails for root too
    else:
        (tmp_path / "repo").mkdir()
        (tmp_path / "repo").chmod(0o500)
    with pytest.raises(RepositoryError, match="cannot write"):
        Repository.of(_topology(tmp_path)).prepare()


def test_generations_and_the_wal_range(tmp_path: Path) -> None:
    repo = Repository.of(_topology(tmp_path))
    assert repo.generation("s1") == 1
    for generation, names in {
        1: ["000000010000000000000002", "000000010000000000000003.partial"],
        2: ["00000002.history", "000000020000000000000003", "000000020000000000000004.partial"],
        10: [],
    }.items():
        folder = repo.wal_folder("s1") / str(generation)
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes(b"x" * 16)
    assert repo.generations("s1") == [1, 2, 10]
    assert repo.generation("s1") == 10
    wal = repo.wal_range("s1")
    assert (wal.first, wal.last) == ("0000000000000002", "0000000000000004")
    assert wal.timelines == (1, 2)
    assert wal.size == 16 * 4
    assert wal.newest_mtime is not None


def test_retention_keeps_the_newest_complete_backups(tmp_path: Path) -> None:
    top = _topology(tmp_path)
    repo = Repository.of(top)
    repo.prepare()
    for i, complete in enumerate([True, False, True, True, False]):
        folder = repo.base_folder("s1", f"b{i}")
        folder.mkdir(parents=True)
        shards = {"s1": ShardBackup("s1-primary", repo.relative(folder))}
        repo.write_backup(BackupRecord(f"b{i}", "demo", float(i), float(i) + 0.5, complete,
                                       shards=shards))  # fmt: skip
    removed = apply_retention(top, repo)
    assert sorted(removed) == ["b0", "b1"]  # b4 is newer than the newest complete one: running?
    assert [b.name for b in repo.backups()] == ["b2", "b3", "b4"]
    assert not repo.base_folder("s1", "b0").exists()


def test_the_listing_window(tmp_path: Path) -> None:
    top = _topology(tmp_path)
    repo = Repository.of(top)
    repo.prepare()
    repo.write_backup(BackupRecord("b1", "demo", 10.0, 20.0, True))
    for shard in ("s1", "s2"):
        folder = repo.wal_folder(shard) / "1"
        folder.mkdir(parents=True)
        segment = folder / "000000010000000000000002.partial"
        segment.write_bytes(b"")
        os.utime(segment, (100.0 if shard == "s1" else 90.0,) * 2)
    listing = list_backups(top)
    assert listing.earliest == 20.0
    assert listing.latest == 90.0  # the shard that lags decides
    assert {a.shard for a in listing.archives} == {"s1", "s2"}


def test_the_backup_node_binds_the_repository_and_names_its_targets(tmp_path: Path) -> None:
    top = _topology(tmp_path)
    spec = backup_node_spec(top, "/data/repo", [("s1", "demo-s1-primary", 5432)])
    assert spec.environment["SHARDCTL_TARGETS"] == "s1 demo-s1-primary 5432"
    assert spec.environment["SHARDCTL_SHARDS"] == "s1 s2"
    assert spec.secrets == ("replication",)
    arguments = create_arguments(spec)
    assert arguments["volumes"] == {"/data/repo": {"bind": "/repository", "mode": "rw"}}
    assert not any("password" in str(v).lower() for v in spec.environment.values())


def test_only_specs_that_say_so_bind_host_paths(tmp_path: Path) -> None:
    top = _topology(tmp_path)
    node = top.primaries()[0]
    spec = restore_spec(
        top,
        node,
        "/var/lib/postgresql",
        repository="/data/repo",
        base="demo/s1/base/b1",
        wal="demo/s1/wal",
        seed=("/data/repo/demo/s1/wal", 3),
        settings=("-c", "recovery_target_name=p1"),
    )
    volumes = create_arguments(spec)["volumes"]
    assert isinstance(volumes, dict)
    assert volumes["/data/repo"] == {"bind": "/repository", "mode": "ro"}
    assert spec.command[-2:] == ("-c", "recovery_target_name=p1")
    assert spec.restart == "no"
    guarded: ContainerSpec = dataclasses.replace(spec, host_paths=False)
    with pytest.raises(AssertionError, match="host paths"):
        create_arguments(guarded)


def test_a_time_restore_takes_the_roles_of_the_newest_record_before_it() -> None:
    def backup(name: str, started: float, roles: dict[str, str], complete: bool = True) -> Any:
        return BackupRecord(name, "demo", started, started + 1, complete, primaries=roles)

    def point(name: str, created: float, roles: dict[str, str]) -> PointRecord:
        return PointRecord(name, "demo", created, 1, roles, {})

    backups = [
        backup("b1", 10.0, {"s1": "s1-primary", "s2": "s2-primary"}),
        backup("b2", 50.0, {"s1": "s1-replica-1", "s2": "s2-primary"}, complete=False),
    ]
    points = [
        point("b1", 12.0, {"s1": "s1-primary", "s2": "s2-primary"}),
        point("after-switchover", 30.0, {"s1": "s1-replica-1", "s2": "s2-primary"}),
        point("grown", 40.0, {"s1": "s1-replica-1", "s2": "s2-replica-1", "s3": "s3-primary"}),
    ]
    assert roles_at(backups, points, 20.0) == {"s1": "s1-primary", "s2": "s2-primary"}
    assert roles_at(backups, points, 35.0)["s1"] == "s1-replica-1"  # not the backup's
    latest = roles_at(backups, points, None)  # the incomplete b2 is no record
    assert latest == {"s1": "s1-replica-1", "s2": "s2-replica-1", "s3": "s3-primary"}
    assert roles_at(backups, points, 5.0) == {}


def test_a_restore_tells_the_one_shot_server_the_roles_its_catalog_must_name(
    tmp_path: Path,
) -> None:
    top = _topology(tmp_path)
    node = top.node("s1-replica-1")
    spec = restore_spec(
        top, node, "/var/lib/postgresql", repository="/data/repo", base="demo/s1/base/b1",
        wal="demo/s1/wal", seed=None, settings=(), roles={"s2": "s2-primary", "s1": node.name},
    )  # fmt: skip
    assert json.loads(spec.environment["SHARDCTL_ROLES"]) == {
        "s1": "s1-replica-1",
        "s2": "s2-primary",
    }
    assert spec.environment["SHARDCTL_DATABASE"] == top.spec.database
    assert _declared(top, "s1", "s1-replica-1") == "s1-replica-1"
    assert _declared(top, "s2", "s2-replica-3") == "s2-primary"  # not declared here
    assert _declared(top, "s2", None) == "s2-primary"


def test_a_copy_is_recorded_only_with_the_size_and_wal_range_it_has() -> None:
    """An exec's answer that arrived empty or cut short parses as nothing (asked again), never
    as a size of 0 or a WAL range without LSNs."""
    from shardctl.ops.backup.base import _du, _wal_range

    assert _du("40968214\t/repository/c/s0/base/b1\n") == 40968214
    assert _du("") is None and _du("du: cannot access") is None
    manifest = (
        '{"PostgreSQL-Backup-Manifest-Version": 1, "WAL-Ranges": ['
        '{"Timeline": 2, "Start-LSN": "0/2000028", "End-LSN": "0/3000000"},'
        '{"Timeline": 3, "Start-LSN": "0/3000000", "End-LSN": "0/3000100"}]}'
    )
    assert _wal_range(manifest) == (3, "0/2000028", "0/3000100")
    assert _wal_range("") is None
    assert _wal_range(manifest[:40]) is None  # cut short
    assert _wal_range('{"WAL-Ranges": []}') is None
    assert _wal_range("[]") is None
