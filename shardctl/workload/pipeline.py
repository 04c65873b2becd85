"""Several virtual users' statements on one connection at once: libpq's pipeline mode, each
call its own transaction.

A batch is a list of :class:`Call`: one statement, or two (a read from the primary is
``shardctl.assert_owner`` then the SELECT, as the Router fences it), sent with text parameters
and followed by a Sync. The server commits each call at its Sync, so a call that fails undoes
no other call of the batch, and a call's outcome is known when its Sync comes back: what the
ledger needs (a write is acknowledged only once its result is known). :func:`run_batch` sends
every call before reading any result: one round trip (and a few packets through the port
proxy) for the batch instead of one per call.

It speaks to the raw libpq connection under a pooled psycopg connection
(:attr:`psycopg.Connection.pgconn`): psycopg's cursors cost the client more CPU per statement
than the statement costs the server, and CPU is what the client shares with the servers here.
A connection left in doubt (a broken socket, the deadline) is closed, so its pool discards it.
"""

from __future__ import annotations

import re
import select
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq

Params = tuple[bytes | None, ...]
Outcome = int | Exception
"""What a call came to: the rows its last statement touched (or found), or why it failed."""

_STATUS = pq.ExecStatus


@dataclass(frozen=True, slots=True)
class Call:
    """One transaction of a batch: its statements (``$n`` placeholders) and their parameters."""

    statements: tuple[tuple[bytes, Params], ...]


def numbered(query: bytes) -> bytes:
    """``query`` with psycopg's ``%s`` placeholders as libpq's ``$1``, ``$2``, ... (``%%``:
    a literal ``%``)."""
    count = 0

    def mark(found: re.Match[bytes]) -> bytes:
        nonlocal count
        if found.group() == b"%%":
            return b"%"
        count += 1
        return b"$%d" % count

    return re.sub(rb"%%|%s", mark, query)


def text(values: Sequence[object]) -> Params:
    """Parameters as libpq takes them in text format (None: NULL)."""
    return tuple(None if v is None else str(v).encode() for v in values)


def run_batch(conn: psycopg.Connection[Any], calls: Sequence[Call], until: float) -> list[Outcome]:
    """Send every call of ``calls`` on ``conn`` (autocommit, idle), each followed by a Sync,
    then read their outcomes, until ``until`` (``time.monotonic()``). Never raises for a
    call: a call whose outcome is unknown (the connection broke, the deadline came) gets the
    error; the connection is then closed."""
    pgconn = conn.pgconn
    outcomes: list[Outcome | None] = [None] * len(calls)
    clean = False
    try:
        pgconn.enter_pipeline_mode()
        for call in calls:
            for query, params in call.statements:
                pgconn.send_query_params(query, params)
            pgconn.pipeline_sync()
        _collect(pgconn, outcomes, until)
        pgconn.exit_pipeline_mode()
        clean = True
    except psycopg.Error as exc:
        outcomes = [exc if o is None else o for o in outcomes]
    finally:
        if not clean:
            conn.close()
    return [o if o is not None else psycopg.OperationalError("no outcome") for o in outcomes]


def _collect(pgconn: pq.abc.PGconn, outcomes: list[Outcome | None], until: float) -> None:
    """Read results until every call's Sync came back (results of one call: its statements'
    in order, then PIPELINE_SYNC)."""
    fd = pgconn.socket
    done = 0
    rows = 0
    failure: Exception | None = None
    while done < len(outcomes):
        sending = pgconn.flush() == 1
        left = until - time.monotonic()
        if left <= 0:
            raise psycopg.OperationalError("no answer within the deadline")
        readable, _, _ = select.select([fd], [fd] if sending else [], [], left)
        if not readable:
            continue
        pgconn.consume_input()
        idle = 0
        while done < len(outcomes) and not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                idle += 1  # the end of one statement's results; twice: nothing more yet
                if idle > 1:
                    break
                continue
            idle = 0
            status = result.status
            if status == _STATUS.PIPELINE_SYNC:
                outcomes[done] = failure if failure is not None else rows
                done, rows, failure = done + 1, 0, None
            elif status == _STATUS.COMMAND_OK:
                rows = result.command_tuples or 0
            elif status == _STATUS.TUPLES_OK:
                rows = result.ntuples
            elif status == _STATUS.PIPELINE_ABORTED:
                failure = failure or errors.PipelineAborted("pipeline aborted")
            else:
                failure = failure or errors.error_from_result(result)
