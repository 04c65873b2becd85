"""Pure logic of remove-shard: the ring without a shard, the fence pieces a target keeps, the
topology edit, the roles that leave with the shard."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.config import topology
from shardctl.errors import UsageError
from shardctl.ops.reshard.cutover import without_roles
from shardctl.ops.reshard.joining import with_shard
from shardctl.ops.reshard.leaving import without_shard
from shardctl.ring.hashing import SPACE, Ring
from shardctl.state import catalog
from shardctl.state.plan import MoveSize, Plan, make_plan, uncovered, without_node

NAMES = ["shard-0", "shard-1", "shard-2", "shard-3", "shard-4"]


@pytest.mark.parametrize("leaving", NAMES)
def test_md5_removal_moves_only_the_leaving_shards_keys_and_adding_back_restores_it(
    leaving: str,
) -> None:
    ring = Ring(NAMES, vnodes=40, algorithm="md5")
    smaller = without_node(ring, leaving)
    moves = ring.moves_to(smaller)
    assert {m.source for m in moves} == {leaving}
    assert leaving not in smaller.nodes and len(smaller.nodes) == 4
    for move in moves:  # each range goes to its owner in the smaller ring
        assert smaller.node_for_position(move.start) == move.target
    # Added back (appended, as add-shard does): the former placement, bit for bit.
    assert smaller.with_node(leaving).ranges() == ring.ranges()


def test_balanced_removal_of_the_last_added_shard_is_minimal() -> None:
    ring = Ring(NAMES, algorithm="balanced")
    assert {m.source for m in ring.moves_to(without_node(ring, "shard-4"))} == {"shard-4"}
    # Of another shard: the ring is rebuilt from the remaining order; the plan shows it all.
    moves = ring.moves_to(without_node(ring, "shard-1"))
    assert "shard-1" in {m.source for m in moves}
    assert all(m.target != "shard-1" for m in moves)


def test_the_last_or_an_unknown_shard_cannot_leave() -> None:
    with pytest.raises(ValueError, match="last shard"):
        without_node(Ring(["a"]), "a")
    with pytest.raises(ValueError, match="not in the ring"):
        without_node(Ring(["a", "b"]), "c")


def test_a_plan_names_its_leaving_shard_and_round_trips() -> None:
    old = Ring(NAMES[:3], vnodes=10, algorithm="md5")
    new = without_node(old, "shard-1")
    moves = old.moves_to(new)
    plan = make_plan(4, 7, old, new, [MoveSize(10, 100) for _ in moves], rows_per_chunk=3)
    assert plan.leaving == ("shard-1",)
    assert plan.sources() == ["shard-1"]
    assert Plan.from_json(plan.to_json()) == plan
    data = plan.to_json()
    del data["leaving"]  # a plan recorded before remove-shard existed
    assert Plan.from_json(data).leaving == ()


spans = st.tuples(st.integers(0, 1000), st.integers(1, 200)).map(lambda t: (t[0], t[0] + t[1]))


@given(start=st.integers(0, 500), width=st.integers(1, 500), taken=st.lists(spans, max_size=6))
def test_uncovered_pieces_are_exactly_the_points_no_taken_range_holds(
    start: int, width: int, taken: list[tuple[int, int]]
) -> None:
    end = start + width
    pieces = uncovered(start, end, taken)
    kept = {p for lo, hi in pieces for p in range(lo, hi)}
    expected = {p for p in range(start, end) if not any(lo <= p < hi for lo, hi in taken)}
    assert kept == expected
    assert all(lo < hi for lo, hi in pieces)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(pieces))  # disjoint, apart


def test_uncovered_handles_the_top_of_the_circle() -> None:
    assert uncovered(10, SPACE, [(20, SPACE)]) == [(10, 20)]
    assert uncovered(10, SPACE, [(0, SPACE)]) == []


TOPOLOGY = """\
# production cluster: ask #db before editing
cluster: demo
base_port: 40000
shards:
  # the original two
  - name: shard-0
    replicas: 1
  - name: shard-1   # the one we retire
    replicas: 1
  # added in March
  - name: shard-2
    replicas: 2
  - name: shard-3
    replicas: 0
    port: 41000
tables:
  - name: users
    key: id
"""


def load(tmp_path: Path, text: str = TOPOLOGY) -> topology.Topology:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return topology.load(path)


def test_removing_a_shard_keeps_comments_and_the_ports_of_the_others(tmp_path: Path) -> None:
    current = load(tmp_path)
    ports = {n.name: n.host_port for n in current.nodes if n.shard != "shard-1"}
    smaller, text = without_shard(current, "shard-1")
    assert [s.name for s in smaller.spec.shards] == ["shard-0", "shard-2", "shard-3"]
    assert "the one we retire" not in text
    for comment in ("# production cluster", "# the original two", "# added in March"):
        assert comment in text
    assert {n.name: n.host_port for n in smaller.nodes} == ports
    assert "    port: 40020\n" in text  # shard-2's port, written down; shard-3 had one
    assert text.count("port:") == 3  # base_port, shard-2, shard-3
    # Added back: the freed ports, written down too.
    (tmp_path / "topology.yaml").write_text(text)
    again, added = with_shard(topology.load(tmp_path / "topology.yaml"), "shard-1", 1)
    assert again.shard_nodes("shard-1")[0].host_port == 40010
    assert added.endswith("    port: 40010\ntables:\n  - name: users\n    key: id\n")


def test_removing_the_last_entry_and_flow_style(tmp_path: Path) -> None:
    smaller, text = without_shard(load(tmp_path), "shard-3")
    assert [s.name for s in smaller.spec.shards] == ["shard-0", "shard-1", "shard-2"]
    assert "41000" not in text
    flow = load(tmp_path, "cluster: demo\nshards: [{name: a}, {name: b}]\n")
    with pytest.raises(UsageError, match="flow style"):
        without_shard(flow, "b")


def test_the_roles_of_a_leaving_shard_leave_with_it() -> None:
    record = catalog.RingRecord(
        5, "md5", 10, ("shard-0", "shard-1", "shard-2"),
        primaries=(("shard-0", "shard-0-replica-1"), ("shard-1", "shard-1-replica-1")),
        rejoin=("shard-0-primary", "shard-1-primary", "shard-10-primary"),
    )  # fmt: skip
    kept = without_roles(record, ("shard-1",))
    assert kept.primaries == (("shard-0", "shard-0-replica-1"),)
    assert kept.rejoin == ("shard-0-primary", "shard-10-primary")
    assert without_roles(record, ()) == record
