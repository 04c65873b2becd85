"""``backup --point NAME``: a named restore point that is the same moment on every shard.

With the role-change lock (:data:`~shardctl.state.locks.ROLE_CHANGE_LOCK`) held on every acting
primary (so no switchover runs meanwhile), writes are held on all of them -- each takes the
locks the fence takes when it lists a range (every sharded table ``SHARE ROW EXCLUSIVE``:
in-flight writes finish first, new ones wait) -- and ``pg_create_restore_point`` runs on each
in that transaction (all primaries at once, one round trip each); the transactions, and so the
locks, end only once every point is written. A shard commits nothing from its point until the
last point is written, so each point is its shard as of that last moment, the same on every
shard:

- every write acknowledged before the command started is before the point on its shard;
- every write started after the command returned is after it, on every shard;
- a write whose transaction spans the pause lands on one side on every shard, never half.

**The pause is two round trips.** Connections, the role-change locks and the checks are done
before any write is held, and one thread per primary is already running when the hold starts.
Each thread sends begin, the locks and its point in one pipeline (one round trip), waits at a
barrier until every thread's point is written, then commits (one round trip): every primary's
writes go on at the same moment, none after another's. Writers wait instead of being refused
(the fence's ``FENCED`` refuses them, and its listing and lifting re-arm the guard triggers, a
catalog change and a WAL flush each: that was most of the pause under load). A shardctl that
dies while holding ends its sessions, and with them the locks (a session idle in its
transaction longer than :data:`STATEMENT_TIMEOUT` is ended by its server): nothing is left to
lift.

The point is recorded (``points/NAME.json``) only once every shard's archive holds its LSN.
The transaction that holds writes writes nothing but the point (no transaction id), so a
restored cluster holds nothing. A point is refused while a reshard is in flight.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import CheckFailed, ShardctlError, UsageError
from shardctl.ops.backup import archiving
from shardctl.ops.backup.repository import (
    BackupRecord,
    PointRecord,
    Repository,
    ShardPoint,
    check_name,
    now,
)
from shardctl.state import catalog, locks
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
class Held:
    """One primary's part of the write pause, in seconds from the moment the hold started."""

    pointed: float
    """Its writes held and its point written (the round trip, client side)."""
    lifted: float
    """Its writes going on again (committed), after every primary's point."""
    hold_server: float
    """Of ``pointed``, the server taking the locks (waiting for in-flight writes)."""
    point_server: float
    """Of ``pointed``, the server writing the point."""


@dataclass(frozen=True)
class PointReport:
    """What ``backup --point`` did."""

    point: PointRecord
    archived_seconds: float
    fenced_seconds: float = 0.0
    """Of the write pause: holding writes on every primary and writing its point (one round)."""
    prepared_seconds: float = 0.0
    """Before the pause: connecting, the role-change locks, the checks (no write held)."""
    shards: dict[str, Held] = field(default_factory=dict)
    """Where each primary's part of the pause went."""


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
    complete = repository.complete_backups()
    _bases(repository, topology, complete)  # none at all: said before writes are held
    primaries = topology.primaries()
    conns: dict[str, Conn] = {}
    locked: list[str] = []
    opening = time.monotonic()
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
        prepared = time.monotonic() - opening
        log("holding writes on every primary")
        held = _hold_all(conns, name)
        pause = max(h.lifted for h in held.values())
        fenced = max(h.pointed for h in held.values())
        points = {shard: h.at for shard, h in held.items()}
        log(f"writes held for {pause * 1000:.0f} ms; waiting for the archive")
        waited = _all(
            conns,
            lambda shard, conn: archiving.wait_archived(
                conn, points[shard][0], shard, ARCHIVE_TIMEOUT
            ),
        )
        # Chosen once the archive holds the point: pg_receivewal stores a timeline's history
        # file before its WAL, so a failover's new timeline is known to the archive by now.
        bases = _bases(repository, topology, complete, {s: at[1] for s, at in points.items()})
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
    return PointReport(
        point,
        max(waited.values(), default=0.0),
        fenced,
        prepared,
        {shard: h.held for shard, h in held.items()},
    )


def _bases(
    repository: Repository,
    topology: Topology,
    complete: list[BackupRecord],
    timelines: dict[str, int] | None = None,
) -> dict[str, str]:
    """The base backup each shard restores from now: the newest of the ``complete`` ones
    holding it that recovery on the shard's current timeline (``timelines``; None: any) can
    start from. A copy taken on WAL that a failover then lost cannot be (see
    :meth:`Histories.holds`)."""
    found: dict[str, str] = {}
    lost: dict[str, str] = {}
    for shard in [s.name for s in topology.spec.shards]:
        holding = [r for r in complete if shard in r.shards]
        timeline = timelines[shard] if timelines is not None else None
        if timeline is not None and holding and holding[-1].shards[shard].timeline != timeline:
            histories = repository.history(shard)  # read only when the timeline moved on
            on = [r for r in holding if histories.holds(r.shards[shard], timeline)]
            if not on:
                lost[shard] = holding[-1].name
            holding = on
        if holding:
            found[shard] = holding[-1].name
    missing = [s.name for s in topology.spec.shards if s.name not in found and s.name not in lost]
    if missing:
        raise CheckFailed(
            f"no complete base backup of {', '.join(missing)} yet: run `shardctl backup` "
            "(it ends with a point of its own)"
        )
    if lost:
        shards = ", ".join(f"{shard} (newest: {name})" for shard, name in sorted(lost.items()))
        raise CheckFailed(
            f"no complete base backup of {shards} on its current timeline's history: they "
            "hold WAL a failover lost; run `shardctl backup` (it ends with a point of its own)"
        )
    return found


