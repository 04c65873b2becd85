"""Resharding commands: add-shard, remove-shard and rebalance."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from shardctl.cli import complete, plain
from shardctl.cli.app import (
    RESHARDING,
    Output,
    OutputOption,
    TopologyOption,
    command,
    number_option,
    open_cluster,
    require_running,
    shard_name,
)
from shardctl.config.constants import MAX_REPLICAS
from shardctl.errors import ReshardingError, UsageError

if TYPE_CHECKING:
    from shardctl.ops.cluster import Cluster
    from shardctl.ops.reshard.coordinator import Rebalancer, State

ThrottleOption = Annotated[
    float, number_option("--throttle", low=0, high=60, help="Seconds to sleep between batches.")
]
RowsPerChunkOption = Annotated[
    int,
    number_option(
        "--rows-per-chunk", low=100, high=10_000_000, help="Rows copied per transaction."
    ),
]
"""The copy's pace, shared by ``rebalance`` and ``remove-shard``."""


@command(
    "add-shard",
    group=RESHARDING,
    summary="Provision a new empty shard (no keys until rebalance).",
    example="shardctl add-shard shard-4 --replicas 1",
)
def add_shard(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="Name of the new shard, e.g. shard-4.", callback=shard_name
        ),
    ],
    topology: TopologyOption = None,
    replicas: Annotated[
        int, number_option("--replicas", low=0, high=MAX_REPLICAS, help="Streaming replicas.")
    ] = 1,
    timeout: Annotated[
        float, number_option("--timeout", low=1, high=86400, help="Seconds to wait.")
    ] = 300.0,
    engine: Annotated[
        str | None,
        typer.Option(
            "--engine", metavar="ENGINE", help="Engine (from engines:) of the new shard's nodes."
        ),
    ] = None,
    replica_engine: Annotated[
        list[str] | None,
        typer.Option(
            "--replica-engine",
            metavar="ENGINE",
            help="Engine of replica 1, 2, ... (repeat the option); default: --engine.",
        ),
    ] = None,
) -> None:
    """Provision a new empty shard and record it in the topology; it joins owning no keys."""
    from shardctl.cli import progress, render

    cluster = open_cluster(topology)
    if name in {s.name for s in cluster.topology.spec.shards}:
        raise UsageError(f"{cluster.topology.path} already has a shard {name!r}")
    require_running(cluster)
    with cluster, progress.nodes() as report:
        done = cluster.add_shard(
            name,
            replicas,
            timeout=timeout,
            reporter=report,
            engine=engine,
            replica_engines=replica_engine or (),
        )
    for note in done.notes:
        render.warn(note)
    render.err_console.print(
        f"[green]add-shard[/]: {name} is up with {replicas} replica(s) and recorded in "
        f"{cluster.topology.path}; it owns no keys until `shardctl rebalance`"
    )


