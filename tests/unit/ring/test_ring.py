"""The hash ring: the md5 ring against the classic oracle, balance, ranges, moves, errors."""

from __future__ import annotations

import bisect
import hashlib
import json
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.ring import hashing as ring_module
from shardctl.ring.hashing import (
    SLOT_SHIFT,
    SLOTS,
    SPACE,
    Algorithm,
    Move,
    Range,
    Ring,
    Span,
    hex_bounds,
    position,
    position_hex,
)


class ClassicRing:
    """The classic md5 ring, verbatim: the oracle for ``Algorithm.MD5``."""

    def __init__(self, nodes: Sequence[str], vnodes: int = 150) -> None:
        self.ring: dict[int, str] = {}
        self.keys: list[int] = []
        for n in nodes:
            for i in range(vnodes):
                h = int(hashlib.md5(f"{n}:{i}".encode()).hexdigest(), 16)
                self.ring[h] = n
                self.keys.append(h)
        self.keys.sort()

    def get(self, key: object) -> str:
        h = int(hashlib.md5(str(key).encode()).hexdigest(), 16)
        i = bisect.bisect_right(self.keys, h)
        if i == len(self.keys):
            i = 0
        return self.ring[self.keys[i]]


def mixed_keys(n: int, seed: int) -> list[object]:
    """``n`` reproducible keys, a mix of UUIDs, ints (some negative) and strings."""
    rng = random.Random(seed)
    keys: list[object] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            keys.append(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif kind == 1:
            keys.append(rng.randint(-(2**63), 2**63 - 1))
        else:
            keys.append(f"user-{rng.getrandbits(40)}")
    return keys


def uuid_keys(n: int, seed: int) -> list[uuid.UUID]:
    """``n`` reproducible random version-4 UUIDs."""
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(n)]


def max_over_mean(counts: Counter[str], nodes: Sequence[str]) -> float:
    """The most loaded node's key count over the mean count."""
    mean = sum(counts.values()) / len(nodes)
    return max(counts[n] for n in nodes) / mean


def slot_counts(ring: Ring) -> Counter[str]:
    """How many balanced slots each node owns, read through the public lookup."""
    return Counter(ring.node_for_position(slot << SLOT_SHIFT) for slot in range(SLOTS))


def tiles_circle(ranges: Sequence[Range] | Sequence[Move]) -> bool:
    """Whether spans are sorted, contiguous and cover exactly [0, 2**128)."""
    if not ranges or ranges[0].start != 0 or ranges[-1].end != SPACE:
        return False
    return all(a.end == b.start for a, b in pairwise(ranges))


# --- positions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [uuid.UUID("6f1c2a34-0d5e-4b7a-9c1e-2f3a4b5c6d7e"), 0, -17, 2**70, "", "héllo", "a:1"],
)
def test_position_matches_md5_hexdigest(key: object) -> None:
    digest = hashlib.md5(str(key).encode()).hexdigest()
    assert position_hex(key) == digest
    assert position(key) == int(digest, 16)
    assert len(position_hex(key)) == 32
    assert f"{position(key):032x}" == position_hex(key)


def test_hex_order_is_integer_order() -> None:
    keys = mixed_keys(5000, seed=1)
    assert sorted(keys, key=position_hex) == sorted(keys, key=position)


def test_position_hex_zero_pads() -> None:
    small = next(k for k in range(1000) if position(k) < 2**124)
    assert position_hex(small).startswith("0")
    assert len(position_hex(small)) == 32


# --- md5: bit-for-bit the classic ring ------------------------------------------------------


@pytest.mark.parametrize("nodes", [["s1", "s2", "s3", "s4"], ["s1", "s2", "s3", "s4", "s5"]])
def test_md5_ring_equals_classic_on_100k_keys(nodes: list[str]) -> None:
    classic = ClassicRing(nodes, vnodes=150)
    ring = Ring(nodes, vnodes=150, algorithm="md5")
    keys = mixed_keys(100_000, seed=len(nodes))
    mismatches = [k for k in keys if ring.node_for(k) != classic.get(k)]
    assert mismatches == []


def test_md5_boundaries_follow_bisect_right() -> None:
    nodes = ["a", "b", "c"]
    classic = ClassicRing(nodes, vnodes=20)
    ring = Ring(nodes, vnodes=20, algorithm="md5")
    for h in classic.keys:
        for p in (h - 1, h, h + 1):
            if 0 <= p < SPACE:
                i = bisect.bisect_right(classic.keys, p) % len(classic.keys)
                assert ring.node_for_position(p) == classic.ring[classic.keys[i]]
    assert ring.node_for_position(0) == classic.ring[classic.keys[0]]
    assert ring.node_for_position(SPACE - 1) == classic.ring[classic.keys[0]]


