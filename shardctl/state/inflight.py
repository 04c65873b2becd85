"""What is in flight in a cluster: an unfinished reshard, a role-change fence left on a primary.

The reshard's record lives here too: its row of ``shardctl.reshard`` on every primary (plan,
phase, whether the ring flipped, the report so far) and the chunks copied (``shardctl.copied``),
with the statements that read and write them.

The one place that decides which recorded reshard is current (:func:`current`) and whether it
can still be aborted (:func:`may_abort`): the coordinator (:mod:`shardctl.ops.reshard`) acts on
both answers, and ``status`` suggests the command they allow.

Reading what is in flight (:func:`in_flight`) changes nothing: one connection per acting
primary, asked whether the tables exist before reading them (a failed query would log an ERROR
on the server). ``status``, ``rebalance --plan``, ``verify-replication`` and ``distribution``
show these facts, each with the exact command that finishes or undoes the operation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.state import locks

if TYPE_CHECKING:  # a reshard's plan is read when there is one: status mostly finds none
    from shardctl.state.plan import Phase, Plan

Conn = psycopg.Connection[Any]

RESHARD = "reshard"
ROLE_CHANGE = "role-change"

# The reshard's record: its row of shardctl.reshard, and the chunks copied (shardctl.copied).
# no parameters (a role change refuses to start while this is unfinished)
LATEST_RESHARD = (
    "SELECT id, phase, flipped, plan, report FROM shardctl.reshard ORDER BY id DESC LIMIT 1"
)
# (id, phase, flipped, plan as json, report as json)
RECORD_RESHARD = (
    "INSERT INTO shardctl.reshard (id, phase, flipped, plan, report) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
    "phase = EXCLUDED.phase, flipped = EXCLUDED.flipped, "
    "report = EXCLUDED.report, updated_at = now()"
)
# (operation, chunk)
# (operation, chunks): those of the chunks recorded as copied
CHUNKS_COPIED = "SELECT chunk FROM shardctl.copied WHERE reshard_id = %s AND chunk = ANY(%s)"
# (operation, chunk, rows, bytes)
RECORD_CHUNK = (
    "INSERT INTO shardctl.copied (reshard_id, chunk, rows, bytes) VALUES (%s, %s, %s, %s)"
)
# (operation)
FORGET_CHUNKS = "DELETE FROM shardctl.copied WHERE reshard_id = %s"

_EXISTS = "SELECT pg_catalog.to_regclass(%s) IS NOT NULL"
_LATEST = "SELECT to_jsonb(r) FROM shardctl.reshard r ORDER BY r.id DESC LIMIT 1"
_COPIED = "SELECT chunk, rows FROM shardctl.copied WHERE reshard_id = %s"
_ROLE_FENCE = "SELECT count(*) FROM shardctl.moving WHERE reshard_id = %s"


@dataclass(frozen=True)
class Operation:
    """One operation in progress, with the command that finishes (or undoes) it."""

    kind: str
    """``reshard`` or ``role-change``."""
    id: int | None
    phase: str
    shards: tuple[str, ...]
    """The shards it involves (a reshard's sources and targets, the fenced shard)."""
    command: str
    """The exact command to run next, e.g. ``shardctl rebalance --resume``."""
    ranges_done: int | None = None
    ranges_total: int | None = None
    rows_copied: int | None = None
    rows_total: int | None = None
    started_at: datetime | None = None
    started_by: str | None = None
    updated_at: datetime | None = None

    @property
    def summary(self) -> str:
        """The operation in one line for people."""
        if self.kind == ROLE_CHANGE:
            return (
                f"role change on {', '.join(self.shards)}: writes are fenced on its primary "
                f"(a switchover running, or one that stopped: `{self.command}` finishes it)"
            )
        parts = [f"reshard {self.id}: {self.phase}"]
        if self.ranges_total is not None:
            parts.append(f"ranges {self.ranges_done or 0:,}/{self.ranges_total:,}")
        if self.rows_total is not None:
            parts.append(f"rows {self.rows_copied or 0:,}/{self.rows_total:,}")
        return ", ".join(parts)

    @property
    def started(self) -> str | None:
        """``started 2026-11-21 23:51 by alice@laptop`` (local time), None when not recorded."""
        if self.started_at is None:
            return None
        when = self.started_at.astimezone().strftime("%Y-%m-%d %H:%M")
        return f"started {when}" + (f" by {self.started_by}" if self.started_by else "")


@dataclass(frozen=True)
class ReshardRecord:
    """A reshard as one primary recorded it (its row of ``shardctl.reshard``)."""

    id: int
    phase: Phase
    flipped: bool
    """Whether the run recorded that it wrote the new ring epoch (the catalog may know first)."""
    plan: Plan
    report: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    started_by: str | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> ReshardRecord:
        """The record from its row as JSON (``to_jsonb``)."""
        from shardctl.state.plan import Phase, Plan

        return cls(
            id=int(row["id"]),
            phase=Phase(row["phase"]),
            flipped=bool(row.get("flipped")),
            plan=Plan.from_json(row["plan"]),
            report=dict(row.get("report") or {}),
            started_at=_timestamp(row.get("started_at")),
            started_by=str(row.get("started_by") or "").removeprefix("shardctl ") or None,
            updated_at=_timestamp(row.get("updated_at")),
        )


def current(records: Iterable[ReshardRecord]) -> ReshardRecord | None:
    """The reshard the cluster is doing (or did last), among every primary's latest record.

    The highest id wins, then the most advanced phase: each phase is recorded on every primary
    only after its work is done, so a crash between two of those writes leaves some primaries
    one phase behind, never ahead. ``aborted`` ranks above every phase.
    """
    records = list(records)
    if not records:  # no reshard ever ran: nothing to rank (and no plan module to import)
        return None
    from shardctl.state.plan import FORWARD, Phase

    def rank(record: ReshardRecord) -> tuple[int, int]:
        phase = record.phase
        return record.id, len(FORWARD) if phase is Phase.ABORTED else FORWARD.index(phase)

    return max(records, key=rank, default=None)


def may_abort(phase: Phase, flipped: bool) -> bool:
    """Whether a reshard can be undone: until the new ring epoch is written, whatever the phase
    (a cut-over that stopped before the flip too); after that only ``--resume`` finishes it."""
    from shardctl.state.plan import finished

    return not finished(phase) and not flipped


def latest(conn: Conn) -> ReshardRecord | None:
    """The latest reshard recorded on the primary ``conn`` reaches; None when there is none
    (or no ``shardctl.reshard`` table yet)."""
    if not _exists(conn, "reshard"):
        return None
    row = conn.execute(_LATEST).fetchone()
    return None if row is None else ReshardRecord.from_json(row[0])


def _exists(conn: Conn, table: str) -> bool:
    row = conn.execute(_EXISTS, (f"shardctl.{table}",)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class _Seen:
    """What one primary holds."""

    latest: ReshardRecord | None
    copied: dict[str, int]
    role_fence: bool


def _look(conn: Conn) -> _Seen:
    record = latest(conn)
    copied: dict[str, int] = {}
    if record is not None and _exists(conn, "copied"):
        rows = conn.execute(_COPIED, (record.id,)).fetchall()
        copied = {str(chunk): int(n) for chunk, n in rows}
    fenced = False
    if _exists(conn, "moving"):
        row = conn.execute(_ROLE_FENCE, (locks.ROLE_CHANGE,)).fetchone()
        fenced = bool(row and row[0])
    return _Seen(record, copied, fenced)


def _timestamp(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def reshard_operation(record: ReshardRecord, copied: dict[str, int]) -> Operation | None:
    """The reshard ``record`` describes, None when it is finished; ``copied`` is rows per
    chunk recorded as copied on the targets."""
    from shardctl.state.plan import FORWARD, Phase, finished

    phase = record.phase
    if finished(phase):
        return None
    plan = record.plan
    by_move: dict[int, list[str]] = {}
    for chunk in plan.chunks:
        by_move.setdefault(chunk.move, []).append(chunk.id)
    past_copy = FORWARD.index(phase) > FORWARD.index(Phase.COPYING)
    done = sum(past_copy or all(c in copied for c in ids) for ids in by_move.values())
    rows = max(sum(copied.values()), int(record.report.get("rows_copied") or 0))
    command = "shardctl rebalance --resume" + (
        " (or --abort)" if may_abort(phase, record.flipped) else ""
    )
    return Operation(
        kind=RESHARD,
        id=plan.id,
        phase=phase.value,
        shards=tuple(dict.fromkeys([*plan.sources(), *plan.targets()])),
        command=command,
        ranges_done=done,
        ranges_total=len(plan.moves),
        rows_copied=rows,
        rows_total=plan.rows,
        started_at=record.started_at,
        started_by=record.started_by,
        updated_at=record.updated_at,
    )


def in_flight(topology: Topology, credentials: Credentials) -> list[Operation]:
    """Every operation in progress, read from the acting primaries that answer.

    DatabaseUnavailable only when no primary answers.
    """
    results = pg.on_nodes(
        topology,
        credentials,
        topology.primaries(),
        _look,
        timeout=3.0,
        strict=False,
        doing="reading the operations in progress",
    )
    seen = {name: r for name, r in results.items() if isinstance(r, _Seen)}
    if not seen:
        raise DatabaseUnavailable("no primary answered: cannot tell what is in flight")
    operations: list[Operation] = []
    best = current(s.latest for s in seen.values() if s.latest is not None)
    if best is not None:
        copied: dict[str, int] = {}
        for s in seen.values():
            if s.latest is not None and s.latest.id == best.id:
                copied.update(s.copied)
        reshard = reshard_operation(best, copied)
        if reshard is not None:
            operations.append(reshard)
    shard_of = {node.name: node.shard for node in topology.primaries()}
    for name, s in seen.items():
        if s.role_fence:
            operations.append(
                Operation(
                    kind=ROLE_CHANGE,
                    id=None,
                    phase="fenced",
                    shards=(shard_of[name],),
                    command="shardctl up",
                )
            )
    return operations
