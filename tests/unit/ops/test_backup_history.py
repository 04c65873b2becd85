"""Which base backup a recovery on a timeline can start from: a copy taken on its own
timeline, or on an ancestor the timeline left only after the copy ended. A copy that ends past
the switch holds WAL the timeline does not (what an async failover lost), and PostgreSQL
refuses it ("requested timeline 2 is not a child of this server's history"; seen on a
PostgreSQL 15 server restored from such a copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.config import topology
from shardctl.errors import CheckFailed
from shardctl.ops.backup.point import _bases
from shardctl.ops.backup.repository import (
    BackupRecord,
    Histories,
    Repository,
    ShardBackup,
    parse_history,
)

# As PostgreSQL writes them: parent, switch point, reason; a blank line between entries.
TL2 = "1\t0/3000090\tno recovery target specified\n\n"
TL3 = TL2 + "2\t0/5000000\tno recovery target specified\n\n"


def _repository(tmp_path: Path) -> tuple[topology.Topology, Repository]:
    """A one-shard topology with a local repository, prepared."""
    path = tmp_path / "topology.yaml"
    path.write_text(
        "cluster: demo\nimage: shardctl-test/postgres:15\nbackup: {repository: repo}\n"
        "shards: [{name: s1}]\n",
        encoding="utf-8",
    )
    declared = topology.load(path)
    repo = Repository.of(declared)
    repo.prepare()
    return declared, repo


def copy(timeline: int, start: str, end: str) -> ShardBackup:
    return ShardBackup("n", "p", timeline=timeline, start_lsn=start, end_lsn=end)


def test_history_files_parse_as_parent_and_switch() -> None:
    assert parse_history(TL3) == [(1, 0x3000090), (2, 0x5000000)]
    assert parse_history("# a comment\n\n1\tnot-an-lsn\tx\n") == []


def test_a_copy_serves_its_timeline_and_those_that_left_it_after_its_end() -> None:
    histories = Histories({2: parse_history(TL2), 3: parse_history(TL3)})
    assert histories.newest == 3
    before_fork = copy(1, "0/2000028", "0/2000100")
    on_lost_wal = copy(1, "0/3000028", "0/3000138")  # started before the fork, ended past it
    after_fork = copy(1, "0/4000028", "0/4000100")
    assert histories.holds(before_fork, 1) and histories.holds(before_fork, 2)
    assert histories.holds(before_fork, 3)  # through 2's ancestry
    assert not histories.holds(on_lost_wal, 2) and not histories.holds(after_fork, 2)
    assert histories.holds(after_fork, 1)  # a point on the old timeline still can
    assert histories.holds(copy(2, "0/4800028", "0/4800100"), 3)
    assert not histories.holds(copy(2, "0/5000028", "0/5000100"), 3)
    assert not histories.holds(copy(3, "0/6000028", "0/6000100"), 2)  # not an ancestor
    # Without the timeline's history nothing can be judged (an older timeline: never).
    assert histories.holds(copy(3, "0/6000028", "0/6000100"), 4)
    assert not Histories({}).holds(copy(3, "0/6000028", "0/6000100"), 2)
    assert Histories({}).newest == 1
    assert histories.holds(copy(0, "", ""), 3)  # a record without its timeline: as before


def test_the_repository_reads_history_files_from_every_generation(tmp_path: Path) -> None:
    _, repo = _repository(tmp_path)
    for generation, name, text in (("1", "00000002.history", TL2), ("2", "00000003.history", TL3)):
        folder = repo.wal_folder("s1") / generation
        folder.mkdir(parents=True)
        (folder / name).write_text(text, encoding="utf-8")
        (folder / "000000020000000000000005.partial").write_bytes(b"")
    found = repo.history("s1")
    assert found.by_timeline == {2: [(1, 0x3000090)], 3: [(1, 0x3000090), (2, 0x5000000)]}
    assert found.newest == 3


def test_a_point_names_the_newest_backup_its_timeline_can_start_from(tmp_path: Path) -> None:
    declared, repo = _repository(tmp_path)
    before = BackupRecord(
        "b1", "demo", 1.0, 2.0, True, shards={"s1": copy(1, "0/2000028", "0/2000100")}
    )
    on_lost = BackupRecord(
        "b2", "demo", 3.0, 4.0, True, shards={"s1": copy(1, "0/4000028", "0/4000100")}
    )
    repo.write_backup(on_lost)
    # Without timeline 2's history nothing can be judged: the newest, as before.
    assert _bases(repo, declared, repo.complete_backups(), {"s1": 2}) == {"s1": "b2"}
    folder = repo.wal_folder("s1") / "2"
    folder.mkdir(parents=True)
    (folder / "00000002.history").write_text(TL2, encoding="utf-8")
    with pytest.raises(CheckFailed, match=r"b2.*WAL a failover lost"):
        # no other backup: refused, nothing named
        _bases(repo, declared, repo.complete_backups(), {"s1": 2})
    repo.write_backup(before)
    assert _bases(repo, declared, repo.complete_backups(), {"s1": 2}) == {"s1": "b1"}
    # the old timeline keeps it
    assert _bases(repo, declared, repo.complete_backups(), {"s1": 1}) == {"s1": "b2"}
    assert _bases(repo, declared, repo.complete_backups()) == {"s1": "b2"}
