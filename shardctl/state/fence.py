"""The fence: which keys a primary refuses or records, by the ranges of the ring it gives away.

A primary gives ranges of the ring away by listing them in ``shardctl.moving``, each with a
target and a :class:`RangeState`. Three BEFORE ROW guard triggers per sharded table (INSERT,
UPDATE, DELETE) call ``shardctl.guard``, which looks the written key up there:

- a ``capturing`` range: the key is recorded in ``shardctl.changes`` in the writer's own
  transaction (whoever the writer is: Router, psql, another service);
- a ``fenced`` or ``moved`` range: the write is refused with SQLSTATE :data:`FENCE_SQLSTATE`
  (key not owned); a Router refreshes its ring and retries on the new owner.

**Free outside a reshard.** Each guard trigger has a ``WHEN`` clause, evaluated in C per row,
that tests the key's ring position against the listed ranges, baked in as a constant
multirange (``shardctl.span``); with none listed it is ``false``. ``shardctl.rearm`` rewrites
the clauses in the transaction that lists or lifts ranges (a statement trigger on
``shardctl.moving``), after locking the tables ``SHARE ROW EXCLUSIVE``: every in-flight write
finishes first and every later one sees the new clause. A change of state rewrites nothing.

``shardctl.assert_owner(key)`` refuses a key of a fenced or moved range even when no row is
written: :meth:`~shardctl.router.router.Router.execute` calls it after a statement that touched
no row (so a stale Router is redirected), and ``run``, ``fetch(prefer="primary")`` and dual writes
open their transaction with it. It reads the range row ``FOR SHARE``, as ``guard`` does, so
fencing a range (:func:`set_state` to ``FENCED``) waits for every in-flight writer of that range
to finish: that is a cut-over's handshake. shardctl's own copy, re-sync and clean-up write with
:func:`trusted_writes`, which skips the triggers.

**Where the rest lives.** The objects themselves are created by :mod:`shardctl.state.ddl`
(``sql/fence.sql``); the advisory-lock keys are in :mod:`shardctl.state.locks`; re-syncing a
key is :mod:`shardctl.state.resync`; the reshard's record is :mod:`shardctl.state.inflight`.
This module holds the ranges a primary gives away and the constants the SQL shares with
Python (the SQLSTATE, the range states). The Router needs it and must not depend on the
coordinator, so it sits low, in ``state``. The coordinator (:mod:`shardctl.ops.reshard`) drives
it; a switchover fences a whole old primary with the same calls (one range covering the
circle, given away ``FENCED``). A range given away is a :class:`~shardctl.ring.hashing.Move`
(``[start, end)`` from its source to its target), the ring's own range type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

import psycopg

from shardctl.db import pg
from shardctl.ring.hashing import Move, Span, hex_bounds
from shardctl.state.locks import (
    RELEASE_SESSION_LOCK,
    ROLE_CHANGE,
    ROLE_CHANGE_LOCK,
    TRY_SESSION_LOCK,
)

Conn = psycopg.Connection[Any]

FENCE_SQLSTATE = "SC001"
"""SQLSTATE a primary raises for a write to a key it does not (or no longer) own.

