"""Which database failures the Router and the operations retry."""

from __future__ import annotations

import psycopg
import pytest

from shardctl.db.faults import is_transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg.errors.AdminShutdown("x"), True),
        (psycopg.errors.CannotConnectNow("x"), True),
        (psycopg.errors.SerializationFailure("x"), True),
        (psycopg.errors.DeadlockDetected("x"), True),
        (psycopg.errors.ConnectionFailure("x"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.QueryCanceled("x"), False),
        (psycopg.errors.UniqueViolation("x"), False),
        (psycopg.errors.SyntaxError("x"), False),
        (ValueError("x"), False),
    ],
)
def test_transient_faults_are_told_apart(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
