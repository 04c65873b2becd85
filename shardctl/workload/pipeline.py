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

With ``prepared``, each :class:`Statement` is prepared once per connection (its own Sync before
the batch's calls, remembered only once the server confirmed it) and executed by name, as the
Router prepares what it runs often on direct connections: a planned INSERT costs the server
less. Never through a transaction-mode pooler, which hands the next statement to another
server connection.

:func:`run_one` is the one-op case (``load --pipeline 1``): a call of one statement is sent and
waited for in one libpq call (``PQexecPrepared``, which lets go of the GIL while it waits), no
pipeline, no ``select`` from Python; a statement on a server that stopped answering is cut short
by the Router's watchdog, which shuts the socket down.
"""

from __future__ import annotations

import re
import select
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq

Params = tuple[bytes | None, ...]
Outcome = int | Exception
"""What a call came to: the rows its last statement touched (or found), or why it failed."""

_STATUS = pq.ExecStatus
_OK = pq.ConnStatus.OK


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement with ``$n`` placeholders, and the name it is prepared under."""

    name: bytes
    query: bytes


@dataclass(frozen=True, slots=True)
class Call:
    """One transaction of a batch: its statements and their parameters."""

    statements: tuple[tuple[Statement, Params], ...]


_prepared: weakref.WeakKeyDictionary[psycopg.Connection[Any], set[bytes]] = (
    weakref.WeakKeyDictionary()
)
"""The statements prepared on each live connection (a closed one is dropped by its pool)."""
_lock = threading.Lock()


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


def run_batch(
    conn: psycopg.Connection[Any], calls: Sequence[Call], until: float, *, prepared: bool = False
) -> list[Outcome]:
    """Send every call of ``calls`` on ``conn`` (autocommit, idle), each followed by a Sync,
    then read their outcomes, until ``until`` (``time.monotonic()``). Never raises for a
    call: a call whose outcome is unknown (the connection broke, the deadline came) gets the
    error; the connection is then closed. With ``prepared``, statements run by name."""
    pgconn = conn.pgconn
    with _lock:
        known = _prepared.setdefault(conn, set())
    new = _unprepared(calls, known) if prepared else []
    first = 1 if new else 0  # the prepares' own Sync comes back first
    outcomes: list[Outcome | None] = [None] * (first + len(calls))
    clean = False
    try:
        pgconn.enter_pipeline_mode()
        if new:
            for statement in new:
                pgconn.send_prepare(statement.name, statement.query)
            pgconn.pipeline_sync()
        for call in calls:
            for statement, params in call.statements:
                if prepared:
                    pgconn.send_query_prepared(statement.name, params)
                else:
                    pgconn.send_query_params(statement.query, params)
            pgconn.pipeline_sync()
        _collect(pgconn, outcomes, until)
        pgconn.exit_pipeline_mode()
        clean = True
    except (psycopg.Error, OSError, ValueError) as exc:  # ValueError: select on a closed socket
        outcomes = [exc if o is None else o for o in outcomes]
    finally:
        if not clean:
            conn.close()
    if new and not isinstance(outcomes[0], Exception):
        known.update(s.name for s in new)
    return [
        o if o is not None else psycopg.OperationalError("no outcome") for o in outcomes[first:]
    ]


def run_one(
    conn: psycopg.Connection[Any], call: Call, until: float, *, prepared: bool = False
) -> Outcome:
    """:func:`run_batch` of the single ``call``: a call of one statement in one blocking libpq
    call (the Router's watchdog bounds it; ``until`` bounds a call of several statements, which
    :func:`run_batch` pipelines). Never raises for the call; a connection left in doubt is
    closed."""
    if len(call.statements) != 1:
        return run_batch(conn, (call,), until, prepared=prepared)[0]
    statement, params = call.statements[0]
    pgconn = conn.pgconn
    try:
        if prepared:
            known = _prepared.get(conn)
            if known is None:
                with _lock:
                    known = _prepared.setdefault(conn, set())
            if statement.name not in known:
                made = pgconn.prepare(statement.name, statement.query)
                if made.status != _STATUS.COMMAND_OK:
                    return _failed(conn, made)
                known.add(statement.name)
            # None (NULL) is taken at run time as by send_query_prepared; the stub forgets it.
            result = pgconn.exec_prepared(statement.name, params)  # type: ignore[arg-type]
        else:
            result = pgconn.exec_params(statement.query, params)
        status = result.status
        if status == _STATUS.COMMAND_OK:
            return result.command_tuples or 0
        if status == _STATUS.TUPLES_OK:
            return result.ntuples
        return _failed(conn, result)
    except (psycopg.Error, OSError) as exc:
        conn.close()
        return exc


def prepare(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> None:
    """Prepare on ``conn`` (idle, not in pipeline mode) those of ``statements`` it has not
    prepared yet, one blocking round trip each; raises what the server said."""
    with _lock:
        known = _prepared.setdefault(conn, set())
    for statement in statements:
        if statement.name not in known:
            made = conn.pgconn.prepare(statement.name, statement.query)
            if made.status != _STATUS.COMMAND_OK:
                raise _failed(conn, made)
            known.add(statement.name)


def _failed(conn: psycopg.Connection[Any], result: pq.abc.PGresult) -> Exception:
    """Why a statement failed; a connection that broke on it (its outcome unknown) is closed."""
    if conn.pgconn.status != _OK:
        conn.close()
        return psycopg.OperationalError(
            (result.error_message or b"").decode(errors="replace").strip() or "connection lost"
        )
    return errors.error_from_result(result)


def _unprepared(calls: Sequence[Call], known: set[bytes]) -> list[Statement]:
    """The statements of ``calls`` not yet prepared on the connection, each once."""
    new: dict[bytes, Statement] = {}
    for call in calls:
        for statement, _ in call.statements:
            if statement.name not in known:
                new.setdefault(statement.name, statement)
    return list(new.values())


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
        for result in ready_results(pgconn):
            if result.status == _STATUS.PIPELINE_SYNC:
                outcomes[done] = failure if failure is not None else rows
                done, rows, failure = done + 1, 0, None
                if done == len(outcomes):
                    break
            else:
                rows, failure = fold(result, rows, failure)


def ready_results(pgconn: pq.abc.PGconn) -> Iterator[pq.abc.PGresult]:
    """The results a pipelined connection has ready now (what arrived is read first), in
    order; it stops when the connection is busy or has nothing more yet (two ends in a row)."""
    pgconn.consume_input()
    idle = 0
    while not pgconn.is_busy():
        result = pgconn.get_result()
        if result is None:
            idle += 1  # the end of one statement's results; twice: nothing more yet
            if idle > 1:
                return
            continue
        idle = 0
        yield result


def fold(
    result: pq.abc.PGresult, rows: int, failure: Exception | None
) -> tuple[int, Exception | None]:
    """One statement's result (not a Sync) folded into its op's row count and first failure."""
    status = result.status
    if status == _STATUS.COMMAND_OK:
        return result.command_tuples or 0, failure
    if status == _STATUS.TUPLES_OK:
        return result.ntuples, failure
    if status == _STATUS.PIPELINE_ABORTED:
        return rows, failure or errors.PipelineAborted("pipeline aborted")
    return rows, failure or errors.error_from_result(result)
