"""Which shards a reshard indexes (the sources that stay), and which sources it counts by a full
scan."""

from __future__ import annotations

from shardctl.ops.reshard.copying import indexed_before_copy, involved, joining
from shardctl.ops.reshard.transfer import scan_whole
from shardctl.ring.hashing import Ring
from shardctl.state.plan import MoveSize, make_plan, without_node


def test_a_grow_indexes_its_sources_not_the_joining_shard() -> None:
    old = Ring(["a", "b"], vnodes=50, algorithm="md5")
    new = old.with_node("c")
    plan = make_plan(1, 1, old, new, [MoveSize(1, 1) for _ in old.moves_to(new)])
    assert involved(plan) == ["a", "b", "c"]
    assert joining(plan, "c") and not joining(plan, "a")
    assert indexed_before_copy(plan) == ["a", "b"]


def test_a_removal_indexes_no_shard() -> None:
    """The leaving shard gives everything (one scan per target reads what the index would),
    and a receiving shard is verified by one scan of its table."""
    old = Ring(["a", "b", "c"], vnodes=50, algorithm="md5")
    new = without_node(old, "b")
    plan = make_plan(1, 1, old, new, [MoveSize(1, 1) for _ in old.moves_to(new)])
    assert involved(plan) == ["a", "b", "c"] and plan.leaving == ("b",)
    assert indexed_before_copy(plan) == []


def test_a_source_giving_away_most_of_what_it_owns_is_counted_whole() -> None:
    old = Ring(["a", "b", "c"], vnodes=50, algorithm="md5")
    shares = old.shares()
    leaving = old.moves_to(without_node(old, "b"))
    assert {m.source for m in leaving} == {"b"}
    assert scan_whole(leaving, shares["b"])  # all of it
    grown = old.moves_to(old.with_node("d"))
    for source in ("a", "b", "c"):  # about a quarter of each
        assert not scan_whole([m for m in grown if m.source == source], shares[source])
    assert not scan_whole([], shares["a"])
