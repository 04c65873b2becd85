"""The one row comparison both verifications use (no database needed)."""

from __future__ import annotations

from shardctl.config.schema import TableSpec
from shardctl.db import digest


def test_differing_keys_are_sorted_and_include_keys_on_one_side_only() -> None:
    ours = {"a": "1", "b": "2", "c": "3"}
    theirs = {"a": "1", "b": "x", "d": "4"}
    assert digest.differing_keys(ours, theirs) == ["b", "c", "d"]
    assert digest.differing_keys(ours, dict(ours)) == []


def test_the_whole_table_checksum_is_the_per_range_checksum() -> None:
    text = digest.checksum_query(TableSpec(name="users", key="id")).as_string(None)
    aggregates = digest.CHECKSUM.as_string(None)
    assert text.startswith("SELECT " + aggregates) and text.endswith(' FROM "users" t')
    assert "md5(t::text)" in text and "count(*)" in text
