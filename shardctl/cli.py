"""The ``shardctl`` command line: parse, call one library function, render. Nothing else.

Errors from the library (:class:`~shardctl.errors.ShardctlError`) are caught once, in
:func:`main`, and printed as one red line with the documented exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from shardctl import __version__, compose, render
from shardctl.cluster import Cluster
from shardctl.errors import ShardctlError, UsageError
from shardctl.health import status_rows
from shardctl.provisioning import Reporter
from shardctl.topology import TOPOLOGY_ENV, TopologySpec, default_path

app = typer.Typer(
    name="shardctl",
    help="Operate a sharded PostgreSQL cluster: provision, check replication, reshard online.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Output(StrEnum):
    """Output formats of read-only commands."""

    TABLE = "table"
    JSON = "json"


TopologyOption = Annotated[
    Path | None,
    typer.Option(
        "-f",
        "--topology",
        help=f"Topology file [default: ${TOPOLOGY_ENV} or ./topology.yaml].",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Output, typer.Option("-o", "--output", help="table for people, json for scripts.")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shardctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Operate a sharded PostgreSQL cluster: provision, check replication, reshard online."""


def open_cluster(path: Path | None) -> Cluster:
    """The cluster of the topology at ``path`` (or the default), validated."""
    return Cluster.load(path if path is not None else default_path())


@contextmanager
def progress_reporter() -> Iterator[Reporter]:
    """A rich spinner per node on stderr, fed by the provisioner's (node, step) reports."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.fields[node]:<22}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=render.err_console,
        transient=True,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def report(node: str, step: str) -> None:
            if node not in tasks:
                tasks[node] = progress.add_task(step, node=node)
            progress.update(tasks[node], description=step)

        yield report


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
    text = compose.render(open_cluster(topology).topology)
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


def main() -> None:
    """Entry point of the console script: run the app, map errors to exit codes."""
    try:
        code = app(standalone_mode=False)
    except ShardctlError as exc:
        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        fail("aborted", 1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int) -> None:
    """Print ``message`` as an error on stderr and exit with ``code``."""
    first, _, rest = message.partition("\n")
    text = Text("error: ", style="bold red") + Text(first)
    if rest:
        text += Text("\n" + rest)
    render.err_console.print(text, highlight=False, soft_wrap=True)
    sys.exit(code)
