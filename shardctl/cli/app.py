"""The typer app, the options every command shares, and the one place errors become exit codes.

Errors from the library (:class:`~shardctl.errors.ShardctlError`) are caught once, in
:func:`main`, and printed as one red line with the documented exit code.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from shardctl import __version__
from shardctl.cli import render
from shardctl.config import credentials as creds
from shardctl.config.schema import TOPOLOGY_ENV
from shardctl.config.topology import Topology, default_path
from shardctl.config.topology import load as load_topology
from shardctl.errors import DatabaseUnavailable, NothingToDo, ShardctlError
from shardctl.ops.cluster import Cluster
from shardctl.ops.provisioning import Reporter

app = typer.Typer(
    name="shardctl",
    help="Operate a sharded PostgreSQL cluster: provision, check replication, reshard online.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Output(StrEnum):
    """Output formats of read-only commands."""

    TABLE = "table"
    JSON = "json"


class WideOutput(StrEnum):
    """Output formats of ``status``: ``wide`` shows every column, as ``kubectl -o wide``."""

    TABLE = "table"
    WIDE = "wide"
    JSON = "json"


@dataclass
class _Options:
    """The options given before the command (``shardctl -f x.yaml --verbose status``)."""

    topology: Path | None = None
    verbose: bool = False


_ROOT = _Options()


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


def bounded(low: float, high: float, name: str) -> Callable[[Any], Any]:
    """An option callback refusing ``inf``, ``nan`` and values outside ``[low, high]`` with
    exit 2, naming the option and its bounds."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise typer.BadParameter(
                f"{value} is not a number from {low:g} to {high:g}", param_hint=name
            )
        return value

    return check


def number_option(*names: str, low: float, high: float, help: str, **extra: Any) -> Any:
    """A numeric option bounded to ``[low, high]``, the bounds shown in its help; ``inf``,
    ``nan`` and values out of range exit 2 naming the option and its bounds."""
    long = next((n for n in names if n.startswith("--")), names[0])
    return typer.Option(
        *names, callback=bounded(low, high, long), help=f"{help} [{low:g} to {high:g}]", **extra
    )


NAME_RULE = "lowercase letters, digits and '-', starting with a letter, at most 40 characters"


def shard_name(value: str) -> str:
    """Argument callback: a valid shard name, or exit 2 naming the argument (not a file line)."""
    if value == "":
        raise typer.BadParameter("the shard name is empty")
    if re.fullmatch(r"[a-z][a-z0-9-]{0,39}", value) is None:
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise typer.BadParameter(f"{shown!r} is not a valid shard name: {NAME_RULE}")
    return value


def _topology_for_completion(ctx: typer.Context) -> Topology | None:
    path = ctx.params.get("topology") or _ROOT.topology
    parent = ctx.parent.params.get("topology") if ctx.parent is not None else None
    try:
        return load_topology(path or parent or default_path())
    except ShardctlError:
        return None


def complete_shard(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the topology's shard names."""
    topology = _topology_for_completion(ctx)
    names = [s.name for s in topology.spec.shards] if topology is not None else []
    return [name for name in names if name.startswith(incomplete)]


def complete_node(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion: the topology's node names (of the shard given, when there is one)."""
    topology = _topology_for_completion(ctx)
    if topology is None:
        return []
    shard = ctx.params.get("shard")
    return [
        n.name
        for n in topology.nodes
        if n.name.startswith(incomplete) and (shard is None or n.shard == shard)
    ]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shardctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    topology: Annotated[
        Path | None,
        typer.Option(
            "-f",
            "--topology",
            help="Topology file for the command (one given after the command wins).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Add the underlying error to error messages.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Operate a sharded PostgreSQL cluster: provision, check replication, reshard online."""
    _ROOT.topology = topology
    _ROOT.verbose = verbose


def topology_path(path: Path | None) -> Path:
    """The topology file a command reads: its own ``-f``, else the one before the command, else
    ``$SHARDCTL_TOPOLOGY`` or ./topology.yaml."""
    if path is not None:
        return path
    return _ROOT.topology if _ROOT.topology is not None else default_path()


def open_cluster(path: Path | None, *, running: bool = False) -> Cluster:
    """The cluster of the topology at ``path`` (or the default), validated; with ``running``,
    with each shard's acting primary from the catalog (exit 3 when nothing answers)."""
    cluster = Cluster.load(topology_path(path))
    if running:
        require_running(cluster)
    return cluster


def not_running(topology: Topology) -> DatabaseUnavailable:
    """The one error every command gives for a cluster that is not up (exit 3)."""
    return DatabaseUnavailable(
        f"the cluster `{topology.cluster}` is not running: run `shardctl up`"
    )


def require_running(cluster: Cluster) -> None:
    """Take the acting roles from the catalog; exit 3 with :func:`not_running` when the cluster
    was never brought up here (no passwords) or no node answers."""
    topology = cluster.topology
    declared = topology.spec.credentials.password_env
    if declared is None and not creds.secrets_path(topology).exists():
        raise not_running(topology)
    try:
        cluster.follow_roles()
    except DatabaseUnavailable as exc:
        error = not_running(topology)
        error.detail = str(exc)
        raise error from None


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
    _ROOT.topology, _ROOT.verbose = None, False
    argv = optional_values(list(sys.argv[1:] if args is None else args))
    try:
        code = app(args=argv, prog_name=None if args is None else "shardctl", standalone_mode=False)
    except NothingToDo as exc:
        render.err_console.print(render.escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(0)
    except ShardctlError as exc:
        detail = exc.detail if _ROOT.verbose else None
        fail(str(exc) + (f"\n  cause: {detail}" if detail else ""), exc.exit_code)
    except typer.Abort:  # a declined confirmation (or Ctrl-C at the prompt)
        fail("cancelled, nothing changed", 1)
    except _UsageError as exc:  # bad usage: click prints "Usage: ... Error: ...", exit 2
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    except KeyboardInterrupt:
        fail("interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


OPTIONAL_VALUES = {"--watch": "2", "-w": "2"}
"""Options of ``status`` whose value may be left out (``status --watch``): click has no such
options, so the default is filled in before parsing."""


def optional_values(args: list[str]) -> list[str]:
    """``args`` with the default value after a bare ``status --watch``."""
    if "status" not in args:
        return args
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        bare = following is None or (following.startswith("-") and not _is_number(following))
        if arg in OPTIONAL_VALUES and bare:
            out.append(OPTIONAL_VALUES[arg])
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def fail(message: str, code: int) -> None:
    """Print ``message`` as an error on stderr and exit with ``code``."""
    first, _, rest = message.partition("\n")
    text = Text("error: ", style="bold red") + Text(first)
    if rest:
        text += Text("\n" + rest)
    render.err_console.print(text, highlight=False, soft_wrap=True)
    sys.exit(code)
