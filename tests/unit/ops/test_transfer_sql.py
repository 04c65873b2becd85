"""The SQL a reshard reads a batch's ranges with: pure composition, no database."""

from __future__ import annotations

from shardctl.config.schema import TableSpec
from shardctl.ops.reshard.transfer import in_spans
from shardctl.ring.hashing import SPACE, Span

USERS = TableSpec(name="users", key="id")


def test_a_batch_is_one_index_range_scan_per_joined_span() -> None:
    text = in_spans(USERS, [Span(30, 40), Span(0, 10), Span(10, 20)], "ctid").as_string(None)
    branches = text.split(" UNION ALL ")
    assert len(branches) == 2  # [0, 10) and [10, 20) are one range
    assert all(b.startswith('SELECT ctid FROM "users" WHERE ') for b in branches)
    assert " OR " not in text  # an OR-ed WHERE may be planned as a scan hashing every row
    assert f"'{0:032x}'" in branches[0] and f"'{20:032x}'" in branches[0]
    assert f"'{30:032x}'" in branches[1] and f"'{40:032x}'" in branches[1]


def test_the_top_of_the_circle_has_no_upper_bound_and_no_span_selects_nothing() -> None:
    top = in_spans(USERS, [Span(SPACE - 5, SPACE)]).as_string(None)
    assert " < " not in top and top.startswith('SELECT * FROM "users" WHERE ')
    assert in_spans(USERS, []).as_string(None) == 'SELECT * FROM "users" WHERE false'
