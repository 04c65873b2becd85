"""What happened to the cluster, when, and by whom: ``shardctl history``.

Two sources, both in schema ``shardctl`` on the primaries:

- ``shardctl.reshard``, one row per reshard (plan, phase, report, who started it and when),
  written by the coordinator on every primary: reshards, and the shards that joined or left
  the ring through them;
- ``shardctl.history``, one row per role change (switchover or failover, manual or automatic),
  written here on the shard's new primary when the change ends, whether it succeeded or not.

``shardctl.ring`` gives the cluster's creation (its first epoch). A shard's events live on that
shard's primary, so :func:`read` asks every primary and merges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable

DDL = """
CREATE SCHEMA IF NOT EXISTS shardctl;
CREATE TABLE IF NOT EXISTS shardctl.history (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text NOT NULL,
    shard          text NOT NULL,
    detail         text NOT NULL,
    by             text NOT NULL DEFAULT current_setting('application_name'),
    mode           text NOT NULL DEFAULT 'manual',
    seconds        double precision,
    write_pause_ms double precision,
    outcome        text NOT NULL
);
COMMENT ON TABLE shardctl.history IS 'shardctl role changes, for shardctl history';
"""

SWITCHOVER = "switchover"
FAILOVER = "failover"
RESHARD = "reshard"
CREATED = "created"


@dataclass(frozen=True)
class Event:
    """One thing that happened: a role change, a reshard, the cluster's creation."""

    at: datetime
    kind: str
    detail: str
    by: str = "-"
    mode: str = "manual"
    seconds: float | None = None
    write_pause_ms: float | None = None
    outcome: str = "done"
    shard: str | None = None


def record(
    node: Node,
    credentials: Credentials,
    dbname: str,
    event: Event,
) -> None:
    """Store a role change on ``node`` (the shard's primary now); never raises for a node that
    does not answer: history must not turn a finished role change into a failure."""
    try:
        with pg.connect(node, credentials, dbname, local_commit=True) as conn:
            conn.execute(DDL)
            conn.execute(
                "INSERT INTO shardctl.history "
                "(at, kind, shard, detail, mode, seconds, write_pause_ms, outcome) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    event.at,
                    event.kind,
                    event.shard or "",
                    event.detail,
                    event.mode,
                    event.seconds,
                    event.write_pause_ms,
                    event.outcome,
                ),
            )
    except (DatabaseUnavailable, psycopg.Error):
        return


def read(topology: Topology, credentials: Credentials) -> list[Event]:
    """Every recorded event on the acting primaries, newest first (reshards once each)."""
    events: list[Event] = []
    reshards: dict[int, tuple[datetime, Event]] = {}
    created: datetime | None = None
    answered = 0
    for primary in topology.primaries():
        try:
            with pg.connect(primary, credentials, topology.spec.database) as conn:
                found = _read_one(conn)
        except DatabaseUnavailable:
            continue
        answered += 1
        events += found.role_changes
        for reshard_id, updated, event in found.reshards:
            if reshard_id not in reshards or reshards[reshard_id][0] < updated:
                reshards[reshard_id] = (updated, event)
        if found.created is not None and (created is None or found.created < created):
            created = found.created
    if answered == 0:
        raise DatabaseUnavailable(f"no primary of cluster {topology.cluster} answered")
    events += [event for _, event in reshards.values()]
    if created is not None:
        events.append(Event(at=created, kind=CREATED, detail="ring epoch 1 written by `up`"))
    return sorted(events, key=lambda e: e.at, reverse=True)


@dataclass
class _Found:
    role_changes: list[Event]
    reshards: list[tuple[int, datetime, Event]]
    created: datetime | None


def _read_one(conn: psycopg.Connection[Any]) -> _Found:
    found = _Found([], [], None)
    tables = conn.execute(
        "SELECT pg_catalog.to_regclass('shardctl.history') IS NOT NULL,"
        " pg_catalog.to_regclass('shardctl.reshard') IS NOT NULL,"
        " pg_catalog.to_regclass('shardctl.ring') IS NOT NULL"
    ).fetchone()
    assert tables is not None
    has_history, has_reshard, has_ring = tables
    if has_history:
        rows = conn.execute(
            "SELECT at, kind, shard, detail, by, mode, seconds, write_pause_ms, outcome "
            "FROM shardctl.history"
        ).fetchall()
        found.role_changes = [
            Event(
                at=at,
                kind=kind,
                shard=shard,
                detail=detail,
                by=by,
                mode=mode,
                seconds=seconds,
                write_pause_ms=pause,
                outcome=outcome,
            )
            for at, kind, shard, detail, by, mode, seconds, pause, outcome in rows
        ]
    if has_reshard:
        rows = conn.execute(
            "SELECT id, phase, plan, report, started_at, started_by, updated_at "
            "FROM shardctl.reshard"
        ).fetchall()
        found.reshards = [_reshard(row) for row in rows]
    if has_ring:
        row = conn.execute("SELECT min(created_at) FROM shardctl.ring").fetchone()
        found.created = row[0] if row is not None else None
    return found


def _reshard(row: Sequence[Any]) -> tuple[int, datetime, Event]:
    reshard_id, phase, plan, report, started_at, started_by, updated_at = row
    plan = plan if isinstance(plan, dict) else json.loads(plan)
    report = report if isinstance(report, dict) else json.loads(report or "{}")
    old = list(plan.get("old", {}).get("nodes", []))
    new = list(plan.get("new", {}).get("nodes", []))
    leaving = list(plan.get("leaving", []))
    joined = [n for n in new if n not in old]
    parts = [f"reshard {reshard_id}: {', '.join(old)} -> {', '.join(new)}"]
    if joined:
        parts.append(f"added {', '.join(joined)}")
    if leaving:
        parts.append(f"removing {', '.join(leaving)}")
    finished = phase in ("done", "aborted")
    seconds = (updated_at - started_at).total_seconds() if finished else None
    event = Event(
        at=started_at,
        kind=RESHARD,
        detail="; ".join(parts),
        by=str(started_by).removeprefix("shardctl "),
        seconds=seconds,
        write_pause_ms=float(report.get("write_pause_ms", 0.0)) if phase == "done" else None,
        outcome=phase if finished else f"in progress ({phase})",
    )
    return int(reshard_id), updated_at, event
