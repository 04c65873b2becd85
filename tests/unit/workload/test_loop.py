"""The loop engine's pure part: how ops in flight and connections are shared between loops."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shardctl.workload.loop import enough, split


def test_sixteen_workers_make_four_loops_of_four_with_one_connection_left_per_node() -> None:
    assert split(16, 4, 15) == [(4, 4), (4, 4), (4, 4), (4, 3)]


def test_fewer_loops_than_asked_when_ops_or_connections_are_fewer() -> None:
    assert split(2, 4, 15) == [(1, 8), (1, 7)]
    assert split(8, 8, 3) == [(3, 1), (3, 1), (2, 1)]
    assert split(1, 1, 1) == [(1, 1)]


@given(st.integers(1, 256), st.integers(1, 256), st.integers(1, 256))
def test_every_op_and_no_more_than_the_spare_connections_are_shared_out(
    width: int, wanted: int, spare: int
) -> None:
    shares = split(width, wanted, spare)
    assert sum(w for w, _ in shares) == width
    assert sum(m for _, m in shares) == spare  # the pool's last connection stays the Router's
    assert all(w >= 1 and m >= 1 for w, m in shares)
    assert len(shares) <= wanted


def test_a_loop_holds_its_even_share_of_connections_per_node_and_two_more() -> None:
    assert enough(16, 4) == 6
    assert enough(4, 4) == 3
    assert enough(2, 4) == 2  # never more than its ops
    assert enough(16, 1) == 16


@given(st.integers(1, 512), st.integers(1, 64))
def test_a_loop_can_always_carry_its_ops_on_as_many_shards(width: int, shards: int) -> None:
    most = enough(width, shards)
    assert 1 <= most <= width
    assert most * shards >= width  # every op in flight can have a connection at once
