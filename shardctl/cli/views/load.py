"""``load``: the load test's tables, the bulk loader's, the ledger check's."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from shardctl.workload.bulk import BulkReport
from shardctl.workload.ledger import VerifyReport
from shardctl.workload.report import LoadReport


def load_table(report: LoadReport, cluster: str) -> Table:
    """The load table: per op type and in total."""
    epochs = report.epochs
    epoch = str(epochs[0]) if epochs[0] == epochs[1] else f"{epochs[0]}→{epochs[1]}"
    table = Table(
        title=f"load · cluster {cluster} · "
        + (f"users {report.users:,} · " if report.users != report.workers else "")
        + f"concurrency {report.workers} · "
        f"{report.seconds:.1f}s · ring epoch {epoch}",
        title_justify="left",
    )
    table.add_column("op")
    for name in ("ops", "ok", "failed", "success", "ops/s", "mean ms", "p50", "p95", "p99"):
        table.add_column(name, justify="right")
    table.add_column("max", justify="right")
    for row in [*report.per_op, report.total]:
        style = "bold" if row.op == "total" else ""
        table.add_row(
            row.op,
            f"{row.ops:,}",
            f"{row.ok:,}",
            f"[red]{row.failed:,}[/]" if row.failed else "0",
            f"{row.success_rate * 100:.2f}%",
            f"{row.throughput:,.0f}",
            f"{row.mean_ms:.2f}",
            f"{row.p50_ms:.2f}",
            f"{row.p95_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.max_ms:.1f}",
            style=style,
            end_section=row.op == "delete",
        )
    return table


def users_table(reports: list[LoadReport], cluster: str) -> Table:
    """The virtual users table: one row per user count (all op types together)."""
    first = reports[0] if reports else None
    table = Table(
        title=f"load · cluster {cluster} · {first.workers if first else 0} workers",
        title_justify="left",
    )
    table.add_column("concurrent users", justify="right")
    for name in ("ops", "throughput", "success rate", "mean response", "p50", "p95", "p99"):
        table.add_column(name, justify="right")
    for report in reports:
        total = report.total
        table.add_row(
            f"{report.users:,}",
            f"{total.ops:,}",
            f"{total.throughput:,.0f} ops/s",
            f"[red]{total.success_rate * 100:.2f}%[/]"
            if total.failed
            else f"{total.success_rate * 100:.2f}%",
            f"{total.mean_ms:,.1f} ms",
            f"{total.p50_ms:,.1f}",
            f"{total.p95_ms:,.1f}",
            f"{total.p99_ms:,.1f}",
        )
    return table


def bulk_table(result: BulkReport) -> Table:
    """The ``load --bulk`` table: rows per shard."""
    table = Table(title=f"bulk load · ring epoch {result.epoch}", title_justify="left")
    table.add_column("shard")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for shard, count in result.per_shard.items():
        share = count / result.rows if result.rows else 0.0
        table.add_row(shard, f"{count:,}", f"{share * 100:.1f}%")
    return table


def ledger_table(result: VerifyReport, paths: list[Path]) -> Table:
    """Counts of the ledger check, then the first problems found."""
    table = Table(title=f"ledger check · {', '.join(map(str, paths))}", title_justify="left")
    for name in ("keys", "ops", "present", "deleted", "uncertain"):
        table.add_column(name, justify="right")
    for name in ("lost", "stale", "resurrected", "misplaced"):
        table.add_column(name, justify="right")
    bad = [result.lost, result.stale, result.resurrected, result.misplaced]
    table.add_row(
        f"{result.keys:,}",
        f"{result.ops:,}",
        f"{result.present:,}",
        f"{result.absent:,}",
        f"{result.uncertain:,}",
        *(f"[red]{n:,}[/]" if n else "0" for n in bad),
    )
    return table
