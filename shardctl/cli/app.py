"""The typer app, the options every command shares, and the one place errors become exit codes.

Errors from the library (:class:`~shardctl.errors.ShardctlError`) are caught once, in
:func:`main`, and printed as one red line with the documented exit code.

**Start-up.** Every command module is imported for ``--help``, and ``--version`` builds the
whole command tree, so this module and the command modules import only typer and the
standard library at module level. What a command needs (rich, psycopg, the Docker SDK,
pydantic, cryptography) is imported in the command's body; ``tests/unit/cli/test_startup.py``
checks it, and ``benchmarks/cli_startup.py`` measures it.
"""

from __future__ import annotations

import math
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from shardctl import __version__
from shardctl.cli import coerce, complete
from shardctl.cli.statusrun import ended, fail, not_running
from shardctl.config.constants import DEFAULT_TOPOLOGY, TOPOLOGY_ENV
from shardctl.errors import DatabaseUnavailable, ShardctlError, UsageError

if TYPE_CHECKING:
    from shardctl.config.topology import Topology
    from shardctl.ops.cluster import Cluster

SUMMARY = "Operate a sharded PostgreSQL cluster: provision, check replication, reshard online."

CLUSTER = "Cluster"
DATA = "Data"
REPLICATION = "Replication"
RESHARDING = "Resharding"
ROLES = "Roles"
OPERATIONS = "Operations"
BACKUP = "Backup"
HELP = "Help"
GROUPS = (CLUSTER, DATA, REPLICATION, RESHARDING, ROLES, BACKUP, OPERATIONS, HELP)
"""The sections of ``shardctl --help``, in order; a command names its own (``group=``)."""

_WORDS = {
    "int": "INTEGER",
    "float": "NUMBER",
    "str": "TEXT",
    "path": "PATH",
    "list[str]": "TEXT",
    "list[path]": "PATH",
    "list[int]": "INTEGER",
}
"""Help writes a value's type in words, not as the Python type typer would show."""


class Commands(TyperGroup):
    """shardctl's command group: ``--help`` lists the commands by section, each summary in
    full on one line; options and arguments show their type in words."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """Commands per section (:data:`GROUPS`), a one-line summary each, never cut."""
        rows: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            group = getattr(command, "rich_help_panel", None) or "Other"
            rows.setdefault(group, []).append((name, summary(command)))
        if not rows:
            return
        width = max(len(name) for group in rows.values() for name, _ in group)
        order = [g for g in GROUPS if g in rows] + sorted(set(rows) - set(GROUPS))
        for group in order:
            with formatter.section(group):
                for name, text in rows[group]:
                    formatter.write(f"{'':>{formatter.current_indent}}{name:<{width}}  {text}\n")

    def get_command(self, ctx: Any, name: str) -> Any:
        """The command called ``name``, its parameters' types named in words for its help and
        their values coerced without pydantic where plain (:mod:`shardctl.cli.coerce`)."""
        command = super().get_command(ctx, name)
        if command is not None:
            for param in command.params:
                _type_in_words(param)
            coerce.install(command.get_params(ctx))
        return command

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        """Parse the options given before the command, coerced as the commands' are."""
        coerce.install(self.get_params(ctx))
        return super().parse_args(ctx, args)