def test_md5_vnode_collision_later_node_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every node's vnode i lands on the same point: the dict in the classic ring keeps the last.
    monkeypatch.setattr(ring_module, "_vnode_position", lambda node, i: (i + 1) << 100)
    ring = Ring(["a", "b", "c"], vnodes=5, algorithm="md5")
    assert {r.owner for r in ring.ranges()} == {"c"}
    assert ring.shares() == {"a": 0.0, "b": 0.0, "c": 1.0}


# --- balanced ----------------------------------------------------------------------------------


def test_balanced_single_node_owns_everything() -> None:
    ring = Ring(["a"])
    assert ring.ranges() == [Range(0, SPACE, "a")]
    assert slot_counts(ring) == Counter({"a": SLOTS})


def test_balanced_is_default_and_ignores_vnodes_for_placement() -> None:
    assert Ring(["a", "b"]).algorithm is Algorithm.BALANCED
    assert Ring(["a", "b"], vnodes=1).ranges() == Ring(["a", "b"], vnodes=999).ranges()


def test_balanced_four_nodes_then_fifth_on_200k_keys() -> None:
    old_nodes = ["s1", "s2", "s3", "s4"]
    four = Ring(old_nodes)
    five = four.with_node("s5")
    assert five == Ring([*old_nodes, "s5"])

    counts4 = slot_counts(four)
    assert max(counts4.values()) - min(counts4.values()) <= 1
    counts5 = slot_counts(five)
    assert max(counts5.values()) - min(counts5.values()) <= 1
    assert abs(counts5["s5"] - SLOTS / 5) <= 1

    keys = uuid_keys(200_000, seed=4)
    before = [four.node_for(k) for k in keys]
    after = [five.node_for(k) for k in keys]
    assert max_over_mean(Counter(before), four.nodes) <= 1.01
    assert max_over_mean(Counter(after), five.nodes) <= 1.01

    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(b == "s5" for _, b in moved), "a key moved between old nodes"
    assert abs(len(moved) / len(keys) - 1 / 5) < 0.01


def test_balanced_slot_counts_stay_within_one_as_nodes_join() -> None:
    ring = Ring(["n0"])
    for n in range(1, 12):
        grown = ring.with_node(f"n{n}")
        counts = slot_counts(grown)
        assert sum(counts.values()) == SLOTS
        assert max(counts.values()) - min(counts.values()) <= 1
        # Quotas' extra slots go to the earliest nodes.
        assert [counts[x] for x in grown.nodes] == sorted(counts.values(), reverse=True)
        moves = ring.moves_to(grown)
        assert {m.target for m in moves} == {f"n{n}"}
        assert len(moves) <= 2 * len(grown.nodes), "moved slots should form few runs"
        ring = grown


def test_balanced_ranges_sit_on_slot_boundaries() -> None:
    width = 1 << SLOT_SHIFT
    for r in Ring(["a", "b", "c", "d", "e", "f", "g"]).ranges():
        assert r.start % width == 0
        assert r.end % width == 0


# --- properties over random rings -------------------------------------------------------------

names = st.text(alphabet="abcdefgh-0123456789", min_size=1, max_size=6)
node_lists = st.lists(names, min_size=1, max_size=8, unique=True)
algorithms = st.sampled_from(list(Algorithm))
vnode_counts = st.integers(min_value=1, max_value=160)
positions = st.integers(min_value=0, max_value=SPACE - 1)
fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(nodes=node_lists, algorithm=algorithms, vnodes=vnode_counts)
def test_ranges_tile_the_circle(nodes: list[str], algorithm: Algorithm, vnodes: int) -> None:
    ring = Ring(nodes, vnodes, algorithm)
    ranges = ring.ranges()
    assert tiles_circle(ranges)
    assert all(a.owner != b.owner for a, b in pairwise(ranges))
    assert {r.owner for r in ranges} <= set(nodes)
    for node in nodes:
        assert ring.ranges_of(node) == [r for r in ranges if r.owner == node]


@fast
@given(
    nodes=node_lists,
    algorithm=algorithms,
    vnodes=vnode_counts,
    probes=st.lists(positions, min_size=1, max_size=50),
)
def test_node_for_position_is_owner_of_containing_range(
    nodes: list[str], algorithm: Algorithm, vnodes: int, probes: list[int]
) -> None:
    ring = Ring(nodes, vnodes, algorithm)
    ranges = ring.ranges()
    starts = [r.start for r in ranges]
    edges = [p for r in ranges for p in (r.start, r.end - 1)]
    for p in [*probes, *edges]:
        r = ranges[bisect.bisect_right(starts, p) - 1]
        assert r.contains(p)
        assert ring.node_for_position(p) == r.owner


