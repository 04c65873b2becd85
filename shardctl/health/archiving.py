"""The archiving check: each acting primary's WAL reaches the backup repository.

On every primary of a topology with ``backup:``, one small WAL record is written
(``pg_logical_emit_message``, committed locally) and the backup node's slot
(:data:`~shardctl.config.constants.BACKUP_SLOT`) must confirm it stored it within the canary
timeout: the slot's position only moves once ``pg_receivewal`` has flushed the WAL into the
repository, so a stopped backup node, a read-only or full repository, or a missing slot all
fail it, naming the shard and the reason. An idle cluster is checked as well as a busy one.

:func:`archive_states` judges the same slot from facts already read (``status``, metrics: no
extra round trip): the WAL the primary holds that the repository does not yet, whether the
backup node streams, and, given when the repository's newest WAL file was written, the age of
that WAL while more waits (the RPO right now; 0 when everything is archived).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import psycopg

from shardctl.config.constants import BACKUP_SLOT, SEGMENT_BYTES
from shardctl.config.credentials import Credentials
from shardctl.config.schema import HealthSpec
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.health.checks import Check, failed, passed, skipped
from shardctl.health.facts import ClusterFacts
from shardctl.util import fanout
from shardctl.util.text import size_text
from shardctl.util.waiting import NotYet, wait_for

ARCHIVING = "archiving"

_EMIT = (
    "SELECT pg_catalog.pg_wal_lsn_diff("
    "pg_catalog.pg_logical_emit_message(true, 'shardctl', 'archive check'), '0/0')::bigint"
)
_SLOT = (
    "SELECT pg_catalog.pg_wal_lsn_diff(restart_lsn, '0/0')::bigint, active "
    "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s"
)


FULL_BELOW = 2 * SEGMENT_BYTES
"""A repository with less room than two WAL segments is called full when archiving fails."""

FreeSpace = Callable[[], int | None]
"""Reads the space left in the repository (``None``: unknown). Like :data:`RepositoryReader`,
it lives with the repository and is handed in by the layer above."""


def archiving_checks(
    topology: Topology,
    credentials: Credentials | None,
    limits: HealthSpec,
    free_space: FreeSpace | None = None,
) -> list[Check]:
    """One archiving check per acting primary; none without ``backup:`` in the topology. A
    failure says the repository is full when ``free_space`` finds it so."""
    if topology.spec.backup is None:
        return []
    primaries = topology.primaries()
    if credentials is None:
        return [skipped(p, ARCHIVING, "no node answered") for p in primaries]
    results = fanout.gather(
        {p.name: partial(_check, p, credentials, limits.canary_timeout) for p in primaries}
    )
    found: list[Check] = []
    full: list[int | None] = []  # read once, and only when a check failed
    for primary in primaries:
        result = results[primary.name]
        if isinstance(result, Check) and not result.ok and free_space is not None:
            if not full:
                full.append(free_space())
            free = full[0]
            if free is not None and free < FULL_BELOW:
                result = failed(primary, ARCHIVING, full_problem(primary.shard, free))
        if isinstance(result, Check):
            found.append(result)
        elif isinstance(result, DatabaseUnavailable | psycopg.Error):
            found.append(skipped(primary, ARCHIVING, pg.failure_reason(result)))
        elif isinstance(result, BaseException):
            raise result
    return found


def full_problem(shard: str, free: int | None) -> str:
    """What a full repository does to a shard's archiving, and what to do."""
    return (
        f"{shard}: archiving stuck: the backup repository is full ({size_text(free)} free); "
        "free space or lower `backup.retention`"
    )


def _check(primary: Node, credentials: Credentials, timeout: float) -> Check:
    started = time.monotonic()
    with pg.connect(primary, credentials, "postgres", local_commit=True, timeout=timeout) as conn:
        row = conn.execute(_EMIT).fetchone()
        assert row is not None
        wanted = int(str(row[0]))
        seen: list[tuple[int | None, bool]] = [(None, False)]

        def probe() -> None:
            slot = conn.execute(_SLOT, (BACKUP_SLOT,)).fetchone()
            at = None if slot is None or slot[0] is None else int(str(slot[0]))
            seen[0] = (at, slot is not None and bool(slot[1]))
            if at is None or at < wanted:
                raise NotYet("behind")

        on_timeout: Callable[[str], Exception] = NotYet
        try:
            wait_for(
                probe,
                timeout=timeout,
                what="the archive",
                on_timeout=on_timeout,
                max_interval=0.2,
            )
        except NotYet:
            archived, active = seen[0]
            if archived is None:
                why = f"no slot {BACKUP_SLOT} on the primary (run `shardctl up`)"
            else:
                behind = size_text(max(0, wanted - archived))
                state = "streaming" if active else "not streaming (backup node down?)"
                why = (
                    f"stuck or behind: the repository lacks the last {behind} of WAL after "
                    f"{timeout:g}s; the backup node is {state}; is the repository writable?"
                )
            return failed(primary, ARCHIVING, f"{primary.shard}: archiving {why}")
    seconds = time.monotonic() - started
    return passed(primary, ARCHIVING, f"WAL archived within {seconds:.2f}s", seconds)


