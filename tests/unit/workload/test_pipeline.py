"""The multiplexed load test's pure parts: placeholders for libpq, text parameters, and the
statements a connection still has to prepare."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from shardctl.workload.pipeline import Call, Statement, _unprepared, numbered
from shardctl.workload.raw import RawOps
from shardctl.workload.users import Drawn, Run, VirtualUser


def test_placeholders_become_numbered_and_a_doubled_percent_a_literal_one() -> None:
    query = b"INSERT INTO t (a, b) VALUES (%s, %s) ON CONFLICT (a) DO UPDATE SET b = %s"
    assert numbered(query) == (
        b"INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = $3"
    )
    assert numbered(b"SELECT '100%%', %s") == b"SELECT '100%', $1"
    assert numbered(b"SELECT 1") == b"SELECT 1"


def test_parameters_travel_as_text_and_none_as_null() -> None:
    statements = SimpleNamespace(
        insert=b"INSERT (%s, %s, %s)",
        read=b"SELECT %s",
        update=b"UPDATE %s, %s WHERE %s",
        delete=b"DELETE %s",
    )
    columns = [SimpleNamespace(name="a"), SimpleNamespace(name="b")]
    run = SimpleNamespace(
        router=SimpleNamespace(via="direct"),
        config=SimpleNamespace(read_from="primary"),
        target=SimpleNamespace(columns=columns),
        statements=statements,
    )
    raw = RawOps(cast(Run, run))
    user = cast(VirtualUser, None)
    value = {"a": "é", "b": None}
    (insert,) = raw.sends(Drawn(user, "insert", "6f1c", value))
    assert insert[1] == (b"6f1c", "é".encode(), None)
    (update,) = raw.sends(Drawn(user, "update", "6f1c", value))
    assert update[1] == ("é".encode(), None, b"6f1c")
    (delete,) = raw.sends(Drawn(user, "delete", "6f1c", None))
    assert delete[1] == (b"6f1c",)
    owner, read = raw.sends(Drawn(user, "read", "6f1c", None))  # assert_owner, then the read
    assert owner[1] == read[1] == (b"6f1c",)


def test_each_statement_not_yet_prepared_is_prepared_once() -> None:
    insert, read = Statement(b"ins", b"INSERT $1"), Statement(b"read", b"SELECT $1")
    calls = [Call(((insert, (b"1",)),)), Call(((read, (b"2",)), (insert, (b"3",))))]
    assert _unprepared(calls, set()) == [insert, read]
    assert _unprepared(calls, {b"ins"}) == [read]
    assert _unprepared(calls, {b"ins", b"read"}) == []
