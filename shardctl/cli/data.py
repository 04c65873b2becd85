"""Where the data is: ``shardctl distribution`` and ``shardctl ring``."""

from __future__ import annotations

import typer
from rich.table import Table

from shardctl import catalog, render
from shardctl.cli.app import Output, OutputOption, TopologyOption, app, open_cluster
from shardctl.distribution import Distribution, measure


@app.command()
def distribution(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """Rows per table and shard against the ring: shares, skew, misplaced and duplicated keys.

    Counted on the servers. Exit 1 when any key is misplaced (on a shard the ring does not give
    it to) or stored on more than one shard.
    """
    with open_cluster(topology) as cluster:
        result = measure(cluster.topology, cluster.credentials())
    if output is Output.JSON:
        render.print_json(result)
    else:
        render.console.print(distribution_table(result))
        render.console.print(_verdict(result))
    _warn(result.warnings)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def ring(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """The live ring from the cluster's catalog: nodes, virtual nodes, shares, epoch.

    Exit 1 when the primaries disagree about the ring (an interrupted reshard).
    """
    with open_cluster(topology) as cluster:
        report = catalog.describe(cluster.topology, cluster.credentials())
    if output is Output.JSON:
        render.print_json(report)
    else:
        render.console.print(ring_table(report))
    _warn(report.problems + report.warnings)
    if report.problems:
        raise typer.Exit(1)


def _warn(lines: list[str]) -> None:
    for line in lines:
        render.err_console.print(f"[yellow]warning[/]: {render.escape(line)}")


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


def _verdict(result: Distribution) -> str:
    if result.ok:
        return "[green]ok[/]: every key is on its ring owner, and on one shard only"
    return (
        f"[red]misplaced {result.misplaced:,}, duplicated {result.duplicates:,}[/]: "
        "keys are not where the ring puts them (a reshard in progress, or writes that bypassed "
        "the Router)"
    )


def ring_table(report: catalog.RingReport) -> Table:
    """The ``ring`` table: one row per ring node."""
    vnodes = f", {report.vnodes} vnodes" if report.algorithm == "md5" else ""
    table = Table(
        title=f"cluster {report.cluster} · ring epoch {report.epoch} · {report.algorithm}{vnodes}",
        title_justify="left",
    )
    table.add_column("node")
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
