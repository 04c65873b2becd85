"""The backup node's answer to a failover that lost archived WAL (``FORK_GENERATION``), run in
``sh`` against the error pg_receivewal prints and psql's answers as a PostgreSQL 15 server gives
them (taken from a server promoted twice: ``IDENTIFY_SYSTEM``, ``TIMELINE_HISTORY``). The
whole path, on real servers, is ``tests/integration/test_backup_fork.py``; this covers what
that test cannot reach on one failover: a primary already promoted again, forks on and off a
segment boundary, a high LSN word, psql not answering."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from shardctl.config.constants import SEGMENT_BYTES
from shardctl.docker.backup_specs import FORK_GENERATION

# A walsender's refusal as pg_receivewal prints it (one line of the error, one of DETAIL).
REFUSED = (
    'pg_receivewal: error: could not send replication command "START_REPLICATION": ERROR:  '
    "requested starting point 0/6000000 on timeline {t} is not in this server's history\n"
    "DETAIL:  This server's history forked from timeline {t} at {lsn}.\n"
    "pg_receivewal: error: disconnected\n"
)
# psql -XAt's answers on a server whose timeline is 3, forked from 1 and then from 2.
PSQL = """#!/bin/sh
[ -n "${FAKE_DOWN:-}" ] && exit 2
case "$*" in
*IDENTIFY_SYSTEM*) echo "7716738183801438223|$FAKE_CURRENT|0/1500A30|" ;;
*"TIMELINE_HISTORY 3"*) printf '00000003.history|1\\t0/1500780\\tno recovery target \
specified\\n\\n2\\t0/15008D8\\tno recovery target specified\\n\\n' ;;
*"TIMELINE_HISTORY 2"*) printf '00000002.history|1\\t0/1500780\\tno recovery target \
specified\\n\\n' ;;
esac
"""


def _run(tmp_path: Path, forked: int, lsn: str, current: int, *, down: bool = False,
         generation: int = 1) -> tuple[list[str], str]:  # fmt: skip
    """The files of the shard's WAL folder after one refusal, and what the function said."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    psql = bin_ / "psql"
    psql.write_text(PSQL, encoding="utf-8")
    psql.chmod(psql.stat().st_mode | stat.S_IEXEC)
    errors, repo = tmp_path / "errors", tmp_path / "repo"
    errors.mkdir(exist_ok=True)
    (repo / "s1" / "wal" / str(generation)).mkdir(parents=True, exist_ok=True)
    (errors / "s1").write_text(REFUSED.format(t=forked, lsn=lsn), encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{bin_}:{os.environ['PATH']}",
        "FAKE_CURRENT": str(current),
        "SHARDCTL_SEGMENT_BYTES": str(SEGMENT_BYTES),
        "SHARDCTL_REPLICATION_USER": "replicator",
        **({"FAKE_DOWN": "1"} if down else {}),
    }
    script = f'{FORK_GENERATION}\nerrors="$1"; repo="$2"; fork_generation s1 host 5432 "$3"'
    done = subprocess.run(
        ["sh", "-c", script, "sh", str(errors), str(repo), str(generation)],
        capture_output=True, text=True, env=env, check=True, timeout=30,
    )  # fmt: skip
    files = sorted(str(p.relative_to(repo / "s1" / "wal")) for p in repo.rglob("*") if p.is_file())
    return files, done.stderr


@pytest.mark.parametrize(
    ("forked", "lsn", "current", "seed"),
    [
        (1, "0/4FFF8A0", 2, "2/000000020000000000000004.partial"),  # within a segment
        (1, "0/4000000", 2, "2/000000020000000000000004.partial"),  # on its first byte
        (2, "1/A00060", 3, "2/000000030000000100000000.partial"),  # high word, low < a segment
        # Promoted again since: the timeline after the forked one, not the current one
        # (pg_receivewal follows the later switch itself).
        (1, "0/1500780", 3, "2/000000020000000000000001.partial"),
    ],
)
def test_a_refused_start_opens_the_next_generation_at_the_fork(
    tmp_path: Path, forked: int, lsn: str, current: int, seed: str
) -> None:
    files, said = _run(tmp_path, forked, lsn, current)
    assert files == [seed], said
    assert (tmp_path / "repo" / "s1" / "wal" / seed).stat().st_size == 0
    assert f"continuing in WAL generation 2 from {seed[2:26]}" in said


def test_other_errors_and_an_unreadable_timeline_leave_the_archive_alone(tmp_path: Path) -> None:
    files, said = _run(tmp_path, 1, "0/4FFF8A0", 2, down=True)
    assert files == [] and "timelines could not be read" in said
    (tmp_path / "errors" / "s1").write_text("pg_receivewal: error: disconnected\n")
    script = f'{FORK_GENERATION}\nerrors="$1"; repo="$2"; fork_generation s1 host 5432 1'
    done = subprocess.run(
        ["sh", "-c", script, "sh", str(tmp_path / "errors"), str(tmp_path / "repo")],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert done.stderr == "" and not any(p.is_file() for p in (tmp_path / "repo").rglob("*"))
