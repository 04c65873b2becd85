"""Cluster life-cycle commands: validate, schema, compose, up, down, status.

Heavy modules are imported in each command's body: see :mod:`shardctl.cli.app`.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from shardctl.cli import plain, rolling, statusrun
from shardctl.cli.app import (
    CLUSTER,
    Output,
    OutputOption,
    TopologyOption,
    command,
    number_option,
    open_cluster,
    topology_path,
)
from shardctl.cli.statusrun import WideOutput
from shardctl.errors import NothingToDo, ShardctlError, UsageError

if TYPE_CHECKING:
    from shardctl.ops.cluster import Cluster


@command(
    group=CLUSTER,
    summary="Check the topology file and print a summary.",
    example="shardctl validate -f prod.yaml",
)
def validate(topology: TopologyOption = None, output: OutputOption = Output.TABLE) -> None:
    """Check the topology file (its postgres: settings against the image's own server, when
    an engine has the image) and print a summary."""
    from shardctl.cli import render
    from shardctl.cli.views import topology as views
    from shardctl.config.topology import load

    checked = load(topology_path(topology))  # no Cluster: nothing to contact, less to import
    if checked.spec.postgres:  # unless settings need the image's judgement
        from shardctl.ops.cluster import Cluster

        with Cluster(checked) as cluster:
            unchecked = cluster.check_settings()
        if unchecked:
            render.warn(f"postgres: settings not checked: {unchecked}")
    if output is Output.JSON:
        plain.print_json(views.topology_facts(checked))
    else:
        render.show(views.topology_summary(checked))
        render.console.print(f"[green]valid[/]: {len(checked.nodes)} nodes")


@command(
    group=CLUSTER,
    summary="Print the JSON Schema of topology.yaml.",
    example="shardctl schema > topology.schema.json",
)
def schema() -> None:
    """Print the JSON Schema of topology.yaml (for editor completion)."""
    from shardctl.config.shape import TopologySpec

    typer.echo(json.dumps(TopologySpec.model_json_schema(by_alias=True), indent=2))


@command("compose", group=CLUSTER, example="shardctl compose --out docker-compose.yml")
def compose_command(
    topology: TopologyOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="Write to this file.")
    ] = None,
) -> None:
    """Render the cluster as a docker compose file."""
    from shardctl.cli import render
    from shardctl.docker import compose

    text = compose.render_cluster(open_cluster(topology), out)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        render.err_console.print(f"wrote {out}")


@command(
    group=CLUSTER,
    summary="Create or repair every node, rolling out changes.",
    example="shardctl up\nshardctl up --plan\nshardctl up --no-wait --timeout 600",
)
def up(
    topology: TopologyOption = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Return only when every replica streams.")
    ] = True,
    timeout: Annotated[
        float, number_option("--timeout", low=1, high=86400, help="Seconds to wait for readiness.")
    ] = 300.0,
    plan: Annotated[
        bool,
        typer.Option("--plan", help="Show what up would do to each node, and why; change nothing."),
    ] = False,
    output: OutputOption = Output.TABLE,
    parallel: rolling.ParallelOption = 1,
    switchover: rolling.SwitchoverOption = True,
) -> None:
    """Create or repair every declared node; changes nothing that already matches. Changed
    settings are reloaded, or rolled out one shard at a time when only a restart applies them."""
    from shardctl.cli import progress, render
    from shardctl.cli.views import cluster as views

    with open_cluster(topology) as cluster:
        if plan:
            rolling.show_plan(cluster, output)
            return
        try:
            with progress.nodes() as report:
                result = cluster.up(
                    wait=wait,
                    timeout=timeout,
                    reporter=report,
                    parallel=parallel,
                    switchover=switchover,
                )
        except KeyboardInterrupt:
            _up_interrupted(cluster)
    render.err_console.print(f"[green]up[/]: {views.up_summary(result)}")
    rolling.report_rolls(result.shards)
    for warning in result.warnings:
        render.warn(warning)


def _up_interrupted(cluster: Cluster) -> NoReturn:
    """Ctrl-C in ``up``: what exists now, and that ``up`` finishes the job; exit 130."""
    from shardctl.cli import render

    declared = len(cluster.topology.nodes)
    try:
        made = len(cluster.engines.cluster_containers(cluster.topology))
        exists = f"{made} of {declared} containers exist"
    except ShardctlError:
        exists = "the containers could not be counted"
    render.err_console.print(
        f"[yellow]interrupted[/]: stopped after the step in progress; {exists}. "
        "Run `shardctl up` again to finish the job."
    )
    raise typer.Exit(130)


@command(
    group=CLUSTER,
    summary="Remove containers and network; volumes with --volumes.",
    example="shardctl down\nshardctl down --volumes --yes",
)
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
    from shardctl.cli import render
    from shardctl.cli.views import cluster as views

    with open_cluster(topology) as cluster:
        if volumes and not yes:
            if not sys.stdin.isatty():
                raise UsageError("--volumes deletes all data; pass --yes to confirm")
            typer.confirm(
                f"Delete every data volume of cluster {cluster.topology.cluster}?", abort=True
            )
        result = cluster.down(volumes=volumes)
    if not (result.containers or result.networks or result.volumes):
        raise NothingToDo(
            f"nothing to remove: cluster {cluster.topology.cluster} has no containers"
        )
    render.err_console.print(f"[green]down[/]: {views.down_summary(result)}")


@command(
    group=CLUSTER,
    summary="One row per node: role, state, lag, health.",
    example="shardctl status -o wide\nshardctl status --watch 5",
)
def status(
    topology: TopologyOption = None,
    output: Annotated[
        WideOutput,
        typer.Option(
            "-o", "--output", help="table (80 columns), wide (every column) or json for scripts."
        ),
    ] = WideOutput.TABLE,
    watch: Annotated[
        float | None,
        number_option(
            "--watch",
            low=0.5,
            high=3600,
            metavar="[SECONDS]",
            show_default=False,
            help="Refresh every SECONDS (default 2) until Ctrl-C; with -o json, one JSON line "
            "per refresh.",
        ),
    ] = None,
) -> None:
    """One row per node, replicas under their primary: role, state, lag, health; above it,
    any operation in flight. Exit 1 if a node is unhealthy, 3 if no node answers."""
    with open_cluster(topology) as cluster:
        if watch is not None:
            _watch(cluster, output, watch)
            return
        code = statusrun.show(cluster, output)
    if code:
        raise typer.Exit(code)


def _watch(cluster: Cluster, output: WideOutput, seconds: float) -> None:
    """``status --watch``: redraw in place on a terminal (rich Live); piped, each refresh as a
    frame of its own under a timestamp line, or one JSON line per refresh; until Ctrl-C."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from shardctl.cli import render
    from shardctl.cli.views import cluster as views

    name = cluster.topology.cluster
    wide = output is WideOutput.WIDE
    try:
        if output is WideOutput.JSON:
            while True:
                rows, operations = statusrun.status_view(cluster)
                facts = views.status_facts(name, rows, operations)
                sys.stdout.write(json.dumps(plain.to_jsonable(facts)) + "\n")
                sys.stdout.flush()
                time.sleep(seconds)
        if not render.console.is_terminal:
            while True:
                rows, operations = statusrun.status_view(cluster)
                sys.stdout.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} ---\n")
                render.show(statusrun.status_renderable(name, rows, operations, wide))
                sys.stdout.flush()
                time.sleep(seconds)
        with Live(console=render.console, auto_refresh=False) as live:
            while True:
                rows, operations = statusrun.status_view(cluster)
                stamp = Text(f"every {seconds:g}s · {datetime.now():%H:%M:%S} · Ctrl-C to stop")
                view = statusrun.status_renderable(name, rows, operations, wide)
                live.update(Group(stamp, view), refresh=True)
                time.sleep(seconds)
    except KeyboardInterrupt:
        return  # the way to stop watching: exit 0
