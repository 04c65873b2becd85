"""What ``shardctl monitor`` keeps in the cluster: its heartbeat, its failovers, its lock.

Objects, in schema ``shardctl`` of the topology's database on every acting primary (replicas
hold a copy, like the ring catalog)::

    shardctl.monitor     one row per monitor process (id = host:pid:start), its last
                         heartbeat: ``status`` shows it, ``verify-replication`` fails when a
                         shard is ``automatic`` and no monitor was seen for too long
    shardctl.failovers   one row per automatic failover, keyed by the catalog epoch it wrote:
                         when, why, old -> new, the loss report (``status -o json``, history)

Every write here is shardctl's own bookkeeping: it commits with ``synchronous_commit = local``
so it never waits on a standby (a ``sync`` shard without one must not stop the monitor).

**The lock.** While it fails a shard over, a monitor holds the session advisory lock
``(MONITOR_LOCK, shard number)`` on *every* replica of the shard that runs. Two monitors
promoting one shard need the same lock on the same servers: one of them gets none of it.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.state.locks import CATALOG_INSTALL_LOCK, MONITOR_LOCK, ROLE_CHANGE, XACT_LOCK

DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS shardctl",
    """CREATE TABLE IF NOT EXISTS shardctl.monitor (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
)""",
    """CREATE TABLE IF NOT EXISTS shardctl.failovers (
    epoch         bigint PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    shard         text NOT NULL,
    old_primary   text NOT NULL,
    new_primary   text NOT NULL,
    reason        text NOT NULL,
    possibly_lost text NOT NULL,
    by            text NOT NULL
)""",
    "COMMENT ON TABLE shardctl.monitor IS 'shardctl monitor heartbeats; do not edit by hand'",
    "COMMENT ON TABLE shardctl.failovers IS "
    "'automatic failovers by shardctl monitor, by catalog epoch; do not edit by hand'",
)

FORGET_AFTER = "7 days"
"""Heartbeats of monitors not seen for this long are deleted by the next beat."""

_LOCAL = "SET LOCAL synchronous_commit = local"
_EXISTS = "SELECT pg_catalog.to_regclass('shardctl.failovers') IS NOT NULL"


def lock_key(shard: str) -> tuple[int, int]:
    """The advisory lock (two int4 keys) a monitor holds on a shard's replicas."""
    number = zlib.crc32(shard.encode()) & 0x7FFF_FFFF
    return MONITOR_LOCK, number


TRY_LOCK = "SELECT pg_catalog.pg_try_advisory_lock(%s, %s)"
UNLOCK = "SELECT pg_catalog.pg_advisory_unlock(%s, %s)"


@dataclass(frozen=True)
class Beat:
    """One monitor's last heartbeat as a primary holds it."""

    id: str
    host: str
    started_at: datetime
    seen_at: datetime
    age_seconds: float
    """Seconds since ``seen_at`` by the server's clock."""


@dataclass(frozen=True)
class Failover:
    """One automatic failover as recorded."""

    epoch: int
    at: datetime
    shard: str
    old_primary: str
    new_primary: str
    reason: str
    possibly_lost: str
    by: str


def installed(conn: psycopg.Connection[Any]) -> bool:
    """Whether this node has the monitor's tables."""
    row = conn.execute(_EXISTS).fetchone()
    return bool(row and row[0])


def install(conn: psycopg.Connection[Any]) -> None:
    """Create the monitor's tables if missing (idempotent; primaries only)."""
    if installed(conn):
        return
    with conn.transaction():
        conn.execute(_LOCAL)
        conn.execute(XACT_LOCK, (CATALOG_INSTALL_LOCK,))
        for statement in DDL:
            conn.execute(statement)


def beat(conn: psycopg.Connection[Any], monitor_id: str, host: str, started_at: datetime) -> None:
    """Record that monitor ``monitor_id`` is alive now (on a primary)."""
    install(conn)
    with conn.transaction():
        conn.execute(_LOCAL)
        conn.execute(
            "INSERT INTO shardctl.monitor (id, host, started_at, seen_at) "
            "VALUES (%s, %s, %s, now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()",
            (monitor_id, host, started_at),
        )
        conn.execute(
            "DELETE FROM shardctl.monitor WHERE seen_at < now() - %s::interval", (FORGET_AFTER,)
        )


def read_beats(conn: psycopg.Connection[Any]) -> list[Beat]:
    """Every monitor heartbeat this node holds, the latest first (none: no table)."""
    if not installed(conn):
        return []
    rows = conn.execute(
        "SELECT id, host, started_at, seen_at,"
        " extract(epoch FROM now() - seen_at)::float8 "
        "FROM shardctl.monitor ORDER BY seen_at DESC"
    ).fetchall()
    return [Beat(str(a), str(b), c, d, max(0.0, float(e))) for a, b, c, d, e in rows]


