"""Resharding commands: add-shard, remove-shard and rebalance."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from rich.progress import (
    BarColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from shardctl.cli import render
from shardctl.cli.app import (
    Output,
    OutputOption,
    TopologyOption,
    app,
    number_option,
    open_cluster,
    progress_reporter,
    shard_name,
)
from shardctl.config.schema import MAX_REPLICAS
from shardctl.errors import ReshardingError, ShardctlError, UsageError
from shardctl.ops.cluster import Cluster
from shardctl.ops.reshard import rebalance as rebalancing
from shardctl.ops.reshard.coordinator import Progress as ProgressCallback
from shardctl.ops.reshard.coordinator import Rebalancer, State
from shardctl.ops.reshard.rebalance import Action
from shardctl.state.inflight import RESHARD
from shardctl.state.plan import Phase

ThrottleOption = Annotated[
    float, number_option("--throttle", low=0, high=60, help="Seconds to sleep between chunks.")
]
RowsPerChunkOption = Annotated[
    int,
    number_option(
        "--rows-per-chunk", low=100, high=10_000_000, help="Rows copied per transaction."
    ),
]
"""The copy's pace, shared by ``rebalance`` and ``remove-shard``."""


@app.command("add-shard")
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
        typer.Option("--engine", help="Engine (from engines:) of the new shard's nodes."),
    ] = None,
    replica_engine: Annotated[
        list[str] | None,
        typer.Option(
            "--replica-engine",
            help="Engine of replica 1, 2, ... (repeat the option); default: --engine.",
        ),
    ] = None,
) -> None:
    """Provision a new empty shard and record it in the topology; it joins owning no keys."""
    with open_cluster(topology, running=True) as cluster, progress_reporter() as report:
        cluster.add_shard(
            name,
            replicas,
            timeout=timeout,
            reporter=report,
            engine=engine,
            replica_engines=replica_engine or (),
        )
    render.err_console.print(
        f"[green]add-shard[/]: {name} is up with {replicas} replica(s) and recorded in "
        f"{cluster.topology.path}; it owns no keys until `shardctl rebalance`"
    )


class RateColumn(ProgressColumn):
    """Items per second of a task (rows while copying)."""

    def render(self, task: Task) -> Text:
        """The task's current speed, or a dash before there is one."""
        speed = task.speed
        return Text("-" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


@contextmanager
def copy_progress() -> Iterator[ProgressCallback]:
    """A progress bar per task on stderr: rows copied per source (of the plan's exact count,
    with rows/s and time left), moves cleaned up per source."""
    with render.progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>12,.0f}/{task.total:,.0f}"),
        RateColumn(),
        TimeRemainingColumn(),
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def report(task: str, description: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = progress.add_task(description, total=total)
            progress.update(tasks[task], completed=done, total=total, description=description)

        yield report


@app.command()
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
    flags = rebalancing.Flags(plan=plan, resume=resume, abort=abort, yes=yes)
    with open_cluster(topology, running=True) as cluster:
        rebalancer = cluster.rebalancer(rows_per_chunk=rows_per_chunk, throttle_seconds=throttle)
        decision = rebalancing.decide(rebalancer.state(), flags)
        if decision.action is Action.SHOW_PLAN:
            _show_plan(cluster, decision.running, rebalancer, output)
            return
        if decision.action is Action.ABORT:
            with rebalancer.exclusive(), copy_progress() as progress:
                rebalancer.progress = progress
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
            render.show(render.plan_table(confirmed))
            typer.confirm("Run this rebalance now?", abort=True)
        try:
            with rebalancer.exclusive():
                if decision.action is Action.RESUME:
                    state = rebalancer.resume()
                else:
                    state = rebalancer.start(confirmed)
                # The live display opens only now: a prompt under it would be hidden.
                with copy_progress() as progress:
                    rebalancer.progress = progress
                    state = rebalancer.run(state)
        except KeyboardInterrupt:
            _interrupted(cluster)
    finish(state, output)


def _show_plan(
    cluster: Cluster, current: State | None, rebalancer: Rebalancer, output: Output
) -> None:
    """``--plan``: the run in progress (its plan and where it stands), else a new plan."""
    operations = [op for op in cluster.in_flight() if op.kind == RESHARD] if current else []
    shown = current.plan if current is not None else rebalancer.plan()
    if output is Output.JSON:
        facts = render.plan_facts(shown)
        facts["in_progress"] = render.operation_facts(operations[0]) if operations else None
        render.print_json(facts)
        return
    for line in render.in_flight_lines(operations):
        render.console.print(line)
    render.show(render.plan_table(shown, running=current is not None))


def _interrupted(cluster: Cluster) -> NoReturn:
    """Ctrl-C during a run: say where it stands and how to go on, then exit 130."""
    render.err_console.print("[yellow]interrupted[/]: the reshard stops where it is")
    try:
        operations = cluster.in_flight()
    except ShardctlError:
        operations = []
    for line in render.in_flight_lines(operations):
        render.err_console.print(line)
    if not operations:
        render.err_console.print("  next: [bold]shardctl rebalance --resume[/] (or --abort)")
    raise typer.Exit(130)


def finish(state: State, output: Output) -> None:
    """Print the end-of-run report, or say where a stopped run stands."""
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
        render.print_json({"id": state.plan.id, "phase": state.phase, "report": state.report})
    else:
        render.show(render.reshard_report(state))


@app.command("remove-shard")
def remove_shard(
    name: Annotated[
        str, typer.Argument(help="The shard to remove, e.g. shard-2.", callback=shard_name)
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
    if plan and resume:
        raise UsageError("choose one of --plan and --resume")
    with open_cluster(topology, running=True) as cluster:
        rebalancer = cluster.rebalancer(rows_per_chunk=rows_per_chunk, throttle_seconds=throttle)
        if plan:
            shown = rebalancer.plan(leaving=[name])
            if output is Output.JSON:
                render.print_json(render.plan_facts(shown))
            else:
                render.show(render.plan_table(shown))
            return
        confirmed = None
        if not resume and not yes:
            if not sys.stdin.isatty():
                raise UsageError("remove-shard moves data and removes nodes; pass --yes to confirm")
            if cluster.removal_moves_keys(rebalancer, name):
                confirmed = rebalancer.plan(leaving=[name])
                render.show(render.plan_table(confirmed))
            volumes = "keeping its volumes" if keep_volumes else "and its data volumes"
            typer.confirm(f"Move these keys, then remove {name}'s nodes {volumes}?", abort=True)
        # Another coordinator at work is a reason to refuse, like another reshard: exit 2.
        with rebalancer.exclusive(busy=UsageError), copy_progress() as progress:
            rebalancer.progress = progress
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
        render.print_json(
            {
                "shard": name,
                "id": removal.state.plan.id if removal.state else None,
                "report": removal.state.report if removal.state else None,
                "plan": render.plan_facts(removal.state.plan) if removal.state else None,
                "containers_removed": removal.containers,
                "volumes_removed": removal.volumes,
                "volumes_kept": removal.volumes_kept,
            }
        )
        return
    if removal.state is not None:
        render.show(render.reshard_report(removal.state))
    kept = f"; volumes kept: {', '.join(removal.volumes_kept)}" if removal.volumes_kept else ""
    render.err_console.print(
        f"[green]remove-shard[/]: {name} removed ({len(removal.containers)} container(s), "
        f"{len(removal.volumes)} volume(s)) and dropped from {cluster.topology.path}{kept}"
    )
