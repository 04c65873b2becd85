"""The archiving check: each acting primary's WAL reaches the backup repository.

On every primary of a topology with ``backup:``, one small WAL record is written
(``pg_logical_emit_message``, committed locally) and the backup node's slot
(:data:`~shardctl.docker.backup_specs.BACKUP_SLOT`) must confirm it stored it within the canary
timeout: the slot's position only moves once ``pg_receivewal`` has flushed the WAL into the
repository, so a stopped backup node, a read-only or full repository, or a missing slot all
fail it, naming the shard and the reason. An idle cluster is checked as well as a busy one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.schema import HealthSpec
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.docker.backup_specs import BACKUP_SLOT
from shardctl.errors import DatabaseUnavailable
from shardctl.health.checks import Check, failed, passed, skipped
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


def archiving_checks(
    topology: Topology, credentials: Credentials | None, limits: HealthSpec
) -> list[Check]:
    """One archiving check per acting primary; none without ``backup:`` in the topology."""
    if topology.spec.backup is None:
        return []
    primaries = topology.primaries()
    if credentials is None:
        return [skipped(p, ARCHIVING, "no node answered") for p in primaries]
    results = fanout.gather(
        {p.name: partial(_check, p, credentials, limits.canary_timeout) for p in primaries}
    )
    found: list[Check] = []
    for primary in primaries:
        result = results[primary.name]
        if isinstance(result, Check):
            found.append(result)
        elif isinstance(result, DatabaseUnavailable | psycopg.Error):
            found.append(skipped(primary, ARCHIVING, pg.failure_reason(result)))
        elif isinstance(result, BaseException):
            raise result
    return found


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
