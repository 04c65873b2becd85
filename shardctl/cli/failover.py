"""Role-change commands: switchover (planned) and failover (the primary is gone)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from shardctl.cli import render
from shardctl.cli.app import (
    TopologyOption,
    app,
    complete_node,
    complete_shard,
    number_option,
    open_cluster,
)
from shardctl.errors import UsageError
from shardctl.ops.rolechange import RoleChange

ShardArgument = Annotated[
    str, typer.Argument(help="The shard whose primary changes.", autocompletion=complete_shard)
]
ToOption = Annotated[
    str | None,
    typer.Option(
        "--to",
        help="The replica to promote [default: the most advanced one].",
        autocompletion=complete_node,
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("this changes which node is a shard's primary; pass --yes to confirm")
    if not typer.confirm(question):
        render.err_console.print("cancelled, nothing changed")
        raise typer.Exit(1)


def _report(verb: str, change: RoleChange) -> None:
    render.console.print(
        f"[green]{verb}[/]: {change.shard} primary {change.old_primary} -> {change.new_primary} "
        f"(catalog epoch {change.epoch}); took {change.seconds:.1f} s"
        + (f", writes paused {change.write_pause * 1000:.0f} ms" if change.write_pause else "")
    )
    if change.possibly_lost:
        render.console.print(f"possibly lost: {render.escape(change.possibly_lost)}")
    for note in change.notes:
        render.err_console.print(f"[yellow]note[/]: {render.escape(note)}")


@app.command()
def switchover(
    shard: ShardArgument,
    to: ToOption = None,
    yes: YesOption = False,
    timeout: Annotated[
        float,
        number_option(
            "--timeout",
            low=1,
            high=3600,
            help="Seconds the candidate may take to catch up before the switchover is undone.",
        ),
    ] = 30.0,
    topology: TopologyOption = None,
) -> None:
    """Planned primary change: fence, catch up, promote, publish, re-join the old primary."""
    with open_cluster(topology, running=True) as cluster:
        _confirm(f"Switch {shard}'s primary over{f' to {to}' if to else ''}?", yes)
        change = cluster.switchover(shard, to, timeout=timeout)
    _report("switchover", change)


@app.command()
def failover(
    shard: ShardArgument,
    to: ToOption = None,
    yes: YesOption = False,
    topology: TopologyOption = None,
) -> None:
    """The primary is gone: promote the most advanced replica and fence the old primary."""
    with open_cluster(topology, running=True) as cluster:
        _confirm(f"Fail {shard} over{f' to {to}' if to else ''}?", yes)
        change = cluster.failover(shard, to)
    _report("failover", change)