Raised by ``shardctl.check_key`` (the trigger and ``assert_owner``); the Router turns it into
:class:`~shardctl.errors.KeyNotOwned`, refreshes its ring and retries on the new owner.
"""


NOT_PRIMARY_SQLSTATE = "25006"
"""``read_only_sql_transaction``: a write reached a server in recovery. From the node a Router
believes is a primary, that is a former primary a switchover or failover demoted (its data
directory holds ``standby.signal``): the Router re-reads the catalog and retries, as for
:data:`FENCE_SQLSTATE`."""


class RangeState(StrEnum):
    """Where a range a primary gives away stands (``shardctl.moving.state``)."""

    CAPTURING = "capturing"
    """Still owned here; every write to it is recorded in ``shardctl.changes``."""
    FENCED = "fenced"
    """Writes refused (cut-over in progress); may go back to CAPTURING if the cut-over fails."""
    MOVED = "moved"
    """Owned by the target for good; writes refused here forever."""


# ------------------------------------------------------------------ named statements
# The fence's statements, by what they do; the comment above each names its %s parameters.

# (operation, state, los, his, targets): every range in one statement, so that the tables are
# locked and the guard triggers re-armed once (moving_lock, moving_rearm fire per statement),
# not once per range: ~120 re-armings took seconds under load when listing a removal's ranges
GIVE_AWAY = (
    "INSERT INTO shardctl.moving (reshard_id, lo, hi, target, state) "
    "SELECT %s, r.lo, r.hi, r.target, %s "
    "FROM ROWS FROM (pg_catalog.unnest(%s::text[]), pg_catalog.unnest(%s::text[]), "
    "pg_catalog.unnest(%s::text[])) AS r(lo, hi, target) "
    "ON CONFLICT DO NOTHING"
)
# (state, operation); SET_STATE_FROM adds (only from this state)
SET_STATE = "UPDATE shardctl.moving SET state = %s WHERE reshard_id = %s"
SET_STATE_FROM = SET_STATE + " AND state = %s"
# (operation)
MARK_COPIED = "UPDATE shardctl.moving SET copied = true WHERE reshard_id = %s"
# (operation)
TAKE_BACK = "DELETE FROM shardctl.moving WHERE reshard_id = %s"
# (RangeState.MOVED, ROLE_CHANGE, operation): what earlier reshards gave away here for good
GIVEN_AWAY_BEFORE = (
    "SELECT reshard_id, lo, hi, target FROM shardctl.moving "
    "WHERE state = %s AND reshard_id <> %s AND reshard_id <> %s ORDER BY lo"
)
# (operation, lo)
FORGET_RANGE = "DELETE FROM shardctl.moving WHERE reshard_id = %s AND lo = %s"
# (RangeState.CAPTURING)
MOVING_COPIED = "SELECT lo, hi, target FROM shardctl.moving WHERE state = %s AND copied ORDER BY lo"
# (target, batch size)
NEXT_CHANGES = "SELECT id, tbl, key FROM shardctl.changes WHERE target = %s ORDER BY id LIMIT %s"
# (ids)
DELETE_CHANGES = "DELETE FROM shardctl.changes WHERE id = ANY(%s)"
# (targets)
FORGET_CHANGES = "DELETE FROM shardctl.changes WHERE target = ANY(%s)"


# ------------------------------------------------------------------ role changes


def lift_abandoned_role_fence(conn: Conn) -> bool:
    """Lift the fence of a switchover that died before stopping this primary (no switchover
    holds :data:`ROLE_CHANGE_LOCK` here); True when there was one."""
    row = conn.execute(TRY_SESSION_LOCK, (ROLE_CHANGE_LOCK,)).fetchone()
    if row is None or not row[0]:
        return False  # a switchover is running: its fence is not abandoned
    try:
        with pg.bookkeeping(conn):
            return conn.execute(TAKE_BACK, (ROLE_CHANGE,)).rowcount > 0
    finally:
        conn.execute(RELEASE_SESSION_LOCK, (ROLE_CHANGE_LOCK,))


# ------------------------------------------------------------------ ranges given away


def give_away(conn: Conn, operation: int, ranges: Iterable[Move], state: RangeState) -> None:
    """List ``ranges`` as given away by the primary ``conn`` reaches, in ``state``; ranges
    already listed for ``operation`` stay as they are (so a resumed step changes nothing).

    ``CAPTURING`` starts recording their writes; ``FENCED`` refuses them at once (a switchover
    fencing an old primary gives away one range covering the whole circle)."""
    listed = list(ranges)
    if not listed:
        return
    with pg.bookkeeping(conn):  # one re-arming of the guard triggers for them all
        conn.execute(GIVE_AWAY, give_away_params(operation, listed, state))


def give_away_params(
    operation: int, ranges: Sequence[Move], state: RangeState
) -> tuple[int, str, list[str], list[str | None], list[str]]:
    """:data:`GIVE_AWAY`'s parameters, for a caller that sends it in its own pipeline (the
    point: its fence, point and commit in one round trip)."""
    return (operation, state.value, *_columns(ranges))


def _columns(ranges: Sequence[Move]) -> tuple[list[str], list[str | None], list[str]]:
    """``GIVE_AWAY``'s arrays: the ranges' lower bounds, upper bounds and targets."""
    return (
        [m.start_hex for m in ranges],
        [m.end_hex for m in ranges],
        [m.target for m in ranges],
    )


def set_state(
    conn: Conn, operation: int, state: RangeState, *, only: RangeState | None = None
) -> int:
    """Move the ranges ``operation`` gives away here to ``state`` (only those in ``only``, if
    given); how many changed. To ``FENCED`` it waits for every in-flight writer of them."""
    with pg.bookkeeping(conn):
        if only is None:
            return conn.execute(SET_STATE, (state.value, operation)).rowcount
        return conn.execute(SET_STATE_FROM, (state.value, operation, only.value)).rowcount


def mark_copied(conn: Conn, operation: int) -> None:
    """Say the ranges ``operation`` gives away here are copied: Routers dual-write them now."""
    with pg.bookkeeping(conn):
        conn.execute(MARK_COPIED, (operation,))


def take_back(conn: Conn, operation: int) -> None:
    """Forget the ranges ``operation`` gave away here: capture stops and any fence lifts."""
    with pg.bookkeeping(conn):
        conn.execute(TAKE_BACK, (operation,))


def given_away_before(conn: Conn, source: str, operation: int) -> list[tuple[int, Move]]:
    """The ranges reshards other than ``operation`` moved away from ``source`` (the shard
    ``conn`` reaches) for good, each with its reshard: refused here until taken back."""
    rows = conn.execute(
        GIVEN_AWAY_BEFORE, (RangeState.MOVED.value, ROLE_CHANGE, operation)
    ).fetchall()
    return [(int(op), Move(*hex_bounds(lo, hi), source, target)) for op, lo, hi, target in rows]


def narrow(conn: Conn, operation: int, moved: Move, keep: Sequence[Span]) -> None:
    """Replace a range ``operation`` moved away for good by the pieces ``keep`` of it, in one
    transaction: the rest is this shard's again (a later reshard brings it back) and writes to
    it are no longer refused."""
    with pg.bookkeeping(conn):
        conn.execute(FORGET_RANGE, (operation, moved.start_hex))
        if keep:
            pieces = [Move(p.start, p.end, moved.source, moved.target) for p in keep]
            conn.execute(GIVE_AWAY, (operation, RangeState.MOVED.value, *_columns(pieces)))


def forget_changes(conn: Conn, targets: Sequence[str]) -> None:
    """Drop the change log kept here for ``targets`` (their move is over or undone)."""
    with pg.bookkeeping(conn):
        conn.execute(FORGET_CHANGES, (list(targets),))


def moving_ranges(conn: Conn, source: str) -> list[Move]:
    """The ranges ``source`` (the shard ``conn`` reaches) is capturing and has copied: those a
    Router dual-writes. Before its copy a range takes no dual writes: they would only collide
    with the copy, which brings those rows anyway (newer changes are in the change log)."""
    rows = conn.execute(MOVING_COPIED, (RangeState.CAPTURING.value,)).fetchall()
    return [Move(*hex_bounds(lo, hi), source, target) for lo, hi, target in rows]


def trusted_writes(conn: Conn) -> None:
    """Let this transaction write without firing the guard (shardctl's own copy and clean-up)."""
    conn.execute("SET LOCAL session_replication_role = replica")
