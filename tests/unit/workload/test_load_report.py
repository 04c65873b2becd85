"""The load test's report: nearest-rank percentiles, per-op summaries, merging what several
workers measured, the virtual users' key bookkeeping, and ``--users`` parsing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardctl.cli.load import MAX_USERS, parse_users
from shardctl.config.topology import parse
from shardctl.errors import UsageError
from shardctl.workload.load import HEADROOM, pooled_limit
from shardctl.workload.report import OPS, Stats, percentile, report, summary
from shardctl.workload.users import VirtualUser

fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
latency = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)


@fast
@given(st.lists(latency, min_size=1, max_size=300), st.floats(min_value=0.01, max_value=100.0))
def test_a_percentile_is_the_smallest_value_with_p_percent_at_or_below_it(
    values: list[float], p: float
) -> None:
    ordered = sorted(values)
    found = percentile(ordered, p)
    assert found in ordered
    at_or_below = sum(1 for v in ordered if v <= found)
    below = sum(1 for v in ordered if v < found)
    assert at_or_below >= len(ordered) * p / 100 - 1e-9
    assert below < len(ordered) * p / 100 + 1e-9


@fast
@given(st.lists(latency, min_size=1, max_size=300))
def test_percentiles_are_ordered_and_bounded(values: list[float]) -> None:
    ordered = sorted(values)
    p50, p95, p99, p100 = (percentile(ordered, p) for p in (50, 95, 99, 100))
    assert ordered[0] <= p50 <= p95 <= p99 <= p100 == ordered[-1]


@fast
@given(
    st.lists(latency, max_size=200),
    st.data(),
    st.floats(min_value=0.1, max_value=1000.0),
)
def test_a_summary_counts_failures_and_reports_ms(
    latencies: list[float], data: st.DataObject, seconds: float
) -> None:
    failed = data.draw(st.integers(min_value=0, max_value=len(latencies)))
    failures = data.draw(
        st.lists(st.sampled_from(["E: a", "E: b"]), min_size=failed, max_size=failed)
    )
    s = summary("insert", latencies, failures, seconds)
    assert (s.ops, s.failed, s.ok) == (len(latencies), failed, len(latencies) - failed)
    assert s.success_rate == (1.0 if not latencies else (len(latencies) - failed) / len(latencies))
    assert math.isclose(s.throughput, s.ok / seconds)
    assert sum(s.errors.values()) == failed
    if latencies:
        low, high = min(latencies) * 1000, max(latencies) * 1000
        assert low <= s.p50_ms <= s.p95_ms <= s.p99_ms <= s.max_ms == pytest.approx(high)
        assert low - 1e-6 <= s.mean_ms <= high + 1e-6
    else:
        assert s.mean_ms == s.p50_ms == s.max_ms == 0.0


def test_a_summary_of_known_latencies() -> None:
    s = summary("read", [i / 1000 for i in range(1, 101)], ["X: boom"] * 3, 2.0)
    assert (s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms) == pytest.approx((50, 95, 99, 100))
    assert s.mean_ms == pytest.approx(50.5)
    assert s.success_rate == pytest.approx(0.97)
    assert s.throughput == pytest.approx(48.5)
    assert s.errors == {"X: boom": 3}


def _stats(latencies: dict[str, list[float]], failures: dict[str, list[str]]) -> Stats:
    stats = Stats()
    for op in OPS:
        stats.latencies[op] = list(latencies.get(op, []))
        stats.failures[op] = list(failures.get(op, []))
    return stats


def test_a_report_merges_what_every_worker_measured() -> None:
    one = _stats({"insert": [0.001, 0.003], "read": [0.002]}, {"insert": ["E: x"]})
    two = _stats({"insert": [0.002], "delete": [0.004]}, {})
    one.anomalies, two.anomalies = 1, 2
    r = report([one, two], 2.0, workers=2, users=1000, epochs=(3, 4))
    assert (r.workers, r.users, r.epochs) == (2, 1000, (3, 4))
    assert [s.op for s in r.per_op] == list(OPS)
    per_op = {s.op: s for s in r.per_op}
    assert (per_op["insert"].ops, per_op["insert"].failed) == (3, 1)
    assert (per_op["read"].ops, per_op["update"].ops, per_op["delete"].ops) == (1, 0, 1)
    assert (r.ops, r.ok, r.failed) == (5, 4, 1)
    assert r.total.max_ms == pytest.approx(4.0)
    assert r.success_rate == pytest.approx(0.8) and r.throughput == pytest.approx(2.0)
    assert r.anomalies == 3


@fast
@given(st.lists(st.sampled_from(["add", "retire"]), max_size=60))
def test_a_user_forgets_exactly_the_keys_it_retires(steps: list[str]) -> None:
    user, expected, n = VirtualUser(7, seed=1), set(), 0
    for step in steps:
        if step == "add" or not user.live:
            key = f"k{n}"
            n += 1
            user.live.append(key)
            expected.add(key)
        else:
            key = user.live[user.rng.randrange(len(user.live))]
            user.retire(key)
            expected.discard(key)
        assert set(user.live) == expected and len(user.live) == len(expected)


def test_users_with_a_seed_are_reproducible_and_distinct() -> None:
    draws = [[VirtualUser(i, seed=5).rng.random() for i in range(3)] for _ in range(2)]
    assert draws[0] == draws[1] and len(set(draws[0])) == 3


def test_users_option_takes_one_count_or_several() -> None:
    assert parse_users("10000") == [10000]
    assert parse_users("1000, 5000,10_000") == [1000, 5000, 10000]
    for bad in ("", "0", "-5", "1000,", "ten", "1e4", str(MAX_USERS + 1), "nan", "1000;5000"):
        with pytest.raises(UsageError, match="--users"):
            parse_users(bad)


def test_through_poolers_on_every_node_the_limit_is_the_smallest_max_client_conn() -> None:
    shards = "cluster: demo\nshards:\n  - name: a\n    replicas: 1\n  - name: b\n"
    every = parse("pooler: {max_client_conn: 500}\n" + shards, Path("topology.yaml"))
    assert pooled_limit(every) == 500 - HEADROOM
    override = shards + "    pooler: {max_client_conn: 200}\n"
    assert pooled_limit(parse("pooler: {}\n" + override, Path("t.yaml"))) == 200 - HEADROOM
    # A node without a pooler is reached directly: the servers' max_connections holds.
    assert pooled_limit(parse("pooler: {replicas: false}\n" + shards, Path("t.yaml"))) is None
    assert pooled_limit(parse(shards, Path("t.yaml"))) is None
    tiny = parse("pooler: {max_client_conn: 3}\n" + shards, Path("t.yaml"))
    assert pooled_limit(tiny) == 1