@command(
    group=RESHARDING,
    summary="Move data until every key lives on its ring owner, online.",
    example="shardctl rebalance --plan\nshardctl rebalance --yes",
)
def rebalance(
    topology: TopologyOption = None,
    plan: Annotated[bool, typer.Option("--plan", help="Print the moves; change nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Undo an unfinished run (before cut-over).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    throttle: ThrottleOption = 0.0,
    rows_per_chunk: RowsPerChunkOption = 50_000,
    output: OutputOption = Output.TABLE,
) -> None:
    """Move data until every key lives on its ring owner, online; --plan shows the moves."""
    from shardctl.cli import progress, render
    from shardctl.cli.views import reshard as views
    from shardctl.ops.reshard import rebalance as rebalancing
    from shardctl.ops.reshard.rebalance import Action

    flags = rebalancing.Flags(plan=plan, resume=resume, abort=abort, yes=yes)
    with open_cluster(topology, running=True) as cluster:
        rebalancer = cluster.rebalancer(rows_per_chunk=rows_per_chunk, throttle_seconds=throttle)
        decision = rebalancing.decide(rebalancer.state(), flags)
        if decision.action is Action.SHOW_PLAN:
            _show_plan(cluster, decision.running, rebalancer, output)
            return
        if decision.action is Action.ABORT:
            with rebalancer.exclusive(), progress.copy() as report:
                rebalancer.progress = report
                state = rebalancer.abort()
            render.err_console.print(
                f"[green]rebalance[/]: reshard {state.plan.id} aborted; the ring is unchanged "
                "and the copied rows were removed from the targets"
            )
            return
        confirmed = None
        if decision.confirm:
            confirmed = rebalancer.plan()  # nothing to do: exit 0 before asking for --yes
            if not sys.stdin.isatty():
                raise UsageError("rebalance moves data; pass --yes to confirm")
            render.show(views.plan_table(confirmed))
            typer.confirm("Run this rebalance now?", abort=True)
        try:
            with rebalancer.exclusive():
                if decision.action is Action.RESUME:
                    state = rebalancer.resume()
                else:
                    state = rebalancer.start(confirmed)
                # The live display opens only now: a prompt under it would be hidden.
                with progress.copy() as report:
                    rebalancer.progress = report
                    state = rebalancer.run(state)
        except KeyboardInterrupt:
            _interrupted(cluster)
    finish(state, output)


def _show_plan(
    cluster: Cluster, current: State | None, rebalancer: Rebalancer, output: Output
) -> None:
    """``--plan``: the run in progress (its plan and where it stands), else a new plan."""
    from shardctl.cli import render
    from shardctl.cli.views import cluster as cluster_views
    from shardctl.cli.views import reshard as views
    from shardctl.state.inflight import RESHARD

    operations = [op for op in cluster.in_flight() if op.kind == RESHARD] if current else []
    shown = current.plan if current is not None else rebalancer.plan()
    if output is Output.JSON:
        facts = views.plan_facts(shown)
        facts["in_progress"] = cluster_views.operation_facts(operations[0]) if operations else None
        plain.print_json(facts)
        return
    for line in cluster_views.in_flight_lines(operations):
        render.console.print(line)
    render.show(views.plan_table(shown, running=current is not None))


def _interrupted(cluster: Cluster) -> NoReturn:
    """Ctrl-C during a run: say where it stands and how to go on, then exit 130."""
    from shardctl.cli import render
    from shardctl.cli.views.cluster import in_flight_lines
    from shardctl.errors import ShardctlError

    render.err_console.print("[yellow]interrupted[/]: the reshard stops where it is")
    try:
        operations = cluster.in_flight()
    except ShardctlError:
        operations = []
    for line in in_flight_lines(operations):
        render.err_console.print(line)
    if not operations:
        render.err_console.print("  next: [bold]shardctl rebalance --resume[/] (or --abort)")
    raise typer.Exit(130)


def finish(state: State, output: Output) -> None:
    """Print the end-of-run report, or say where a stopped run stands."""
    from shardctl.cli import render
    from shardctl.cli.views import reshard as views
    from shardctl.state.plan import Phase

    if state.phase is not Phase.DONE:
        raise ReshardingError(
            f"reshard {state.plan.id} stopped at {state.phase.value}; run --resume to continue"
        )
    for name in state.plan.leaving:
        if name not in state.report.removed:
            render.err_console.print(
                f"[yellow]rebalance[/]: {name} owns no keys now; run `shardctl remove-shard "
                f"{name} --resume` to remove its nodes"
            )
    if output is Output.JSON:
        plain.print_json({"id": state.plan.id, "phase": state.phase, "report": state.report})
    else:
        render.show(views.reshard_report(state))


@command(
    "remove-shard",
    group=RESHARDING,
    summary="Move a shard's keys away online, then remove its nodes.",
    example="shardctl remove-shard shard-3 --plan\nshardctl remove-shard shard-3 --yes",
)
def remove_shard(
    name: Annotated[
        str,
        typer.Argument(
            metavar="SHARD",
            help="The shard to remove, e.g. shard-2.",
            callback=shard_name,
            autocompletion=complete.shard,
        ),
    ],
    topology: TopologyOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_volumes: Annotated[
        bool, typer.Option("--keep-volumes", help="Keep the shard's data volumes to inspect.")
    ] = False,
    plan: Annotated[bool, typer.Option("--plan", help="Print the moves; change nothing.")] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted removal.")
    ] = False,
    throttle: ThrottleOption = 0.0,
    rows_per_chunk: RowsPerChunkOption = 50_000,
    output: OutputOption = Output.TABLE,
) -> None:
    """Move a shard's keys to the remaining shards online, then remove its nodes."""
    from shardctl.cli import progress, render
    from shardctl.cli.views import reshard as views
    from shardctl.state.plan import Phase

    if plan and resume:
        raise UsageError("choose one of --plan and --resume")
    # A removal being resumed may have dropped the shard from the topology already.
    with open_cluster(topology, running=True, shard=None if resume else name) as cluster:
        rebalancer = cluster.rebalancer(rows_per_chunk=rows_per_chunk, throttle_seconds=throttle)
        if plan:
            shown = rebalancer.plan(leaving=[name])
            if output is Output.JSON:
                plain.print_json(views.plan_facts(shown))
            else:
                render.show(views.plan_table(shown))
            return
        confirmed = None
        if not resume and not yes:
            if not sys.stdin.isatty():
                raise UsageError("remove-shard moves data and removes nodes; pass --yes to confirm")
            if cluster.removal_moves_keys(rebalancer, name):
                confirmed = rebalancer.plan(leaving=[name])
                render.show(views.plan_table(confirmed))
            volumes = "keeping its volumes" if keep_volumes else "and its data volumes"
            typer.confirm(f"Move these keys, then remove {name}'s nodes {volumes}?", abort=True)
        # Another coordinator at work is a reason to refuse, like another reshard: exit 2.
        with rebalancer.exclusive(busy=UsageError), progress.copy() as report:
            rebalancer.progress = report
            removal = cluster.remove_shard(
                rebalancer,
                name,
                keep_volumes=keep_volumes,
                resume=resume,
                plan=confirmed,
            )
    if removal.state is not None and removal.state.phase is not Phase.DONE:
        finish(removal.state, output)  # says where it stopped
    if output is Output.JSON:
        plain.print_json(
            {
                "shard": name,
                "id": removal.state.plan.id if removal.state else None,
                "report": removal.state.report if removal.state else None,
                "plan": views.plan_facts(removal.state.plan) if removal.state else None,
                "containers_removed": removal.containers,
                "volumes_removed": removal.volumes,
                "volumes_kept": removal.volumes_kept,
            }
        )
        return
    if removal.state is not None:
        render.show(views.reshard_report(removal.state))
    for note in removal.notes:
        render.err_console.print(f"[yellow]note[/]: {note}")
    kept = f"; volumes kept: {', '.join(removal.volumes_kept)}" if removal.volumes_kept else ""
    render.err_console.print(
        f"[green]remove-shard[/]: {name} removed ({len(removal.containers)} container(s), "
        f"{len(removal.volumes)} volume(s)) and dropped from {cluster.topology.path}{kept}"
    )
