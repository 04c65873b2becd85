"""Day-2 changes: ``up --plan`` (rendered here), ``restart`` (rolling) and ``reinit``.

Heavy modules are imported in each command's body: see :mod:`shardctl.cli.app`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli import complete, plain
from shardctl.cli.app import (
    OPERATIONS,
    Output,
    TopologyOption,
    command,
    number_option,
    open_cluster,
)
from shardctl.errors import UsageError

if TYPE_CHECKING:
    from shardctl.ops.changes import Plan
    from shardctl.ops.cluster import Cluster
    from shardctl.ops.rolling import ShardRoll

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
ParallelOption = Annotated[
    int,
    number_option(
        "--parallel", low=1, high=64, help="Shards restarted at once (each keeps a primary)."
    ),
]
SwitchoverOption = Annotated[
    bool,
    typer.Option(
        "--switchover/--no-switchover",
        help="Move each primary to an up-to-date replica before restarting it (default), or "
        "restart primaries in place (their writes pause; the pause is reported).",
    ),
]


def plan_facts(plan: Plan) -> dict[str, Any]:
    """``up --plan -o json``: the same facts as the table."""
    return {
        "image": plan.image,
        "server_version": plan.version or None,
        "changes": not plan.empty,
        "nodes": [
            {
                "shard": n.shard,
                "node": n.node,
                "role": n.role,
                "action": n.action.value,
                "reasons": list(n.reasons),
            }
            for n in plan.nodes
        ],
    }


def show_plan(cluster: Cluster, output: Output) -> None:
    """Print what ``up`` would do, per node; change nothing."""
    from rich.table import Table

    from shardctl.cli import render
    from shardctl.ops.changes import Change

    plan = cluster.plan()
    if output is Output.JSON:
        plain.print_json(plan_facts(plan))
        return
    server = f", PostgreSQL {plan.version}" if plan.version else ""
    table = Table(title=f"up --plan: {cluster.topology.cluster} ({plan.image}{server})")
    for column in ("shard", "node", "role", "action", "why"):
        table.add_column(column, overflow="fold")
    for n in plan.nodes:
        action = n.action.value if n.action is Change.NOTHING else f"[yellow]{n.action.value}[/]"
        why = render.escape("\n".join(n.reasons) or "-")
        table.add_row(n.shard, n.node, n.role, action, why)
    render.show(table)
    rolling = plan.rolling()
    if rolling:
        render.console.print(
            f"rolling restart of {len(rolling)} shard(s), one at a time by default: replicas "
            "first, then a switchover, then the former primary"
        )
    elif plan.empty:
        render.console.print("nothing to change")


def report_rolls(rolls: dict[str, str] | list[ShardRoll]) -> None:
    """One line per shard a rolling change visited: what it did, the write pause."""
    from shardctl.cli import render

    items = rolls.items() if isinstance(rolls, dict) else [(r.shard, r.summary()) for r in rolls]
    for shard, summary in items:
        render.err_console.print(f"  {shard}: {render.escape(summary)}")


def _confirm(question: str, yes: bool) -> None:
    from shardctl.cli import render

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError("this restarts nodes of a running cluster; pass --yes to confirm")
    if not typer.confirm(question):
        render.err_console.print("cancelled, nothing changed")
        raise typer.Exit(1)


@command(
    group=OPERATIONS,
    summary="Rolling restart: replicas, switchover, former primary.",
    example="shardctl restart --yes\nshardctl restart shard-1 --no-switchover --yes",
)
def restart(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="[SHARD|NODE]",
            help="A shard or a node [default: every shard].",
            autocompletion=complete.target,
            show_default=False,
        ),
    ] = None,
    yes: YesOption = False,
    parallel: ParallelOption = 1,
    switchover: SwitchoverOption = True,
    topology: TopologyOption = None,
) -> None:
    """Rolling restart: one shard at a time, replicas first, then a switchover and the
    former primary; each shard keeps a primary throughout."""
    from shardctl.cli import progress, render

    with open_cluster(topology, running=True) as cluster:
        what = target or f"every shard of {cluster.topology.cluster}"
        _confirm(f"Restart {what}, one shard at a time?", yes)
        with progress.nodes() as reporter:
            rolls = cluster.restart(
                target, parallel=parallel, switchover=switchover, reporter=reporter
            )
    render.err_console.print(f"[green]restart[/]: {len(rolls)} shard(s) restarted")
    report_rolls(rolls)


@command(
    group=OPERATIONS,
    summary="Clone a replica again from its primary.",
    example="shardctl reinit shard-0-replica-1 --yes",
)
def reinit(
    node: Annotated[
        str,
        typer.Argument(
            metavar="NODE", help="The replica to clone again.", autocompletion=complete.node
        ),
    ],
    yes: YesOption = False,
    topology: TopologyOption = None,
) -> None:
    """Re-clone a replica from its shard's primary (its container and volume are made
    again); the primary and the other nodes are not touched."""
    from shardctl.cli import progress, render

    with open_cluster(topology, running=True) as cluster:
        _confirm(f"Delete {node}'s data and clone it again from its primary?", yes)
        with progress.nodes() as reporter:
            result = cluster.reinit(node, reporter=reporter)
    render.err_console.print(f"[green]reinit[/]: {node} cloned again in {result.seconds:.1f}s")
