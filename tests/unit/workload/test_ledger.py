"""The ledger format and the expected state it implies; the load test's pure helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.errors import UsageError
from shardctl.workload.bulk import generate
from shardctl.workload.ledger import Header, Ledger, Value, read
from shardctl.workload.report import percentile
from shardctl.workload.target import Column, Target
from shardctl.workload.users import Mix

A: Value = {"first_name": "a", "last_name": "1", "email": "1@x"}
B: Value = {"first_name": "a", "last_name": "2", "email": "2@x"}
USERS = Target(
    "users", "id", "uuid", tuple(Column(c, "text") for c in ("first_name", "last_name", "email"))
)
"""The example schema's table, as :func:`shardctl.workload.target.target` reads it from the
catalog."""


def test_acknowledged_ops_settle_a_key_and_failed_ops_allow_both(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path, USERS.header) as book:
        book.record(0, "k1", "insert", A)
        book.record(0, "k1", "update", B, rows=1)
        book.record(1, "k2", "insert", A)
        book.record(1, "k2", "delete", None, rows=1)
        book.record(2, "k3", "insert", A)
        book.record(2, "k3", "update", B, ok=False)  # outcome unknown
        book.record(3, "k4", "insert", A, ok=False)  # may or may not exist
    header, expected = read([path])
    assert (header.table, header.key, header.key_type) == ("users", "id", "uuid")
    assert expected["k1"].states == [B] and expected["k1"].ops == 2
    assert expected["k2"].states == [None]
    assert expected["k3"].states == [A, B] and not expected["k3"].certain
    assert expected["k4"].states == [None, A]
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["ledger"] == 1
    assert [json.loads(line)["seq"] for line in lines[1:]] == list(range(1, 8))


def test_bulk_entries_and_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    with Ledger(path, USERS.header) as book:
        book.record_many(0, [("k1", A), ("k2", B)])
    with path.open("a") as out:
        out.write('{"seq": 3, "key": "k3", "op": "ins')  # the writer was killed mid-line
    _, expected = read([path])
    assert {k: e.states for k, e in expected.items()} == {"k1": [A], "k2": [B]}


def test_bad_ledgers_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"seq": 1, "key": "k", "op": "upsert", "value": {}, "ok": true}\n')
    with pytest.raises(UsageError, match="unknown op"):
        read([bad])
    with pytest.raises(UsageError, match="cannot read ledger"):
        read([tmp_path / "missing.jsonl"])


def test_mix_parsing() -> None:
    assert Mix.parse("insert=1,read=2") == Mix(1, 2, 0, 0)
    assert Mix().weights() == [30, 40, 20, 10]
    for bad in ("insert", "read=1", "insert=x", "upsert=3"):
        with pytest.raises(UsageError):
            Mix.parse(bad)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 95) == 7.0


def test_generated_users_are_unique_uuids_and_reproducible() -> None:
    rows = list(generate(USERS, 1000, seed=3))
    assert len({r[0] for r in rows}) == 1000
    assert rows == list(generate(USERS, 1000, seed=3))
    assert all(len(r[0]) == 36 and r[0][14] == "4" for r in rows)


def test_a_ledger_without_its_header_is_a_usage_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"seq": 1, "key": "k", "op": "insert", "value": {}, "ok": true}\n')
    with pytest.raises(UsageError, match="no ledger header"):
        read([bare])


def test_generated_rows_fit_the_declared_columns() -> None:
    table = Target(
        "t", "n", "bigint", (Column("a", "character varying", 8), Column("b", "smallint"))
    )
    assert table.header == Header("t", "n", "bigint", ("a", "b"))
    for key, a, b in generate(table, 200, seed=1):
        assert 0 <= int(key) < 2**63 and len(a) <= 8 and 0 <= int(b) < 2**15


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.text(),
            st.sampled_from(["insert", "update", "delete"]),
            st.none() | st.dictionaries(st.text(), st.none() | st.text(), max_size=4),
            st.booleans(),
            st.none() | st.integers(0, 5),
        ),
        max_size=600,  # more than one batch of lines
    )
)
def test_a_ledger_line_is_what_json_dumps_writes(
    tmp_path: Path, writes: list[tuple[int, str, str, Value | None, bool, int | None]]
) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path, USERS.header) as book:
        for worker, key, op, value, ok, rows in writes:
            book.record(worker, key, op, value, ok=ok, rows=rows)
    expected = []
    for seq, (worker, key, op, value, ok, rows) in enumerate(writes, 1):
        entry: dict[str, object] = {
            "seq": seq, "worker": worker, "key": key, "op": op, "value": value, "ok": ok
        }  # fmt: skip
        if rows is not None:
            entry["rows"] = rows
        expected.append(json.dumps(entry, separators=(",", ":")))
    assert path.read_text(encoding="utf-8").splitlines()[1:] == expected
