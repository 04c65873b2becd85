"""Pure resharding logic: phases, chunking, plan round trip."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardctl.ring.hashing import SPACE, Move, Ring, Span
from shardctl.state.plan import (
    FORWARD,
    Chunk,
    MoveSize,
    Phase,
    Plan,
    finished,
    make_plan,
    merged,
    next_phase,
    split,
    without_node,
)


def test_phases_run_forward_to_done() -> None:
    phase = Phase.PLANNED
    seen = [phase]
    while phase is not Phase.DONE:
        phase = next_phase(phase)
        seen.append(phase)
    assert tuple(seen) == FORWARD
    with pytest.raises(ValueError):
        next_phase(Phase.DONE)
    with pytest.raises(ValueError):
        next_phase(Phase.ABORTED)


def test_done_and_aborted_are_finished() -> None:
    assert finished(Phase.ABORTED) and finished(Phase.DONE) and not finished(Phase.COPYING)


@given(
    start=st.integers(0, SPACE - 2),
    width=st.integers(1, SPACE),
    rows=st.integers(0, 10**6),
    per=st.integers(1, 10**5),
)
def test_chunks_tile_their_move_exactly(start: int, width: int, rows: int, per: int) -> None:
    end = min(SPACE, start + width)
    move = Move(start, end, "a", "b")
    chunks = split(3, move, rows, per)
    assert chunks[0].start == start and chunks[-1].end == end
    assert all(a.end == b.start for a, b in itertools.pairwise(chunks))
    assert all(c.move == 3 and c.start < c.end for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)
    assert len(chunks) <= max(1, -(-rows // per))


def test_top_chunk_has_no_upper_bound() -> None:
    (chunk,) = split(0, Move(SPACE // 2, SPACE, "a", "b"), 10, 100)
    assert chunk.end_hex is None
    assert chunk.start_hex == "8" + "0" * 31


@pytest.mark.parametrize("algorithm", ["md5", "balanced"])
def test_plan_moves_only_to_the_new_node_and_round_trips(algorithm: str) -> None:
    old = Ring(["shard-0", "shard-1"], vnodes=20, algorithm=algorithm)
    new = old.with_node("shard-2")
    n = len(old.moves_to(new))
    plan = make_plan(7, 3, old, new, [MoveSize(100_000, 10**7)] * n, rows_per_chunk=30_000)
    assert plan.targets() == ["shard-2"]
    assert set(plan.sources()) <= {"shard-0", "shard-1"}
    assert plan.rows == 100_000 * n
    assert len(plan.chunks) == 4 * n
    assert sorted(i for s in plan.sources() for i in plan.moves_from(s)) == list(range(n))
    assert Plan.from_json(plan.to_json()) == plan


def test_a_chunk_is_a_span_of_the_circle() -> None:
    chunk = Chunk(5, SPACE, "0.1", 0)
    assert isinstance(chunk, Span) and chunk.start_hex == f"{5:032x}" and chunk.end_hex is None
    with pytest.raises(ValueError):
        Chunk(9, 9, "0.2", 0)


@pytest.mark.parametrize("per_batch", [1, 2_000, 45_000, 10**9])
def test_batches_cover_each_pair_once_in_bounded_groups(per_batch: int) -> None:
    # A removal: one source gives ~120 small ranges to every other shard.
    old = Ring([f"shard-{i}" for i in range(5)], vnodes=150, algorithm="md5")
    new = without_node(old, "shard-2")
    moves = old.moves_to(new)
    sizes = [MoveSize(1_000 + 700 * (i % 5), 10**5) for i in range(len(moves))]
    plan = make_plan(1, 1, old, new, sizes, rows_per_chunk=1_500)
    seen: list[str] = []
    for target in plan.targets():
        groups = plan.batches("shard-2", target, per_batch)
        for group in groups:
            assert all(plan.moves[c.move].target == target for c in group)
            assert all(a.start < b.start for a, b in itertools.pairwise(group))
            rows = sum(plan.chunk_rows(c) for c in group)
            assert len(group) == 1 or rows <= per_batch
        for a, b in itertools.pairwise(groups):  # a batch closes only when the next chunk
            assert sum(plan.chunk_rows(c) for c in (*a, b[0])) > per_batch  # would not fit
        seen += [c.id for group in groups for c in group]
    assert sorted(seen) == sorted(c.id for c in plan.chunks)
    assert plan.batches("shard-0", "shard-1", per_batch) == []
    if per_batch == 10**9:
        assert all(len(plan.batches("shard-2", t, per_batch)) == 1 for t in plan.targets())


def test_merged_joins_touching_spans_only() -> None:
    spans = [Span(50, 60), Span(0, 10), Span(10, 20), Span(30, 40), Span(35, 45), Span(45, 50)]
    assert merged(spans) == [Span(0, 20), Span(30, 60)]
    assert merged([]) == []
    assert merged([Span(5, SPACE), Span(0, 5)]) == [Span(0, SPACE)]


def test_chunk_rows_share_the_move_evenly() -> None:
    old = Ring(["a"], vnodes=1)
    new = old.with_node("b")
    sizes = [MoveSize(90_000, 1)] * len(old.moves_to(new))
    plan = make_plan(1, 1, old, new, sizes, rows_per_chunk=30_000)
    assert {plan.chunk_rows(c) for c in plan.chunks} == {30_000}
