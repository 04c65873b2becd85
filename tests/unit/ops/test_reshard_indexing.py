"""Which shards a reshard indexes before its copy, and which sources it counts by a full scan."""

from __future__ import annotations

from shardctl.ops.reshard.copying import indexed_before_copy, involved, joining
from shardctl.ops.reshard.transfer import scan_whole
from shardctl.ring.hashing import Ring
from shardctl.state.plan import MoveSize, make_plan, without_node


def test_a_joining_shard_is_indexed_after_the_copy_every_other_shard_before() -> None:
    old = Ring(["a", "b"], vnodes=50, algorithm="md5")
    new = old.with_node("c")
    plan = make_plan(1, 1, old, new, [MoveSize(1, 1) for _ in old.moves_to(new)])
    assert involved(plan) == ["a", "b", "c"]
    assert joining(plan, "c") and not joining(plan, "a")
    assert indexed_before_copy(plan) == ["a", "b"]


def test_a_removal_indexes_every_shard_before_the_copy() -> None:
    old = Ring(["a", "b", "c"], vnodes=50, algorithm="md5")
    new = without_node(old, "b")
    plan = make_plan(1, 1, old, new, [MoveSize(1, 1) for _ in old.moves_to(new)])
    assert indexed_before_copy(plan) == involved(plan) == ["a", "b", "c"]


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
