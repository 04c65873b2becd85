"""Which failures are worth another try, and how long to wait before it.

Pure policy for the Router's retries: a transient fault (connection trouble, a server
restarting, a serialization conflict) is retried with exponential back-off; a write refused by
a reshard's fence (:class:`~shardctl.errors.KeyNotOwned`) is retried on a short, even poll,
because a cut-over pauses writes only for as long as its final catch-up takes.
"""

from __future__ import annotations

import psycopg
from psycopg_pool import PoolTimeout
from tenacity import RetryCallState, wait_exponential, wait_random

from shardctl.errors import DatabaseUnavailable, KeyNotOwned

TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure (also a hot-standby recovery conflict)
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, in recovery after a crash)
        "53300",  # too_many_connections
    }
)
"""SQLSTATEs worth retrying as they are; class 08 (connection exception) is retried too."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same work may succeed: connection trouble, restarts, conflicts."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: libpq lost the connection (reset, closed, timed out).
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state in TRANSIENT_SQLSTATES or state.startswith("08")


FAULT_BACKOFF = wait_exponential(multiplier=0.02, max=1.0) + wait_random(0, 0.05)
FIRST_BACKOFF = 0.02
"""Seconds before the second try after a transient fault (then tenacity's back-off)."""
FENCED_POLL = 0.005
"""Seconds between tries of a write refused by the fence: a cut-over pauses writes only for
as long as its final catch-up takes, so poll briefly rather than back off exponentially."""


def backoff(state: RetryCallState) -> float:
    """Short, even polls while a key is fenced; exponential back-off for faults."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, KeyNotOwned):
        return FENCED_POLL
    return FAULT_BACKOFF(state)


def failure(state: RetryCallState) -> BaseException | None:
    """The exception of the attempt ``state`` describes, None when it succeeded."""
    return state.outcome.exception() if state.outcome is not None else None


def retryable(exc: BaseException) -> bool:
    """Whether the Router should try again: a transient fault or a fenced key."""
    # DatabaseUnavailable: no primary answered a catalog read (the whole cluster restarting).
    return isinstance(exc, KeyNotOwned | DatabaseUnavailable) or is_transient(exc)
