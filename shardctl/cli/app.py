"""The typer app, the options every command shares, and the one place errors become exit codes.

Errors from the library (:class:`~shardctl.errors.ShardctlError`) are caught once, in
:func:`main`, and printed as one red line with the documented exit code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from shardctl import __version__
from shardctl.cli import render
from shardctl.cluster import Cluster
from shardctl.errors import ShardctlError
from shardctl.provisioning import Reporter
from shardctl.topology import TOPOLOGY_ENV, default_path

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


def open_cluster(path: Path | None, *, running: bool = False) -> Cluster:
    """The cluster of the topology at ``path`` (or the default), validated; with ``running``,
    with each shard's acting primary from the catalog (exit 3 when nothing answers)."""
    cluster = Cluster.load(path if path is not None else default_path())
    if running:
        cluster.follow_roles()
    return cluster


@contextmanager
def progress_reporter() -> Iterator[Reporter]:
    """A rich spinner per node on stderr, fed by the provisioner's (node, step) reports."""
    with render.progress(
        SpinnerColumn(),
        TextColumn("{task.fields[node]:<22}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def report(node: str, step: str) -> None:
            if node not in tasks:
                tasks[node] = progress.add_task(step, node=node)
            progress.update(tasks[node], description=step)

        yield report


# typer re-exports click's BadParameter. Its ClickException base is the one of whichever click
# typer runs on (a private copy in current typer, the click package in older ones), so usage
# errors are caught without shardctl importing click, which it does not depend on.
_UsageError: type[Exception] = next(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the console script: run the app, map errors to exit codes.

    ``args`` replaces ``sys.argv[1:]``, so tests can run the CLI in-process exactly as a user
    does, error mapping included.
    """
    try:
        code = app(args=args, prog_name=None if args is None else "shardctl", standalone_mode=False)
    except ShardctlError as exc:
        fail(str(exc), exc.exit_code)
    except typer.Abort:
        fail("aborted", 1)
    except _UsageError as exc:  # bad usage: click prints "Usage: ... Error: ...", exit 2
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
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
