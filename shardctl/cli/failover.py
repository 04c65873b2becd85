"""Role-change commands: switchover (planned) and failover (the primary is gone)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from shardctl.cli import complete
from shardctl.cli.app import (
    ROLES,
    TopologyOption,
    command,
    number_option,
    open_cluster,
    require_running,
)
from shardctl.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from shardctl.ops.cluster import Cluster
    from shardctl.ops.rolechange import RoleChange

ShardArgument = Annotated[
    str,
    typer.Argument(
        metavar="SHARD", help="The shard whose primary changes.", autocompletion=complete.shard
    ),
]
ToOption = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="NODE",
        help="The replica to promote [default: the most advanced one].",
        autocompletion=complete.replica,
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _open(topology: Path | None, shard: str, to: str | None) -> Cluster:
    """The running cluster, after checking that ``shard`` exists and ``to`` is one of its nodes
    (exit 2 before anything is contacted)."""
    cluster = open_cluster(topology, shard=shard)
    names = [n.name for n in cluster.topology.shard_nodes(shard)]
    if to is not None and to not in names:
        raise UsageError(f"--to {to}: not a node of {shard}, whose nodes are {', '.join(names)}")
    require_running(cluster)
    return cluster


def _confirm(question: str, yes: bool) -> None:
    from shardctl.cli import render

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("this changes which node is a shard's primary; pass --yes to confirm")
    if not typer.confirm(question):
        render.err_console.print("cancelled, nothing changed")
        raise typer.Exit(1)


def _report(verb: str, change: RoleChange) -> None:
    from shardctl.cli import render

    render.console.print(
        f"[green]{verb}[/]: {change.shard} primary {change.old_primary} -> {change.new_primary} "
        f"(catalog epoch {change.epoch}); took {change.seconds:.1f} s"
        + (f", writes paused {change.write_pause * 1000:.0f} ms" if change.write_pause else "")
    )
    if change.possibly_lost:
        render.console.print(f"possibly lost: {render.escape(change.possibly_lost)}")
    for note in change.notes:
        render.err_console.print(f"[yellow]note[/]: {render.escape(note)}")


@command(
    group=ROLES,
    summary="Planned primary change, nothing acknowledged lost.",
    example="shardctl switchover shard-1 --to shard-1-replica-1 --yes",
)
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
    with _open(topology, shard, to) as cluster:
        _confirm(f"Switch {shard}'s primary over{f' to {to}' if to else ''}?", yes)
        change = cluster.switchover(shard, to, timeout=timeout)
    _report("switchover", change)


@command(
    group=ROLES,
    summary="The primary is gone: promote a replica, fence the old one.",
    example="shardctl failover shard-1 --yes",
)
def failover(
    shard: ShardArgument,
    to: ToOption = None,
    yes: YesOption = False,
    topology: TopologyOption = None,
) -> None:
    """The primary is gone: promote the most advanced replica and fence the old primary."""
    with _open(topology, shard, to) as cluster:
        _confirm(f"Fail {shard} over{f' to {to}' if to else ''}?", yes)
        change = cluster.failover(shard, to)
    _report("failover", change)