@fast
@given(nodes=node_lists, algorithm=algorithms, vnodes=vnode_counts)
def test_shares_sum_to_one(nodes: list[str], algorithm: Algorithm, vnodes: int) -> None:
    ring = Ring(nodes, vnodes, algorithm)
    shares = ring.shares()
    assert list(shares) == nodes
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    for node in nodes:
        assert shares[node] == pytest.approx(sum(r.share for r in ring.ranges_of(node)))


@fast
@given(nodes=node_lists, algorithm=algorithms, vnodes=vnode_counts, new=names)
def test_with_node_moves_only_to_the_new_node(
    nodes: list[str], algorithm: Algorithm, vnodes: int, new: str
) -> None:
    new = new + "-new"
    ring = Ring(nodes, vnodes, algorithm)
    grown = ring.with_node(new)
    built = Ring([*nodes, new], vnodes, algorithm)
    assert grown == built
    assert hash(grown) == hash(built)
    assert grown.ranges() == built.ranges()
    moves = ring.moves_to(grown)
    assert all(m.target == new and m.source in nodes for m in moves)
    moved = sum(m.end - m.start for m in moves)
    assert moved == sum(r.end - r.start for r in grown.ranges_of(new))
    assert sum(m.share for m in moves) == pytest.approx(grown.shares()[new])
    for key in mixed_keys(30, seed=len(nodes)):
        assert grown.node_for(key) == built.node_for(key)


@fast
@given(
    a=node_lists,
    b=node_lists,
    algo_a=algorithms,
    algo_b=algorithms,
    vnodes=vnode_counts,
    probes=st.lists(positions, min_size=1, max_size=100),
)
def test_moves_agree_with_lookups(
    a: list[str],
    b: list[str],
    algo_a: Algorithm,
    algo_b: Algorithm,
    vnodes: int,
    probes: list[int],
) -> None:
    old, new = Ring(a, vnodes, algo_a), Ring(b, vnodes, algo_b)
    moves = old.moves_to(new)
    assert all(m.source != m.target for m in moves)
    assert all(x.end <= y.start for x, y in pairwise(moves))
    # Maximal: touching moves must differ in source or target.
    for x, y in pairwise(moves):
        assert x.end < y.start or (x.source, x.target) != (y.source, y.target)
    edges = [p for m in moves for p in (m.start, m.end - 1, m.end) if p < SPACE]
    starts = [m.start for m in moves]
    for p in [*probes, *edges]:
        i = bisect.bisect_right(starts, p) - 1
        hit = moves[i] if i >= 0 and moves[i].contains(p) else None
        src, dst = old.node_for_position(p), new.node_for_position(p)
        if src == dst:
            assert hit is None
        else:
            assert hit is not None
            assert (hit.source, hit.target) == (src, dst)


@fast
@given(nodes=node_lists, vnodes=st.integers(min_value=1, max_value=40), keys=st.lists(names))
def test_md5_moves_match_sampled_keys(nodes: list[str], vnodes: int, keys: list[str]) -> None:
    old = Ring(nodes, vnodes, "md5")
    new = old.with_node("zz-new")
    moves = old.moves_to(new)
    for key in [*keys, *mixed_keys(200, seed=vnodes)]:
        p = position(key)
        moved = any(m.contains(p) for m in moves)
        assert moved == (old.node_for(key) != new.node_for(key))


@fast
@given(nodes=node_lists, algorithm=algorithms, vnodes=vnode_counts)
def test_ring_moves_to_itself_is_empty(nodes: list[str], algorithm: Algorithm, vnodes: int) -> None:
    ring = Ring(nodes, vnodes, algorithm)
    assert ring.moves_to(Ring(nodes, vnodes, algorithm)) == []


# --- ranges and SQL bounds --------------------------------------------------------------------


def test_sql_bounds_select_the_same_keys_as_contains() -> None:
    ring = Ring(["a", "b", "c"], vnodes=8, algorithm="md5")
    ranges = ring.ranges()
    assert ranges[-1].sql_bounds()[1] is None
    assert ranges[0].sql_bounds()[0] == "0" * 32
    for key in mixed_keys(3000, seed=9):
        h, p = position_hex(key), position(key)
        for r in ranges:
            lo, hi = r.sql_bounds()
            in_sql = h >= lo and (hi is None or h < hi)
            assert in_sql == r.contains(p)
        assert sum(r.contains(p) for r in ranges) == 1


