"""Retention on a repository tree: base backups, then per shard the WAL before the oldest kept
base backup's start (history files and generations stay), then removed shards' folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.config import topology
from shardctl.ops.backup.repository import BackupRecord, Repository, ShardBackup
from shardctl.ops.backup.retention import lsn_segment, prune, start_segment
from shardctl.ops.backup.store import RepositoryError

TOPOLOGY = """
cluster: demo
image: shardctl-test/postgres:15
backup: {repository: repo, retention: {base_backups: 2}}
shards: [{name: s1}, {name: s2}]
"""
SEGMENTS = {
    # generation -> files: timelines 1 to 3, a partial segment, history files
    "1": ["000000010000000000000001", "000000010000000000000002", "000000010000000000000003",
          "000000010000000000000004.partial"],
    "2": ["000000020000000000000003", "000000020000000000000004", "00000002.history",
          "000000020000000000000005.partial"],
    "3": ["00000003.history", "000000030000000000000007.partial"],
}  # fmt: skip


def _repository(tmp_path: Path, shards: tuple[str, ...] = ("s1", "s2")) -> tuple[
    topology.Topology, Repository]:  # fmt: skip
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY, encoding="utf-8")
    top = topology.load(path)
    repo = Repository.of(top)
    repo.prepare()
    for shard in shards:
        for generation, names in SEGMENTS.items():
            folder = repo.wal_folder(shard) / generation
            folder.mkdir(parents=True)
            for name in names:
                (folder / name).write_bytes(b"x")
    return top, repo


def _backup(repo: Repository, name: str, started: float, starts: dict[str, str],
            *, label: bool = True) -> None:  # fmt: skip
    """A complete base backup of the shards in ``starts`` (shard -> its start WAL file)."""
    shards = {}
    for shard, wal_file in starts.items():
        folder = repo.base_folder(shard, name)
        folder.mkdir(parents=True)
        if label:
            (folder / "backup_label").write_text(
                f"START WAL LOCATION: 0/{wal_file[-1]}000028 (file {wal_file})\n"
                "CHECKPOINT LOCATION: 0/3000060\n",
                encoding="utf-8",
            )
        shards[shard] = ShardBackup(f"{shard}-primary", repo.relative(folder),
                                    start_lsn=f"0/{wal_file[-1]}000028")  # fmt: skip
    repo.write_backup(BackupRecord(name, "demo", started, started + 1, True, shards=shards))


def _files(repo: Repository, shard: str) -> set[str]:
    return {p.name for p in repo.wal_folder(shard).rglob("*") if p.is_file()}


def test_segments_before_the_oldest_kept_base_backup_go_on_every_timeline(tmp_path: Path) -> None:
    top, repo = _repository(tmp_path)
    _backup(repo, "b1", 1.0, {"s1": "000000010000000000000002", "s2": "000000010000000000000002"})
    _backup(repo, "b2", 2.0, {"s1": "000000020000000000000004", "s2": "000000010000000000000002"})
    _backup(repo, "b3", 3.0, {"s1": "000000020000000000000005", "s2": "000000010000000000000003"})
    pruned = prune(top, repo)
    assert pruned.backups == ["b1"]
    # s1: the oldest kept start is segment 4 (b2): segments 1-3 go on timelines 1 and 2.
    assert _files(repo, "s1") == {
        "000000010000000000000004.partial",
        "000000020000000000000004",
        "00000002.history",
        "000000020000000000000005.partial",
        "00000003.history",
        "000000030000000000000007.partial",
    }
    # s2: b2 (segment 2) is its oldest kept backup: only segment 1 goes.
    assert "000000010000000000000001" not in _files(repo, "s2")
    assert "000000010000000000000002" in _files(repo, "s2")
    assert pruned.segments == {"s1": 4, "s2": 1}
    assert sorted(p.name for p in repo.wal_folder("s1").iterdir()) == ["1", "2", "3"]


def test_base_backups_are_counted_per_shard(tmp_path: Path) -> None:
    """add-shard's backup of its new shard alone must not push out the others' backups."""
    top, repo = _repository(tmp_path)
    _backup(repo, "b1", 1.0, {"s1": "000000010000000000000002"})
    _backup(repo, "b2", 2.0, {"s1": "000000010000000000000003"})
    _backup(repo, "added-s2", 3.0, {"s2": "000000010000000000000003"})
    assert prune(top, repo).backups == []  # two of s1, one of s2: all within 2 per shard
    _backup(repo, "b3", 4.0, {"s1": "000000010000000000000004", "s2": "000000010000000000000004"})
    assert prune(top, repo).backups == ["b1"]  # s1: b2, b3; s2: added-s2, b3
    _backup(repo, "b4", 5.0, {"s1": "000000020000000000000005", "s2": "000000020000000000000005"})
    assert sorted(prune(top, repo).backups) == ["added-s2", "b2"]


def test_a_declared_shard_without_a_kept_base_backup_keeps_its_wal(tmp_path: Path) -> None:
    top, repo = _repository(tmp_path)
    _backup(repo, "b1", 1.0, {"s1": "000000030000000000000007"})
    before = _files(repo, "s2")
    pruned = prune(top, repo)
    assert _files(repo, "s2") == before
    assert "s2" not in pruned.segments and pruned.shards == []


def test_a_removed_shard_stays_until_its_last_base_backup_leaves(tmp_path: Path) -> None:
    top, repo = _repository(tmp_path, ("s1", "s2", "gone"))
    both = {"s1": "000000010000000000000002", "gone": "000000010000000000000002"}
    _backup(repo, "b1", 1.0, both)
    _backup(repo, "b2", 2.0, {"s1": "000000010000000000000003"})
    assert prune(top, repo).shards == []  # b1 is kept and holds it
    assert (repo.folder / "gone" / "wal" / "1").is_dir()
    _backup(repo, "b3", 3.0, {"s1": "000000010000000000000003"})
    pruned = prune(top, repo)
    assert (pruned.backups, pruned.shards) == (["b1"], ["gone"])
    assert not (repo.folder / "gone").exists()
    assert (repo.folder / "s2" / "wal").is_dir()  # declared: never removed


def test_the_start_segment_from_the_label_else_from_the_lsn(tmp_path: Path) -> None:
    _, repo = _repository(tmp_path, ())
    _backup(repo, "b1", 1.0, {"s1": "000000020000000000000005"})
    _backup(repo, "b2", 2.0, {"s1": "000000020000000000000006"}, label=False)
    records = {r.name: r for r in repo.backups()}
    assert start_segment(repo, records["b1"], "s1") == "0000000000000005"
    assert start_segment(repo, records["b2"], "s1") == "0000000000000006"
    assert lsn_segment("1/FF000028") == "00000001000000FF"
    assert lsn_segment("") == "0" * 16


def test_a_label_that_cannot_be_read_stops_the_prune_instead_of_a_guess(tmp_path: Path) -> None:
    """The label names where a kept backup's WAL starts; read as missing, the cut would be
    guessed from the LSN (at the default segment size) and could remove what it needs. It is
    read before anything goes: a retention that stops removes nothing, base backups included."""
    declared, repo = _repository(tmp_path)
    _backup(repo, "b1", 1.0, {"s1": "000000020000000000000004"})  # beyond the 2 kept: goes
    _backup(repo, "b2", 2.0, {"s1": "000000020000000000000005"}, label=False)
    _backup(repo, "b3", 3.0, {"s1": "000000030000000000000007"})
    (repo.base_folder("s1", "b2") / "backup_label").mkdir()  # there, and not readable
    records = {r.name: r for r in repo.backups()}
    with pytest.raises(RepositoryError, match="backup_label"):
        start_segment(repo, records["b2"], "s1")
    before = _files(repo, "s1")
    with pytest.raises(RepositoryError):
        prune(declared, repo)
    assert _files(repo, "s1") == before
    assert sorted(r.name for r in repo.backups()) == ["b1", "b2", "b3"]
    assert repo.base_folder("s1", "b1").is_dir()