def summary(command: Any) -> str:
    """A command's one-line summary: its ``short_help``, else its help's first line."""
    text = command.short_help or (command.help or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def _type_in_words(param: Any) -> None:
    if param.param_type_name == "argument":
        # An argument's name says what it is (SHARD, NODE): typer would add "<str>" after it.
        param.metavar = param.metavar or (param.name or "value").upper()
        param.display_type_rich = lambda ctx=None: None
        return
    if param.metavar is not None or getattr(param, "is_flag", False):
        return
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return
    if descriptor.is_choice:
        param.metavar = "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ())
        return
    shown = param.display_type(None).strip("<>") if hasattr(param, "display_type") else ""
    word = _WORDS.get(shown.lower())
    if word is not None:
        param.metavar = word


app = typer.Typer(
    name="shardctl",
    cls=Commands,
    help=SUMMARY,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(
    name: str | None = None, *, group: str, example: str, summary: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a command in ``--help``'s section ``group``, with an example (one command line,
    or several separated by newlines) at the end of its help, and ``summary`` as its line in
    ``shardctl --help`` (default: the docstring's first paragraph)."""
    lines = "\n".join(f"  {line}" for line in example.strip().splitlines())
    return app.command(
        name,
        rich_help_panel=group,
        short_help=summary,
        epilog=f"\b\nExample:\n{lines}",
    )


class Output(StrEnum):
    """Output formats of read-only commands."""

    TABLE = "table"
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
        metavar="FILE",
        help=f"Topology file [default: ${TOPOLOGY_ENV} or ./{DEFAULT_TOPOLOGY}].",
        show_default=False,
    ),
]
OutputOption = Annotated[
    Output, typer.Option("-o", "--output", help="table for people, json for scripts.")
]


def _bound(value: float) -> str:
    """A bound as people write it: integers as integers (1000000000, not 1e+09)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def bounded(low: float, high: float, name: str) -> Callable[[Any], Any]:
    """An option callback refusing ``inf``, ``nan`` and values outside ``[low, high]`` with
    exit 2, naming the option and its bounds."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise typer.BadParameter(
                f"{value} is not a number from {_bound(low)} to {_bound(high)}", param_hint=name
            )
        return value

    return check


def number_option(*names: str, low: float, high: float, help: str, **extra: Any) -> Any:
    """A numeric option bounded to ``[low, high]``, the bounds shown in its help; ``inf``,
    ``nan`` and values out of range exit 2 naming the option and its bounds."""
    long = next((n for n in names if n.startswith("--")), names[0])
    return typer.Option(
        *names,
        callback=bounded(low, high, long),
        help=f"{help} [{_bound(low)} to {_bound(high)}]",
        **extra,
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
            metavar="FILE",
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
    """Operate a sharded PostgreSQL cluster: provision, check replication, reshard online.

    Run `shardctl COMMAND -h` for a command's options and an example.
    """
    _ROOT.topology = topology
    _ROOT.verbose = verbose
    complete.ROOT_TOPOLOGY[0] = topology


@app.command("help", rich_help_panel=HELP, epilog="\b\nExample:\n  shardctl help status")
def help_command(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(
            metavar="COMMAND", help="The command to explain.", autocompletion=complete.command
        ),
    ] = None,
) -> None:
    """Show the help of shardctl, or of one command."""
    root = ctx.find_root()
    group = root.command
    if name is None:
        typer.echo(root.get_help())
        return
    found = group.get_command(root, name) if isinstance(group, TyperGroup) else None
    if found is None:
        raise UsageError(f"no command {name!r}: `shardctl --help` lists them")
    with found.make_context(name, ["--help"], parent=root, resilient_parsing=True) as sub:
        typer.echo(found.get_help(sub))


def topology_path(path: Path | None) -> Path:
    """The topology file a command reads: its own ``-f``, else the one before the command, else
    ``$SHARDCTL_TOPOLOGY`` or ./topology.yaml."""
    if path is not None:
        return path
    if _ROOT.topology is not None:
        return _ROOT.topology
    from shardctl.config.topology import default_path

    return default_path()


def open_cluster(
    path: Path | None,
    *,
    running: bool = False,
    shard: str | None = None,
    nodes: Sequence[str] = (),
) -> Cluster:
    """The cluster of the topology at ``path`` (or the default), validated; ``shard`` and
    ``nodes`` checked against it (exit 2) before anything is contacted; with ``running``, with
    each shard's acting primary from the catalog (exit 3 when nothing answers)."""
    from shardctl.ops.cluster import Cluster

    cluster = Cluster.load(topology_path(path))
    if shard is not None:
        known_shard(cluster.topology, shard)
    for name in nodes:
        known_target(cluster.topology, name)
    if running:
        require_running(cluster)
    return cluster


