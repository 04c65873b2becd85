"""``shardctl history``: reshards, role changes and shards added or removed, newest first."""

from __future__ import annotations

from typing import Annotated

from shardctl.cli import plain
from shardctl.cli.app import (
    OPERATIONS,
    Output,
    OutputOption,
    TopologyOption,
    command,
    number_option,
    open_cluster,
)


@command(
    group=OPERATIONS,
    summary="Reshards, switchovers, failovers: when, by whom, outcome.",
    example="shardctl history --limit 10\nshardctl history -o json",
)
def history(
    limit: Annotated[
        int,
        number_option("--limit", "-n", low=1, high=100_000, metavar="N", help="The newest N."),
    ] = 20,
    output: OutputOption = Output.TABLE,
    topology: TopologyOption = None,
) -> None:
    """Reshards (with the shards they added or removed), switchovers and failovers, manual or
    automatic, and the cluster's creation: when, who, how long, outcome and write pause,
    newest first. Read from the catalog on the primaries."""
    from shardctl.cli import render
    from shardctl.cli.views import history as views
    from shardctl.state import history as events

    with open_cluster(topology, running=True) as cluster:
        found = events.read(cluster.topology, cluster.credentials())[:limit]
    if output is Output.JSON:
        plain.print_json({"cluster": cluster.topology.cluster, "events": found})
    else:
        render.show(views.history_table(cluster.topology.cluster, found))
