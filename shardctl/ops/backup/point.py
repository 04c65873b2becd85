"""``backup --point NAME``: a named restore point that is the same moment on every shard.

With the role-change lock (:data:`~shardctl.state.locks.ROLE_CHANGE_LOCK`) held on every acting
primary (so no switchover runs meanwhile), writes are held on all of them with shardctl's own
fence -- the whole circle given away ``FENCED`` under the role-change operation, exactly as a
switchover fences its old primary; Routers wait and retry -- and ``pg_create_restore_point``
runs on each in the transaction that fences it (all primaries at once, one round each); the
fences are lifted only once every point is written. A shard commits nothing from its point
until the last point is written, so each point is its shard as of that last moment, the same on
every shard:

- every write acknowledged before the command started is before the point on its shard;
- every write started after the command returned is after it, on every shard;
- a write whose transaction spans the pause lands on one side on every shard, never half.

The point is recorded (``points/NAME.json``) only once every shard's archive holds its LSN.
The point is written inside the fence's transaction, so a restored cluster does not hold the
fence (and if it ever did, ``up`` lifts it: :func:`shardctl.state.fence.lift_abandoned_role_fence`
lifts any fence no role change holds). A point is refused while a reshard is in flight.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import CheckFailed, ShardctlError, UsageError
from shardctl.ops.backup import archiving
from shardctl.ops.backup.repository import (
    PointRecord,
    Repository,
    ShardPoint,
    check_name,
    now,
)
from shardctl.ring.hashing import SPACE, Move
from shardctl.state import catalog, fence, locks
from shardctl.state.inflight import LATEST_RESHARD
from shardctl.state.plan import Phase
from shardctl.util import fanout
from shardctl.util.text import lsn_text

Conn = psycopg.Connection[Any]
HOLD_TIMEOUT = "5s"
"""How long fencing a primary may wait for its in-flight writes (``lock_timeout``)."""
STATEMENT_TIMEOUT = "15s"
ARCHIVE_TIMEOUT = 30.0


@dataclass(frozen=True)
class PointReport:
    """What ``backup --point`` did."""

    point: PointRecord
    archived_seconds: float
    fenced_seconds: float = 0.0
    """Of the write pause: fencing every primary and writing its point (one round)."""


def create(
    topology: Topology,
    credentials: Credentials,
    name: str,
    *,
    log: Callable[[str], None] = lambda _: None,
) -> PointReport:
    """Write the restore point ``name`` on every acting primary, with writes held."""
    check_name(name, "point")
    repository = Repository.of(topology)
    repository.prepare()
    if repository.point(name) is not None:
        raise UsageError(f"restore point {name!r} exists already in {repository.folder}")
    bases = _bases(repository, topology)
    primaries = topology.primaries()
    conns: dict[str, Conn] = {}
    locked: list[str] = []
    try:
        opened = fanout.gather(
            {p.shard: partial(_open, topology, credentials, p) for p in primaries}
        )
        for shard, result in opened.items():
            if isinstance(result, BaseException):
                raise result
            conns[shard] = result
        for primary in primaries:
            conn = conns[primary.shard]
            _refuse_during_reshard(conn, primary)
            row = conn.execute(locks.TRY_SESSION_LOCK, (locks.ROLE_CHANGE_LOCK,)).fetchone()
            if row is None or not row[0]:
                raise CheckFailed(
                    f"{primary.shard}: a switchover of {primary.name} is running; "
                    "try the point again when it is done"
                )
            locked.append(primary.shard)
        record = _catalog(conns)
        log("holding writes on every primary")
        started = time.monotonic()
        points: dict[str, tuple[int, int]] = {}
        try:
            # One round per primary, not two: each fenced, then its point at once. A shard
            # fenced and pointed early commits nothing until every point is written (the fence
            # is lifted only after), so each point is still its shard at the moment the last
            # point was written: the same moment on every shard.
            points = _all(conns, lambda shard, conn: _hold_and_point(conn, shard, name))
        finally:
            fenced = time.monotonic() - started
            _all(conns, lambda _shard, conn: fence.take_back(conn, fence.ROLE_CHANGE))
            pause = time.monotonic() - started
        log(f"writes held for {pause * 1000:.0f} ms; waiting for the archive")
        waited = _all(
            conns,
            lambda shard, conn: archiving.wait_archived(
                conn, points[shard][0], shard, ARCHIVE_TIMEOUT
            ),
        )
    finally:
        for shard in locked:
            with contextlib.suppress(psycopg.Error):
                conns[shard].execute(locks.RELEASE_SESSION_LOCK, (locks.ROLE_CHANGE_LOCK,))
        for conn in conns.values():
            conn.close()
    point = PointRecord(
        name=name,
        cluster=topology.cluster,
        created=now(),
        epoch=record.epoch,
        primaries={p.shard: p.name for p in primaries},
        shards={
            shard: ShardPoint(lsn=lsn_text(lsn), timeline=timeline, backup=bases[shard])
            for shard, (lsn, timeline) in points.items()
        },
        write_pause=pause,
    )
    repository.write_point(point)
    return PointReport(point, max(waited.values(), default=0.0), fenced)


def _bases(repository: Repository, topology: Topology) -> dict[str, str]:
    """The base backup each shard restores from now: the newest complete one holding it, or
    the one the cluster was last restored from."""
    found: dict[str, str] = {}
    for record in repository.complete_backups():
        for shard in record.shards:
            found[shard] = record.name
    missing = [s.name for s in topology.spec.shards if s.name not in found]
    if missing:
        raise CheckFailed(
            f"no complete base backup of {', '.join(missing)} yet: run `shardctl backup` "
            "(it ends with a point of its own)"
        )
    return found


def _open(topology: Topology, credentials: Credentials, primary: Node) -> Conn:
    conn = pg.connect(primary, credentials, topology.spec.database, local_commit=True)
    conn.execute(f"SET lock_timeout = '{HOLD_TIMEOUT}'")
    conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    return conn


def _all(conns: dict[str, Conn], work: Callable[[str, Conn], Any]) -> dict[str, Any]:
    """``work`` on every primary at once; the first error raised, once all are done."""
    results = fanout.gather({shard: partial(work, shard, conn) for shard, conn in conns.items()})
    for shard, result in results.items():
        if isinstance(result, ShardctlError):
            raise result
        if isinstance(result, psycopg.Error):
            raise CheckFailed(f"{shard}: {pg.first_line(result)}; no point was made")
        if isinstance(result, BaseException):
            raise result
    return dict(results)


def _refuse_during_reshard(conn: Conn, primary: Node) -> None:
    exists = conn.execute("SELECT pg_catalog.to_regclass('shardctl.reshard') IS NOT NULL")
    row = exists.fetchone()
    if row is None or not row[0]:
        return
    row = conn.execute(LATEST_RESHARD).fetchone()
    if row is not None and str(row[1]) not in (Phase.DONE, Phase.ABORTED):
        raise CheckFailed(
            f"reshard {row[0]} is in flight (phase {row[1]}): a restore point is refused "
            "until `shardctl rebalance --resume` or `--abort` finishes it"
        )


def _catalog(conns: dict[str, Conn]) -> catalog.RingRecord:
    records = [catalog.read_current(conn) for conn in conns.values()]
    found = [r for r in records if r is not None]
    if not found:
        raise CheckFailed("no ring catalog on any primary: run `shardctl up`")
    return max(found, key=lambda r: r.epoch)


def _hold(conn: Conn, shard: str) -> None:
    """Refuse every write to the sharded tables here; in-flight writers finish first."""
    whole_circle = Move(0, SPACE, shard, shard)
    fence.give_away(conn, fence.ROLE_CHANGE, [whole_circle], fence.RangeState.FENCED)


def _hold_and_point(conn: Conn, shard: str, name: str) -> tuple[int, int]:
    """Hold writes here and write the point, in the fence's own transaction: its LSN and
    timeline. Once the fence has locked the sharded tables (every in-flight write finished
    first), no write to them commits here until that transaction does, and from then on the
    fence refuses them: the point sees every write before the fence and none after."""
    with pg.bookkeeping(conn):
        _hold(conn, shard)
        return _restore_point(conn, name)


def _restore_point(conn: Conn, name: str) -> tuple[int, int]:
    """The point's LSN and timeline on this primary."""
    row = conn.execute(
        "SELECT pg_catalog.pg_wal_lsn_diff(l, '0/0')::bigint, pg_catalog.pg_walfile_name(l) "
        "FROM pg_catalog.pg_create_restore_point(%s) AS l",
        (name,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(str(row[1])[:8], 16)