def known_shard(topology: Topology, name: str) -> None:
    """Exit 2 unless the topology declares shard ``name`` (listing those it declares)."""
    shards = [s.name for s in topology.spec.shards]
    if name not in shards:
        raise UsageError(
            f"no shard {name!r} in {topology.path}: it declares {', '.join(shards) or 'none'}"
        )


def known_target(topology: Topology, name: str) -> None:
    """Exit 2 unless ``name`` is a shard or a node of the topology."""
    if name in {s.name for s in topology.spec.shards} | {n.name for n in topology.nodes}:
        return
    raise UsageError(
        f"no shard or node {name!r} in {topology.path}: "
        f"shards are {', '.join(s.name for s in topology.spec.shards)}; "
        "`shardctl validate` lists the nodes"
    )


def require_running(cluster: Cluster) -> None:
    """Take the acting roles from the catalog; exit 3 with :func:`not_running` when the cluster
    was never brought up here (no passwords) or no node answers."""
    from shardctl.config import credentials as creds

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
    complete.ROOT_TOPOLOGY[0] = None
    argv = optional_values(list(sys.argv[1:] if args is None else args))
    registered = app.registered_commands
    word = invoked(argv)
    if word is not None:  # building the other commands' options is a third of typer's import
        app.registered_commands = [c for c in registered if _name(c) == word] or registered
    resolve_annotations(app)
    try:
        code = app(args=argv, prog_name=None if args is None else "shardctl", standalone_mode=False)
    except (ShardctlError, KeyboardInterrupt) as exc:
        ended(exc, verbose=_ROOT.verbose)
    except typer.Abort:  # a declined confirmation (or Ctrl-C at the prompt)
        fail("cancelled, nothing changed", 1)
    except _UsageError as exc:  # bad usage: click prints "Usage: ... Error: ...", exit 2
        exc.show()  # type: ignore[attr-defined]
        sys.exit(exc.exit_code)  # type: ignore[attr-defined]
    finally:
        app.registered_commands = registered
    sys.exit(code if isinstance(code, int) else 0)


def resolve_annotations(group: typer.Typer) -> None:
    """Evaluate the annotations of the commands ``group`` will build, once.

    The modules are written with ``from __future__ import annotations``, so each parameter's
    ``Annotated[..., typer.Option(...)]`` is a string; typer evaluates every one of them twice
    (``inspect.signature`` and ``get_type_hints``) each of the three or four times it reads a
    command's parameters, compiling each string anew: for ``--help``, more than typer's own
    import. The objects are the ones evaluating the strings gives (typer copies each option's
    declaration before using it)."""
    functions = [info.callback for info in group.registered_commands]
    if group.registered_callback is not None:
        functions.append(group.registered_callback.callback)
    for function in functions:
        if function is None:
            continue
        annotations = getattr(function, "__annotations__", {})
        if any(isinstance(value, str) for value in annotations.values()):
            function.__annotations__ = typing.get_type_hints(function, include_extras=True)


_ROOT_FLAGS = ("-v", "--verbose")
_ROOT_VALUED = ("-f", "--topology")


def invoked(args: Sequence[str]) -> str | None:
    """The command ``args`` run, when the run needs no other command of the tree: not help
    (which lists them), not completion, nothing but the root's ``-f``/``-v`` before it (any
    other option or a combination: None, the whole tree, as click would parse it)."""
    if any(key.endswith("_COMPLETE") for key in os.environ):
        return None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _ROOT_VALUED:
            i += 2
        elif arg in _ROOT_FLAGS or arg.startswith("--topology="):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return None if arg == "help" else arg
    return None


def _name(info: Any) -> str:
    """A registered command's name, as typer derives it from the function when not given."""
    from typer.main import get_command_name

    return str(info.name or get_command_name(info.callback.__name__))


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