@dataclass(frozen=True)
class RepositoryTimes:
    """What the backup repository says of each shard, as Unix times."""

    newest_wal: Mapping[str, float | None]
    """When the shard's newest archived WAL file was last written (None: nothing archived)."""
    last_backup: Mapping[str, float]
    """When the newest complete base backup holding the shard finished."""
    free_bytes: int | None = None
    """Room left on the repository's file system (None: not asked for, or unreadable)."""


RepositoryReader = Callable[[Topology], RepositoryTimes]
"""Reads the repository of a topology with ``backup:``. The reader lives with the repository
(:func:`shardctl.ops.backup.listing.repository_times`), above this layer: the commands that
want it (``status``, ``metrics``) hand it in."""


@dataclass(frozen=True)
class ArchiveState:
    """One shard's archiving, as the facts of its acting primary (and the repository) say."""

    shard: str
    primary: str
    state: str
    """``ok``, ``behind`` (WAL waits, the newest archived file older than the limit, or more
    than the lag limit waits), ``not streaming`` (the slot is idle: the backup node is not
    receiving), ``no slot`` or ``unknown`` (the primary did not answer)."""
    behind_bytes: int | None
    """WAL the primary has written that the backup node has not confirmed stored."""
    newest_wal: float | None = None
    """When the newest archived WAL file was written (Unix time), when the repository was read."""
    lag_seconds: float | None = None
    """Age of the newest archived WAL while WAL waits, 0 when everything is archived: the RPO
    right now. None when unknown (the repository not read, or the primary not answering)."""
    repository_free: int | None = None
    """Space left in the repository, read only when archiving is not ok (None: not read)."""

    @property
    def repository_full(self) -> bool:
        """Archiving is not ok and the repository has less room than :data:`FULL_BELOW`: the
        backup node stopped for want of space, whatever the slot shows."""
        return (
            not self.ok and self.repository_free is not None and (self.repository_free < FULL_BELOW)
        )

    @property
    def ok(self) -> bool:
        """Archiving works (or could not be judged: the primary's own problem says why)."""
        return self.state in ("ok", "unknown")

    @property
    def problem(self) -> str | None:
        """The reason, naming the shard, when archiving is not ok."""
        if self.ok:
            return None
        if self.repository_full:
            return full_problem(self.shard, self.repository_free)
        why = {
            "no slot": f"no slot {BACKUP_SLOT} on {self.primary} (run `shardctl up`)",
            "not streaming": f"the backup node is not streaming from {self.primary} (is it "
            "running? `shardctl up` starts it)",
        }.get(self.state)
        if why is None:
            waiting = size_text(self.behind_bytes)
            age = (
                ""
                if self.lag_seconds is None
                else f", newest archived WAL {self.lag_seconds:.0f}s old"
            )
            why = f"behind: {waiting} of WAL not archived{age}; is the repository writable?"
        return f"{self.shard}: archiving {why}"


def archive_states(
    facts: ClusterFacts,
    limits: HealthSpec,
    newest: Mapping[str, float | None] | None = None,
    *,
    now: float | None = None,
    free_space: FreeSpace | None = None,
) -> dict[str, ArchiveState]:
    """Per shard (none without ``backup:``), its archiving judged from the acting primary's
    facts: behind when WAL waits and the repository's newest file is older than
    ``canary_timeout`` (``newest`` given), or when more than ``max_lag_bytes`` waits. When one
    is not ok, ``free_space`` (given) reads the repository's room once, to name a full one."""
    topology = facts.topology
    if topology.spec.backup is None:
        return {}
    moment = time.time() if now is None else now
    found: dict[str, ArchiveState] = {}
    for primary in topology.primaries():
        own = facts.of(primary.name).facts
        shard = primary.shard
        newest_wal = None if newest is None else newest.get(shard)
        if own is None or own.in_recovery or own.current_lsn is None:
            found[shard] = ArchiveState(shard, primary.name, "unknown", None, newest_wal)
            continue
        slot = own.slot(BACKUP_SLOT)
        if slot is None:
            found[shard] = ArchiveState(shard, primary.name, "no slot", None, newest_wal)
            continue
        behind = None if slot.restart_lsn is None else max(0, own.current_lsn - slot.restart_lsn)
        if behind == 0:
            lag: float | None = 0.0
        elif newest_wal is not None:
            lag = max(0.0, moment - newest_wal)
        else:
            lag = None
        if not slot.active:
            state = "not streaming"
        elif (
            behind is None
            or behind > limits.max_lag_bytes
            or (lag is not None and lag > limits.canary_timeout)
        ):
            state = "behind"
        else:
            state = "ok"
        found[shard] = ArchiveState(shard, primary.name, state, behind, newest_wal, lag)
    if free_space is not None and not all(a.ok for a in found.values()):
        free = free_space()
        found = {
            shard: a if a.ok else dataclasses.replace(a, repository_free=free)
            for shard, a in found.items()
        }
    return found