def test_range_fields_and_validation() -> None:
    r = Range(0, SPACE, "a")
    assert (r.start_hex, r.end_hex, r.share) == ("0" * 32, None, 1.0)
    assert r.contains(0) and r.contains(SPACE - 1) and not r.contains(SPACE)
    half = Range(SPACE // 2, SPACE, "b")
    assert half.start_hex == "8" + "0" * 31
    assert half.share == 0.5
    assert Range(1, 2, "a").end_hex == "0" * 31 + "2"
    m = Move(5, 10, "a", "b")
    assert (m.sql_bounds(), m.share) == (("0" * 31 + "5", "0" * 31 + "a"), 5 / SPACE)
    for start, end in [(5, 5), (6, 5), (-1, 3), (0, SPACE + 1)]:
        with pytest.raises(ValueError, match="start < end"):
            Range(start, end, "a")
    with pytest.raises(AttributeError):
        r.owner = "b"  # type: ignore[misc]


# --- identity and serialisation -----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["md5", "balanced"])
def test_to_dict_round_trips(algorithm: str) -> None:
    ring = Ring(["s1", "s2", "s3"], vnodes=32, algorithm=algorithm)
    data = json.loads(json.dumps(ring.to_dict()))
    assert data == {"algorithm": algorithm, "nodes": ["s1", "s2", "s3"], "vnodes": 32}
    again = Ring.from_dict(data)
    assert again == ring and hash(again) == hash(ring)
    assert again.ranges() == ring.ranges()


def test_equality_depends_on_algorithm_order_and_vnodes() -> None:
    base = Ring(["a", "b"], 10, "md5")
    assert base == Ring(("a", "b"), 10, Algorithm.MD5)
    assert base != Ring(["b", "a"], 10, "md5")
    assert base != Ring(["a", "b"], 11, "md5")
    assert base != Ring(["a", "b"], 10, "balanced")
    assert base != "Ring"
    assert len({base, Ring(["a", "b"], 10, "md5")}) == 1
    assert "md5" in repr(base)


def test_algorithm_is_a_string_enum() -> None:
    assert Algorithm("md5") is Algorithm.MD5
    assert isinstance(Algorithm.BALANCED, str)
    assert str(Algorithm.BALANCED) == "balanced"
    assert {"balanced": 1}[Algorithm.BALANCED] == 1
    assert Ring(["a"], algorithm=Algorithm.MD5).algorithm is Algorithm.MD5


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": []}, "at least one node"),
        ({"nodes": ["a", "b", "a"]}, "duplicate node names: a"),
        ({"nodes": ["a", ""]}, "non-empty strings"),
        ({"nodes": ["a", 3]}, "non-empty strings"),
        ({"nodes": "ab"}, "not the string"),
        ({"nodes": ["a"], "vnodes": 0}, "vnodes must be an int >= 1"),
        ({"nodes": ["a"], "vnodes": -3}, "vnodes must be an int >= 1"),
        ({"nodes": ["a"], "algorithm": "sha1"}, "unknown ring algorithm 'sha1'.*'md5', 'balanced'"),
        ({"nodes": ["a"], "algorithm": "MD5"}, "unknown ring algorithm"),
    ],
)
def test_bad_rings_raise_clear_value_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ring(**kwargs)  # type: ignore[arg-type]


def test_other_errors() -> None:
    ring = Ring(["a", "b"])
    with pytest.raises(ValueError, match="duplicate node names: b"):
        ring.with_node("b")
    with pytest.raises(ValueError, match="unknown node 'c'"):
        ring.ranges_of("c")
    for bad in (-1, SPACE):
        with pytest.raises(ValueError, match="position must be"):
            ring.node_for_position(bad)
    with pytest.raises(ValueError, match="missing nodes"):
        Ring.from_dict({"algorithm": "md5"})
    with pytest.raises(ValueError, match="unknown fields: colour"):
        Ring.from_dict({"algorithm": "md5", "nodes": ["a"], "colour": "red"})
    with pytest.raises(ValueError, match="unknown ring algorithm"):
        Ring.from_dict({"algorithm": "rendezvous", "nodes": ["a"]})


def test_a_span_contains_its_start_not_its_end_and_reads_back_from_hex() -> None:
    move = Move(*hex_bounds("4" * 32, "8" * 32), "s", "t")
    assert move.contains(int("4" * 32, 16)) and not move.contains(int("8" * 32, 16))
    assert (move.start_hex, move.end_hex) == ("4" * 32, "8" * 32)
    assert isinstance(move, Span)
    circle = Move(*hex_bounds("0" * 32, None), "s", "t")
    assert (circle.start, circle.end) == (0, SPACE) and circle.end_hex is None
    assert circle.contains(0) and circle.contains(SPACE - 1)