def record_failover(conn: psycopg.Connection[Any], event: Failover) -> None:
    """Store one automatic failover (on a primary); idempotent by epoch."""
    install(conn)
    with conn.transaction():
        conn.execute(_LOCAL)
        conn.execute(
            "INSERT INTO shardctl.failovers "
            "(epoch, at, shard, old_primary, new_primary, reason, possibly_lost, by) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (epoch) DO NOTHING",
            (
                event.epoch,
                event.at,
                event.shard,
                event.old_primary,
                event.new_primary,
                event.reason,
                event.possibly_lost,
                event.by,
            ),
        )


def read_failovers(conn: psycopg.Connection[Any]) -> list[Failover]:
    """Every automatic failover this node holds, oldest first."""
    if not installed(conn):
        return []
    rows = conn.execute(
        "SELECT epoch, at, shard, old_primary, new_primary, reason, possibly_lost, by "
        "FROM shardctl.failovers ORDER BY epoch"
    ).fetchall()
    return [_failover(row) for row in rows]


def _failover(row: Sequence[Any]) -> Failover:
    epoch, at, shard, old, new, reason, lost, by = row
    return Failover(int(epoch), at, str(shard), str(old), str(new), str(reason), str(lost), str(by))


# ------------------------------------------------------------------ what the monitor probes


@dataclass(frozen=True)
class ReplicaLook:
    """What one replica of a failing shard says."""

    in_recovery: bool
    receive_lsn: int
    streaming: bool
    """Its WAL receiver streams right now (from the old primary: which is then alive)."""
    role_change_fenced: bool
    """It holds a switchover's fence row (replicated): a switchover is in flight."""
    reshard_phase: str | None
    """The latest reshard's phase as replicated here (None: none)."""


def look_at_replica(conn: psycopg.Connection[Any]) -> ReplicaLook:
    """Read a replica's replication position and the operations in flight it knows of."""
    row = conn.execute(
        "SELECT pg_catalog.pg_is_in_recovery(),"
        " COALESCE(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0'),"
        "          0)::bigint,"
        " EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming'),"
        " pg_catalog.to_regclass('shardctl.moving') IS NOT NULL,"
        " pg_catalog.to_regclass('shardctl.reshard') IS NOT NULL"
    ).fetchone()
    assert row is not None
    in_recovery, receive, streaming, has_moving, has_reshard = row
    fenced = False
    if has_moving:
        found = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM shardctl.moving WHERE reshard_id = %s)", (ROLE_CHANGE,)
        ).fetchone()
        fenced = bool(found and found[0])
    phase: str | None = None
    if has_reshard:
        latest = conn.execute("SELECT phase FROM shardctl.reshard ORDER BY id DESC LIMIT 1")
        got = latest.fetchone()
        phase = None if got is None else str(got[0])
    return ReplicaLook(bool(in_recovery), int(str(receive)), bool(streaming), fenced, phase)


def cutting_over(phase: str | None) -> bool:
    """Whether a reshard in ``phase`` is in (or at) its cut-over."""
    from shardctl.state.plan import Phase

    return phase == Phase.CUTTING_OVER.value


@dataclass(frozen=True)
class PrimaryLook:
    """What a shard's acting primary says when it answers the monitor's probe."""

    in_recovery: bool
    sync_standbys: tuple[str, ...]
    """Standbys (application_name) streaming as ``sync`` or ``quorum`` right now."""


def look_at_primary(conn: psycopg.Connection[Any]) -> PrimaryLook:
    """The monitor's probe of an acting primary: one short query."""
    row = conn.execute(
        "SELECT pg_catalog.pg_is_in_recovery(),"
        " COALESCE((SELECT array_agg(application_name::text ORDER BY application_name)"
        "  FROM pg_catalog.pg_stat_replication"
        "  WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum')), '{}')"
    ).fetchone()
    assert row is not None
    return PrimaryLook(bool(row[0]), tuple(str(n) for n in row[1]))


# ------------------------------------------------------------------ the whole cluster


@dataclass(frozen=True)
class View:
    """The monitor's records as the cluster holds them (``status``, ``verify-replication``)."""

    beats: tuple[Beat, ...]
    failovers: tuple[Failover, ...]
    read_from: str | None
    """The node they were read from (None: no node answered)."""

    @property
    def last_seen(self) -> float | None:
        """Seconds since any monitor's last heartbeat (None: never seen)."""
        return min((b.age_seconds for b in self.beats), default=None)


def read_view(topology: Topology, credentials: Credentials, *, timeout: float = 3.0) -> View:
    """Heartbeats and failover history from the first acting primary that answers (else any
    replica: they hold a copy)."""
    ordered = [*topology.primaries(), *(n for n in topology.nodes if n not in topology.primaries())]
    for node in ordered:
        try:
            with pg.connect(node, credentials, topology.spec.database, timeout=timeout) as conn:
                return View(tuple(read_beats(conn)), tuple(read_failovers(conn)), node.name)
        except (DatabaseUnavailable, psycopg.Error):
            continue
    return View((), (), None)
