"""Cluster life-cycle commands: validate, schema, compose, up, down, status."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from shardctl import compose
from shardctl.checks import status_rows
from shardctl.cli import render
from shardctl.cli.app import (
    Output,
    OutputOption,
    TopologyOption,
    app,
    open_cluster,
    progress_reporter,
)
from shardctl.errors import UsageError
from shardctl.topology import TopologySpec


@app.command()
def validate(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """Check the topology file and print a summary."""
    cluster = open_cluster(topology)
    if output is Output.JSON:
        render.print_json(render.topology_facts(cluster.topology))
    else:
        render.console.print(render.topology_summary(cluster.topology))
        render.console.print(f"[green]valid[/]: {len(cluster.topology.nodes)} nodes")


@app.command()
def schema() -> None:
    """Print the JSON Schema of topology.yaml (for editor completion)."""
    typer.echo(json.dumps(TopologySpec.model_json_schema(by_alias=True), indent=2))


@app.command("compose")
def compose_command(
    topology: TopologyOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file.")] = None,
) -> None:
    """Render the cluster as a docker compose file."""
    text = compose.render_cluster(open_cluster(topology), out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        render.err_console.print(f"wrote {out}")


@app.command()
def up(
    topology: TopologyOption = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Return only when every replica streams.")
    ] = True,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for readiness.", min=1)
    ] = 300.0,
) -> None:
    """Create or repair every declared node; changes nothing that already matches."""
    with open_cluster(topology) as cluster, progress_reporter() as report:
        result = cluster.up(wait=wait, timeout=timeout, reporter=report)
    render.err_console.print(f"[green]up[/]: {render.up_summary(result)}")
    for warning in result.warnings:
        render.err_console.print(f"[yellow]warning[/]: {render.escape(warning)}")


@app.command()
def down(
    topology: TopologyOption = None,
    volumes: Annotated[
        bool, typer.Option("--volumes", help="Also delete data volumes and generated passwords.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting data.")
    ] = False,
) -> None:
    """Remove the cluster's containers and network; data volumes only with --volumes."""
    with open_cluster(topology) as cluster:
        if volumes and not yes:
            if not sys.stdin.isatty():
                raise UsageError("--volumes deletes all data; pass --yes to confirm")
            typer.confirm(
                f"Delete every data volume of cluster {cluster.topology.cluster}?", abort=True
            )
        result = cluster.down(volumes=volumes)
    render.err_console.print(f"[green]down[/]: {render.down_summary(result)}")


@app.command()
def status(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """One row per node: role, container, timeline, LSN, lag, slot, health. Exit 1 if unhealthy."""
    with open_cluster(topology) as cluster:
        rows = status_rows(cluster.observe())
        name = cluster.topology.cluster
    if output is Output.JSON:
        render.print_json({"cluster": name, "healthy": all(r.healthy for r in rows), "nodes": rows})
    else:
        render.console.print(render.status_table(name, rows))
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)
