"""Where the data is: ``shardctl distribution`` and ``shardctl ring``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from shardctl.cli import plain
from shardctl.cli.app import DATA, Output, OutputOption, TopologyOption, command, open_cluster

if TYPE_CHECKING:
    from shardctl.ops.cluster import Cluster
    from shardctl.state.inflight import Operation


@command(
    group=DATA,
    summary="Rows per shard and table against the ring; misplaced keys.",
    example="shardctl distribution -o json",
)
def distribution(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """Rows per table and shard against the ring: shares, skew, misplaced and duplicated keys.

    Counted on the servers. Exit 1 when any key is misplaced (on a shard the ring does not give
    it to) or stored on more than one shard.
    """
    from shardctl.cli import render
    from shardctl.cli.views import cluster as cluster_views
    from shardctl.cli.views import data as views

    with open_cluster(topology, running=True) as cluster:
        result = cluster.distribution()
        operations = [] if result.ok else in_flight_reshards(cluster)
    if output is Output.JSON:
        plain.print_json(
            {
                **plain.to_jsonable(result),
                "in_flight": [cluster_views.operation_facts(op) for op in operations],
            }
        )
    else:
        render.show(views.distribution_table(result))
        render.console.print(views.distribution_verdict(result))
    _warn(result.warnings)
    explain_in_flight(operations)
    if not result.ok:
        raise typer.Exit(1)


def in_flight_reshards(cluster: Cluster) -> list[Operation]:
    """The reshards in progress, to name when a check fails because of one (none if unknown)."""
    from shardctl.errors import ShardctlError
    from shardctl.state.inflight import RESHARD

    try:
        return [op for op in cluster.in_flight() if op.kind == RESHARD]
    except ShardctlError:
        return []


def explain_in_flight(operations: list[Operation]) -> None:
    """Say on stderr that a failure may come from the reshard in progress, and what to run."""
    from shardctl.cli import render

    for op in operations:
        render.err_console.print(
            f"[yellow]note[/]: reshard {op.id} is in progress ({op.phase}); keys stay on two "
            f"shards until it finishes: run `{op.command}`",
            highlight=False,
        )


@command(
    group=DATA,
    summary="The live ring: shards, virtual nodes, shares, epoch.",
    example="shardctl ring",
)
def ring(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """The live ring from the cluster's catalog: nodes, virtual nodes, shares, epoch.

    Exit 1 when the primaries disagree about the ring (an interrupted reshard).
    """
    from shardctl.cli import render
    from shardctl.cli.views import data as views

    with open_cluster(topology, running=True) as cluster:
        report = cluster.ring()
    if output is Output.JSON:
        plain.print_json(views.ring_facts(report))
    else:
        render.show(views.ring_table(report))
    _warn(report.problems + report.warnings)
    if report.problems:
        raise typer.Exit(1)


def _warn(lines: list[str]) -> None:
    from shardctl.cli import render

    for line in lines:
        render.warn(line)
