"""``shardctl status`` without the command-line framework: its body, and its plain forms run
before typer is imported.

``status`` is what operators and scripts run most, often in a loop, so a plain invocation
(``status`` with ``-f``/``--topology``, ``-o``/``--output`` and the root's ``-f``/``-v``, each
spelled as ``--help`` shows them) is recognised here (:func:`plain_args`) and run
(:func:`run`) without typer and click, a third of status's start-up. Anything else (``--help``,
``--watch``, a value typer would refuse, an unknown option, completion) goes through the typer
app as every other command does, which prints its usual errors. The typer command calls
:func:`show` too, so both paths print the same thing and exit with the same code.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from shardctl.errors import DatabaseUnavailable, NothingToDo, ShardctlError

if TYPE_CHECKING:
    from rich.console import Group

    from shardctl.cli.views.monitor import MonitorFacts
    from shardctl.config.topology import Topology
    from shardctl.health.status import StatusRow
    from shardctl.ops.cluster import Cluster
    from shardctl.state.inflight import Operation


class WideOutput(StrEnum):
    """Output formats of ``status`` (and ``verify-replication``): ``wide`` shows every column,
    as ``kubectl -o wide``."""

    TABLE = "table"
    WIDE = "wide"
    JSON = "json"


@dataclass(frozen=True)
class Args:
    """A plain ``status`` invocation: its topology file (None: the default), output, -v."""

    topology: Path | None
    output: WideOutput
    verbose: bool


_TOPOLOGY = ("-f", "--topology")
_OUTPUT = ("-o", "--output")
_VERBOSE = ("-v", "--verbose")


def plain_args(args: Sequence[str]) -> Args | None:
    """The :class:`Args` of ``args`` when they are a plain ``status`` invocation, else None
    (the typer app parses them). The command's own ``-f`` wins over the root's, the last of
    an option given twice wins, as click has it."""
    if any(key.endswith("_COMPLETE") for key in os.environ):
        return None
    root: Path | None = None
    own: Path | None = None
    output = WideOutput.TABLE
    verbose = False
    seen_command = False
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg == "status" and not seen_command:
            seen_command = True
            i += 1
            continue
        if arg in _VERBOSE and not seen_command:
            verbose = True
            i += 1
            continue
        takes = name in _TOPOLOGY or (seen_command and name in _OUTPUT)
        if not takes or (eq and not name.startswith("--")):
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if not value or value.startswith("-"):
            return None
        if name in _OUTPUT:
            try:
                output = WideOutput(value)
            except ValueError:
                return None
        elif seen_command:
            own = Path(value)
        else:
            root = Path(value)
    if not seen_command:
        return None
    return Args(own if own is not None else root, output, verbose)


def run(args: Args) -> NoReturn:
    """Run a plain ``status`` and exit as the typer app would (errors mapped to exit codes as
    :func:`shardctl.cli.app.main` maps them)."""
    from shardctl.config.topology import default_path
    from shardctl.ops.cluster import Cluster

    try:
        with Cluster.load(args.topology or default_path()) as cluster:
            code = show(cluster, args.output)
    except (ShardctlError, KeyboardInterrupt) as exc:
        ended(exc, verbose=args.verbose)
    sys.exit(code)


def ended(exc: ShardctlError | KeyboardInterrupt, *, verbose: bool) -> NoReturn:
    """Exit as a run ends on one of shardctl's errors: nothing to do is said plainly (exit 0),
    any other error is one red line (with its cause under ``-v``) and its exit code, Ctrl-C
    exit 130."""
    if isinstance(exc, KeyboardInterrupt):
        fail("interrupted", 130)
    if isinstance(exc, NothingToDo):
        from shardctl.cli import render

        render.err_console.print(render.escape(str(exc)), highlight=False, soft_wrap=True)
        sys.exit(0)
    detail = exc.detail if verbose else None
    fail(str(exc) + (f"\n  cause: {detail}" if detail else ""), exc.exit_code)


def show(cluster: Cluster, output: WideOutput) -> int:
    """Print the cluster's status as ``output``; the exit code: 1 if a node is unhealthy,
    else 0. Raises :func:`not_running` when no node answers."""
    from shardctl.cli import plain
    from shardctl.cli.views import cluster as views
    from shardctl.cli.views import monitor as monitor_views
    from shardctl.db import pg

    name = cluster.topology.cluster
    with pg.shared():
        rows, operations = status_view(cluster)
        monitor = monitor_facts(cluster, rows)
    if output is WideOutput.JSON:
        plain.print_json(
            {**monitor_views.monitor_facts(monitor), **views.status_facts(name, rows, operations)}
        )
    else:
        wide = output is WideOutput.WIDE
        page = plain.plain_page()
        text = None
        if page is not None:
            above = views.in_flight_lines(operations, markup=False)
            above += monitor_views.monitor_lines(monitor, markup=False)
            text = views.status_text(name, rows, above, wide=wide, page=page)
        if text is not None:  # piped: the text rich would print, without importing rich
            sys.stdout.write(text)
        else:
            from shardctl.cli import render

            render.show(status_renderable(name, rows, operations, wide, monitor))
    if all(r.in_recovery is None for r in rows):
        raise not_running(cluster.topology)
    return 0 if all(r.healthy for r in rows) else 1


def status_view(cluster: Cluster) -> tuple[list[StatusRow], list[Operation]]:
    """Every node's row, and what is in flight (nothing when no primary answers)."""
    import contextlib

    from shardctl.cli.views import cluster as views
    from shardctl.db import pg
    from shardctl.health.status import status_rows

    with pg.shared():  # one connection per node for the catalog, the facts, what is in flight
        facts, notes = cluster.observe_applying_durability()
        if notes:
            from shardctl.cli import render

            for line in notes:
                render.err_console.print(f"[yellow]note[/]: {render.escape(line)}")
        topology = cluster.topology
        rows = status_rows(facts, views.newest_wal(topology), views.repository_free(topology))
        operations: list[Operation] = []
        if any(r.in_recovery is False for r in rows):  # a primary answered: it can say
            with contextlib.suppress(DatabaseUnavailable):
                operations = cluster.in_flight()
    return rows, operations


