"""A base backup's bytes, rate and time left, per shard and for the cluster (pure)."""

from __future__ import annotations

import pytest

from shardctl.cli.progress import copied_text
from shardctl.ops.backup.progress import Copied, Meter, time_left, total


def test_rate_and_time_left_over_a_moving_window() -> None:
    meter = Meter("s0", window=5.0)
    first = meter.sample(100.0, "streaming database files", 0, 1000)
    assert first.rate is None and first.eta is None and first.fraction == 0.0
    second = meter.sample(101.0, "streaming database files", 100, 1000)
    assert second.rate == pytest.approx(100.0)
    assert second.eta == pytest.approx(9.0)
    # Faster now: samples older than the window stop counting, the rate follows.
    for at in range(2, 12):
        now = meter.sample(100.0 + at, "streaming database files", 100 + (at - 1) * 50, 1000)
    assert now.rate == pytest.approx(50.0)
    assert now.eta == pytest.approx((1000 - 600) / 50.0)


def test_unknown_estimate_a_retry_and_an_exceeded_estimate() -> None:
    meter = Meter("s0")
    meter.sample(0.0, "estimating backup size", 0, None)
    no_total = meter.sample(1.0, "streaming database files", 500, None)
    assert no_total.rate == 500.0 and no_total.eta is None and no_total.fraction is None
    # The copy started again (fewer bytes than before): the rate starts again too.
    again = meter.sample(2.0, "streaming database files", 10, 100)
    assert again.rate is None
    # The estimate is an estimate: more than it is 100 %, never negative time left.
    over = meter.sample(3.0, "transferring wal files", 150, 100)
    assert over.fraction == 1.0 and over.eta == 0.0
    assert time_left(10, 100, 0.0) is None and time_left(10, 100, 9.0) == pytest.approx(10.0)


def test_the_cluster_total_is_summed_and_waits_for_the_slowest_shard() -> None:
    a = Copied("s0", "streaming database files", 300, 1000, 100.0, 7.0)
    b = Copied("s1", "streaming database files", 100, 500, 20.0, 20.0)
    both = total([a, b])
    assert (both.streamed, both.total, both.rate, both.eta) == (400, 1500, 120.0, 20.0)
    assert not both.done and both.phase == "copying"
    # A finished shard no longer counts for rate and time left; all done is 0 s left.
    done = Copied("s1", "copied", 500, 500, 25.0, 0.0, done=True)
    assert total([a, done]).eta == 7.0 and total([a, done]).rate == 100.0
    assert total([done]).done and total([done]).eta == 0.0
    # All done: the rate of them all, which copied at once.
    finished = Copied("s0", "copied", 1000, 1000, 80.0, 0.0, done=True)
    assert total([finished, done]).rate == 105.0
    # One shard without an estimate yet: the total has none either.
    unknown = Copied("s2", "estimating backup size", 0, None, None, None)
    assert total([a, unknown]).total is None and total([a, unknown]).eta is None


def test_the_line_people_read() -> None:
    line = copied_text(Copied("s0", "streaming", 3 * 1024**2, 12 * 1024**2, 1024**2, 125.0))
    assert line == "3.0 MiB of ~12.0 MiB (25%), 1.0 MiB/s, 2:05 left"
    finished = copied_text(
        Copied("s0", "copied", 12 * 1024**2, 12 * 1024**2, 2 * 1024**2, 0.0, True)
    )
    assert finished == "12.0 MiB, 2.0 MiB/s"
    assert copied_text(Copied("s0", "x", 0, None, None, None)) == "0 B"
    assert copied_text(Copied("s0", "x", 0, 10, 1.0, 4000.0)).endswith("1:06:40 left")
