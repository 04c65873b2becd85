"""The multiplexed load test's pure parts: placeholders for libpq, text parameters, and the
statements a connection still has to prepare."""

from __future__ import annotations

from shardctl.workload.pipeline import Call, Statement, _unprepared, numbered, text


def test_placeholders_become_numbered_and_a_doubled_percent_a_literal_one() -> None:
    query = b"INSERT INTO t (a, b) VALUES (%s, %s) ON CONFLICT (a) DO UPDATE SET b = %s"
    assert numbered(query) == (
        b"INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = $3"
    )
    assert numbered(b"SELECT '100%%', %s") == b"SELECT '100%', $1"
    assert numbered(b"SELECT 1") == b"SELECT 1"


def test_parameters_travel_as_text_and_none_as_null() -> None:
    assert text(["6f1c", 42, None, "é"]) == (b"6f1c", b"42", None, "é".encode())


def test_each_statement_not_yet_prepared_is_prepared_once() -> None:
    insert, read = Statement(b"ins", b"INSERT $1"), Statement(b"read", b"SELECT $1")
    calls = [Call(((insert, (b"1",)),)), Call(((read, (b"2",)), (insert, (b"3",))))]
    assert _unprepared(calls, set()) == [insert, read]
    assert _unprepared(calls, {b"ins"}) == [read]
    assert _unprepared(calls, {b"ins", b"read"}) == []
