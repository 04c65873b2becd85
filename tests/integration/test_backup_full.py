"""A full backup repository, against real containers: the repository is a small tmpfs (the test
mounts it; the engine sees it because it runs on this machine), filled to the last byte.

A base backup that cannot be written fails with one line and exit 3 and is never listed as
complete and leaves no copy behind; archiving that cannot make its next segment fails
``verify-replication`` (exit 1) naming the shard; once space is freed archiving catches up by
itself and the next backup is complete, with the earlier one still listed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from tests.clusters import backup_samples, make_topology, run_shardctl, running

pytestmark = pytest.mark.integration

SIZE = "320m"
"""Room for two 1-shard base backups (about 40 MB each) and the WAL segments (16 MiB each) of
the switches the test makes."""


PART_OF_A_SEGMENT = 4 << 20
"""Space given back before the next segment is due: a quarter of one (16 MiB)."""


def _as_root(*command: str) -> None:
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=30)


@contextmanager
def _tmpfs(folder: Path) -> Iterator[Path]:
    folder.mkdir()
    _as_root("mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0777", "tmpfs", str(folder))
    try:
        yield folder
    finally:
        _as_root("umount", "-l", str(folder))


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the file system refuses: it is full."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096):  # the last blocks too
            block = b"\0" * size
            try:
                while os.write(descriptor, block) > 0:
                    pass
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(descriptor)
    return filler


def _switch_wal(cluster: Cluster) -> None:
    primary = cluster.topology.shard_nodes("shard-0")[0]
    with pg.connect(primary, cluster.credentials(), cluster.topology.spec.database) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (n int)")
        conn.execute("INSERT INTO filler SELECT generate_series(1, 1000)")
        conn.execute("SELECT pg_catalog.pg_switch_wal()")


def _complete_segments(wal: Path) -> set[str]:
    """The complete WAL segments of every generation (a .partial one grows and is renamed)."""
    return {p.name for p in wal.rglob("*") if p.is_file() and not p.name.endswith(".partial")}


def _wait_archiving(path: Path, *, healthy: bool) -> str:
    """Poll ``verify-replication`` until it says what it should (60 s at the most)."""
    deadline = time.monotonic() + 60
    while True:
        result = run_shardctl("verify-replication", "-f", path)
        said = result.stdout + result.stderr
        if (result.returncode == 0) == healthy or time.monotonic() > deadline:
            assert (result.returncode == 0) == healthy, said
            assert "Traceback" not in said
            return said
        time.sleep(1.0)


def test_a_full_repository_fails_backups_and_archiving_loudly_and_recovers(
    tmp_path: Path,
) -> None:
    with _tmpfs(tmp_path / "repository") as repository:
        path = make_topology(tmp_path, shards=1, replicas=0, backup={"repository": "repository"})
        with running(path) as cluster:
            first = run_shardctl("backup", "--name", "before", "-f", path)
            assert first.returncode == 0, first.stdout + first.stderr

            filler = _fill(repository)
            full = run_shardctl("backup", "--name", "full", "-f", path)
            lines = [line for line in full.stderr.splitlines() if line.strip()]
            assert full.returncode == 3, full.stdout + full.stderr
            assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
            assert "space" in lines[0].lower() or "full" in lines[0].lower(), lines[0]
            listing = run_shardctl("backups", "-o", "json", "-f", path)
            assert listing.returncode == 0, listing.stdout + listing.stderr
            complete = {b["name"]: b["complete"] for b in json.loads(listing.stdout)["backups"]}
            assert complete.get("before") is True and complete.get("full") is not True, complete
            base = repository / cluster.topology.cluster / "shard-0" / "base"
            assert sorted(p.name for p in base.iterdir()) == ["before"]  # its copy is gone

            # Room for part of a segment: pg_receivewal starts the next one, cannot fill it
            # with zeros to its size and stops, leaving a short .partial with no WAL in it.
            os.truncate(filler, filler.stat().st_size - PART_OF_A_SEGMENT)
            _switch_wal(cluster)  # the next segment cannot be made
            stuck = _wait_archiving(path, healthy=False)
            assert "shard-0" in stuck and "archiving" in stuck and "full" in stuck, stuck
            # status says the same: the repository is full, not just "not streaming".
            shown = run_shardctl("status", "-o", "json", "-f", path)
            assert shown.returncode == 1, shown.stdout + shown.stderr
            (primary,) = [n for n in json.loads(shown.stdout)["nodes"] if n["archiving"]]
            assert "repository is full" in str(primary["archiving"]["problem"]), primary
            table = run_shardctl("status", "-o", "wide", "-f", path)
            assert "repository full" in table.stdout, table.stdout
            # and so do the metrics, with the room left
            scraped = backup_samples(path)
            assert scraped[("shardctl_backup_repository_full", "shard-0")] == 1.0, scraped
            assert scraped[("shardctl_backup_repository_free_bytes", "")] < 2 * 16 * 1024**2

            filler.unlink()
            _switch_wal(cluster)
            _wait_archiving(path, healthy=True)
            after = run_shardctl("backup", "--name", "after", "-f", path)
            assert after.returncode == 0, after.stdout + after.stderr
            listing = run_shardctl("backups", "-o", "json", "-f", path)
            complete = {b["name"]: b["complete"] for b in json.loads(listing.stdout)["backups"]}
            assert complete.get("before") is True and complete.get("after") is True, complete
            assert complete.get("full") is not True, complete

            # A kept backup's label that cannot be read: the retention cannot tell which WAL
            # it needs and removes nothing; the backup and its point are made all the same.
            label = base / "after" / "backup_label"
            text = label.read_bytes()
            label.unlink()
            label.mkdir()
            try:
                wal = _complete_segments(base.parent / "wal")
                later = run_shardctl("backup", "--name", "later", "-o", "json", "-f", path)
                assert later.returncode == 0, later.stdout + later.stderr
                said = json.loads(later.stdout)
                assert "backup_label" in str(said["retention_error"]), said
                assert said["point"]["name"] == "later" and said["removed"] == [], said
                assert "warning: retention not applied" in later.stderr, later.stderr
                assert wal <= _complete_segments(base.parent / "wal")  # none removed
            finally:
                label.rmdir()
                label.write_bytes(text)
