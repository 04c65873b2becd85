"""What a load run measured, summed up: throughput, success rate and latency percentiles
(response times, the wait for a worker included) per op type and in total."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

OPS = ("insert", "read", "update", "delete")


@dataclass
class Stats:
    """What one worker thread measured (for every user it served)."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    failures: dict[str, list[str]] = field(default_factory=lambda: {op: [] for op in OPS})
    anomalies: int = 0
    done: int = 0


@dataclass(frozen=True)
class OpSummary:
    """Counts and latencies of one op type (or of all, as ``total``)."""

    op: str
    ops: int
    ok: int
    failed: int
    success_rate: float
    throughput: float
    """Successful ops per second."""
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    """Failed ops by error, first line of the message."""


@dataclass(frozen=True)
class LoadReport:
    """What a load run did."""

    workers: int
    users: int
    """Virtual users (concurrent users, in the virtual users table): the workers when not given."""
    seconds: float
    ops: int
    ok: int
    failed: int
    success_rate: float
    throughput: float
    per_op: list[OpSummary]
    total: OpSummary
    anomalies: int
    """Acknowledged updates/deletes/primary reads that found no row where one was expected."""
    epochs: tuple[int, int]
    """The ring epoch at the start and at the end."""
    ledger: str | None = None
    warm_up: int = 0
    """Inserts that gave new virtual users their first key before the run (not in ``ops``;
    in the ledger)."""


@dataclass(frozen=True)
class LoadProgress:
    """A snapshot while running."""

    ops: int
    failed: int
    seconds: float
    duration: float | None
    target_ops: int | None


def report(
    stats: Sequence[Stats],
    seconds: float,
    *,
    workers: int,
    users: int,
    epochs: tuple[int, int],
    ledger: str | None = None,
    warm_up: int = 0,
) -> LoadReport:
    """The report of a run from what each worker measured."""
    per_op = []
    every: list[float] = []
    all_failures: list[str] = []
    for op in OPS:
        latencies = [x for s in stats for x in s.latencies[op]]
        failures = [x for s in stats for x in s.failures[op]]
        every += latencies
        all_failures += failures
        per_op.append(summary(op, latencies, failures, seconds))
    total = summary("total", every, all_failures, seconds)
    return LoadReport(
        workers=workers,
        users=users,
        seconds=seconds,
        ops=total.ops,
        ok=total.ok,
        failed=total.failed,
        success_rate=total.success_rate,
        throughput=total.throughput,
        per_op=per_op,
        total=total,
        anomalies=sum(s.anomalies for s in stats),
        epochs=epochs,
        ledger=ledger,
        warm_up=warm_up,
    )


def summary(op: str, latencies: list[float], failures: list[str], seconds: float) -> OpSummary:
    """Counts, throughput and latency percentiles (ms) of one op type; ``latencies`` in s,
    one per op (failed ones too), ``failures`` one message per failed op."""
    ops = len(latencies)
    failed = len(failures)
    ms = sorted(x * 1000 for x in latencies)
    errors: dict[str, int] = {}
    for failure in failures:
        errors[failure] = errors.get(failure, 0) + 1
    return OpSummary(
        op=op,
        ops=ops,
        ok=ops - failed,
        failed=failed,
        success_rate=(ops - failed) / ops if ops else 1.0,
        throughput=(ops - failed) / seconds if seconds > 0 else 0.0,
        mean_ms=statistics.fmean(ms) if ms else 0.0,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=ms[-1] if ms else 0.0,
        errors=errors,
    )


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile of sorted values (nearest rank); 0 for none."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[min(len(ordered), int(rank)) - 1]
