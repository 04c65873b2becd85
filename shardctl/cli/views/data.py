"""``distribution`` and ``ring``: where the data is, against the ring."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from shardctl.health.distribution import Distribution
from shardctl.health.ringview import RingReport

SHARE_DIGITS = 6
"""Shares of the ring in JSON are fractions rounded to 6 decimals (tables show 0.0%)."""


def ring_facts(report: RingReport) -> dict[str, Any]:
    """The ``ring -o json`` document; ``shard`` names a shard, as in every command."""
    return {
        "cluster": report.cluster,
        "epoch": report.epoch,
        "algorithm": report.algorithm,
        "vnodes": report.vnodes,
        "shards": [
            {
                "shard": n.name,
                "share": round(n.share, SHARE_DIGITS),
                "ranges": n.ranges,
                "primary_epoch": report.primaries.get(n.name),
            }
            for n in report.nodes
        ],
        "primaries": report.primaries,
        "problems": report.problems,
        "warnings": report.warnings,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def distribution_table(result: Distribution) -> Table:
    """The ``distribution`` table: one row per table and shard, then a total per table."""
    table = Table(
        title=f"cluster {result.cluster} · ring epoch {result.epoch} ({result.algorithm})",
        title_justify="left",
    )
    table.add_column("table")
    table.add_column("shard")
    for name in ("rows", "expected", "actual", "misplaced", "duplicates"):
        table.add_column(name, justify="right")
    for summary in result.tables:
        for row in (r for r in result.shards if r.table == summary.table):
            table.add_row(
                row.table,
                row.shard,
                f"{row.rows:,}",
                _pct(row.expected_share),
                _pct(row.actual_share),
                _count(row.misplaced),
                _count(row.duplicates),
            )
        skew = "-" if summary.skew is None else f"skew {summary.skew:.3f}"
        table.add_row(
            f"[bold]{summary.table}[/]",
            "[bold]all[/]",
            f"[bold]{summary.rows:,}[/]",
            "100.0%",
            skew,
            _count(summary.misplaced),
            _count(summary.duplicates),
            end_section=True,
        )
    return table


def _count(n: int) -> str:
    return f"[red]{n:,}[/]" if n else "0"


def distribution_verdict(result: Distribution) -> str:
    """One line under the ``distribution`` table: ok, or how many keys are out of place."""
    if result.ok:
        return "[green]ok[/]: every key is on its ring owner, and on one shard only"
    return (
        f"[red]misplaced {result.misplaced:,}, duplicated {result.duplicates:,}[/]: "
        "keys are not where the ring puts them (a reshard in progress, or writes that bypassed "
        "the Router)"
    )


def ring_table(report: RingReport) -> Table:
    """The ``ring`` table: one row per ring node."""
    vnodes = f", {report.vnodes} vnodes" if report.algorithm == "md5" else ""
    table = Table(
        title=f"cluster {report.cluster} · ring epoch {report.epoch} · {report.algorithm}{vnodes}",
        title_justify="left",
    )
    table.add_column("shard")
    table.add_column("share", justify="right")
    table.add_column("ranges", justify="right")
    table.add_column("primary holds epoch", justify="right")
    for node in report.nodes:
        epoch = report.primaries.get(node.name)
        table.add_row(
            node.name, _pct(node.share), str(node.ranges), "-" if epoch is None else str(epoch)
        )
    for shard, epoch in report.primaries.items():
        if all(node.name != shard for node in report.nodes):
            held = "-" if epoch is None else str(epoch)
            table.add_row(f"{shard} [dim](not in the ring)[/]", "0.0%", "0", held)
    return table