def monitor_facts(cluster: Cluster, rows: list[StatusRow]) -> MonitorFacts:
    """The monitor's heartbeat, each shard's failover mode and the automatic failovers."""
    from shardctl.cli.views.monitor import MonitorFacts

    modes = {
        s.name: cluster.topology.failover(s.name).mode.value for s in cluster.topology.spec.shards
    }
    if all(r.in_recovery is None for r in rows):
        return MonitorFacts(modes, None)
    return MonitorFacts(modes, cluster.monitor_view())


def status_renderable(
    name: str,
    rows: list[StatusRow],
    operations: list[Operation],
    wide: bool,
    monitor: MonitorFacts | None = None,
) -> Group:
    """The status table with what is in flight (and the monitor's lines) above it, for rich."""
    from rich.console import Group
    from rich.text import Text

    from shardctl.cli.views import cluster as views
    from shardctl.cli.views import monitor as monitor_views

    lines = [Text.from_markup(line) for line in views.in_flight_lines(operations)]
    if monitor is not None:
        lines += [Text.from_markup(line) for line in monitor_views.monitor_lines(monitor)]
    return Group(*lines, views.status_table(name, rows, wide=wide))


def not_running(topology: Topology) -> DatabaseUnavailable:
    """The one error every command gives for a cluster that is not up (exit 3)."""
    return DatabaseUnavailable(
        f"the cluster `{topology.cluster}` is not running: run `shardctl up`"
    )


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as an error on stderr and exit with ``code``."""
    from rich.text import Text

    from shardctl.cli import render

    first, _, rest = message.strip("\n").partition("\n")
    text = Text("error: ", style="bold red") + Text(first)
    if rest:
        text += Text("\n" + rest)
    render.err_console.print(text, highlight=False, soft_wrap=True)
    sys.exit(code)