def _open(topology: Topology, credentials: Credentials, primary: Node) -> Conn:
    conn = pg.connect(primary, credentials, topology.spec.database, local_commit=True)
    conn.execute(f"SET lock_timeout = '{HOLD_TIMEOUT}'")
    conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
    # A shardctl stuck while holding writes: the server ends the session, and the locks.
    conn.execute(f"SET idle_in_transaction_session_timeout = '{STATEMENT_TIMEOUT}'")
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


HOLD = """DO $hold$ DECLARE g record; BEGIN
    FOR g IN SELECT tbl FROM shardctl.guarded
              WHERE EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = tbl) ORDER BY tbl LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', g.tbl);
    END LOOP;
END $hold$"""
"""Every sharded table locked against writes, as the fence locks them (``shardctl.lock_guarded``,
the same tables in the same order): in-flight writes finish first, new ones wait."""
POINT = (
    "SELECT pg_catalog.pg_wal_lsn_diff(l, '0/0')::bigint, pg_catalog.pg_walfile_name(l), "
    "extract(epoch FROM pg_catalog.statement_timestamp() "
    "- pg_catalog.transaction_timestamp())::float8, "
    "extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp())::float8 "
    "FROM pg_catalog.pg_create_restore_point(%s) AS l"
)
"""(name): the point's LSN and WAL file, then how long the server took to hold writes (from
the transaction's start to this statement's) and to write the point."""
BARRIER_TIMEOUT = 30.0
"""How long a primary holding writes waits for the others' points before letting go anyway."""


@dataclass(frozen=True)
class _Shard:
    at: tuple[int, int]
    """The point's LSN and timeline."""
    held: Held

    @property
    def pointed(self) -> float:
        return self.held.pointed

    @property
    def lifted(self) -> float:
        return self.held.lifted


def _hold_all(conns: dict[str, Conn], name: str) -> dict[str, _Shard]:
    """Hold writes on every primary and write its point, then let them go on everywhere once
    all points are written; each primary's point and timings. One thread per primary, all
    running before the hold starts: each holds and points in one round trip, waits for the
    others at a barrier, and commits at once. A failure anywhere breaks the barrier: every
    primary lets go, and the failure is raised (not the broken barrier it caused elsewhere)."""
    start: list[float] = []
    ready = threading.Barrier(len(conns), action=lambda: start.append(time.monotonic()))
    pointed = threading.Barrier(len(conns))

    def one(shard: str, conn: Conn) -> _Shard:
        ready.wait(BARRIER_TIMEOUT)
        try:
            at, hold_server, point_server = _hold_and_point(conn, name)
            written = time.monotonic()
            pointed.wait(BARRIER_TIMEOUT)  # writes go on only once every point is written
        except BaseException:
            pointed.abort()  # the others let go at once
            _let_go(conn)
            raise
        conn.execute("COMMIT")
        lifted = time.monotonic()
        return _Shard(at, Held(written - start[0], lifted - start[0], hold_server, point_server))

    results = fanout.gather({shard: partial(one, shard, conn) for shard, conn in conns.items()})
    failed = [(s, r) for s, r in results.items() if isinstance(r, BaseException)]
    first = [f for f in failed if not isinstance(f[1], threading.BrokenBarrierError)] or failed
    if first:
        shard, error = first[0]
        if isinstance(error, psycopg.Error):
            raise CheckFailed(f"{shard}: {pg.first_line(error)}; no point was made")
        if isinstance(error, threading.BrokenBarrierError):
            raise CheckFailed(f"{shard}: the other primaries did not write their points in time")
        raise error
    return {s: r for s, r in results.items() if not isinstance(r, BaseException)}


def _hold_and_point(conn: Conn, name: str) -> tuple[tuple[int, int], float, float]:
    """Hold writes here and write the point, in one round trip (a pipeline: begin, the locks,
    the point), leaving the transaction open (the locks held): the point's LSN and timeline,
    and the server's seconds holding and pointing. Once the sharded tables are locked (every
    in-flight write finished first), no write to them commits here until this transaction
    ends: the point sees every write before the hold and none after."""
    with conn.pipeline():
        conn.execute("BEGIN")
        conn.execute(HOLD)
        written = conn.execute(POINT, (name,))
    row = written.fetchone()
    assert row is not None
    lsn, walfile, holding, pointing = row
    return (int(str(lsn)), int(str(walfile)[:8], 16)), float(str(holding)), float(str(pointing))


def _let_go(conn: Conn) -> None:
    """After a failure: roll back the transaction holding writes here, if one is open (the
    failure is what to report, not a connection that cannot roll back)."""
    if conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE:
        return
    with contextlib.suppress(psycopg.Error):
        conn.execute("ROLLBACK")
