"""Resharding commands: add-shard and rebalance."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
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
    open_cluster,
    progress_reporter,
)
from shardctl.errors import ReshardingError, UsageError
from shardctl.reshard import joining
from shardctl.reshard.coordinator import Progress as ProgressCallback
from shardctl.reshard.coordinator import Rebalancer, State
from shardctl.reshard.plan import Phase


@app.command("add-shard")
def add_shard(
    name: Annotated[str, typer.Argument(help="Name of the new shard, e.g. shard-4.")],
    topology: TopologyOption = None,
    replicas: Annotated[int, typer.Option("--replicas", help="Streaming replicas.", min=0)] = 1,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.", min=1)] = 300.0,
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
        joining.add_shard(
            cluster,
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
        MofNCompleteColumn(),
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
    throttle: Annotated[
        float, typer.Option("--throttle", help="Seconds to sleep between chunks.", min=0)
    ] = 0.0,
    rows_per_chunk: Annotated[
        int, typer.Option("--rows-per-chunk", help="Rows copied per transaction.", min=100)
    ] = 50_000,
    output: OutputOption = Output.TABLE,
) -> None:
    """Move data until every key lives on its ring owner, online; --plan shows the moves."""
    if sum((plan, resume, abort)) > 1:
        raise UsageError("choose one of --plan, --resume and --abort")
    with open_cluster(topology, running=True) as cluster:
        rebalancer = Rebalancer(cluster, rows_per_chunk=rows_per_chunk, throttle_seconds=throttle)
        if plan:
            shown = rebalancer.plan()
            if output is Output.JSON:
                render.print_json(render.plan_facts(shown))
            else:
                render.console.print(render.plan_table(shown))
            return
        if abort:
            with rebalancer.exclusive(), copy_progress() as progress:
                rebalancer.progress = progress
                state = rebalancer.abort()
            render.err_console.print(
                f"[green]rebalance[/]: reshard {state.plan.id} aborted; the ring is unchanged "
                "and the copied rows were removed from the targets"
            )
            return
        confirmed = None
        if not resume and not yes:
            if not sys.stdin.isatty():
                raise UsageError("rebalance moves data; pass --yes to confirm")
            confirmed = rebalancer.plan()
            render.console.print(render.plan_table(confirmed))
            typer.confirm("Run this rebalance now?", abort=True)
        with rebalancer.exclusive():
            state = rebalancer.resume() if resume else rebalancer.start(confirmed)
            # The live display opens only now: a prompt under it would be hidden.
            with copy_progress() as progress:
                rebalancer.progress = progress
                state = rebalancer.run(state)
    finish(state, output)


def finish(state: State, output: Output) -> None:
    """Print the end-of-run report, or say where a stopped run stands."""
    if state.phase is not Phase.DONE:
        raise ReshardingError(
            f"reshard {state.plan.id} stopped at {state.phase.value}; run --resume to continue"
        )
    if output is Output.JSON:
        render.print_json({"id": state.plan.id, "phase": state.phase, "report": state.report})
    else:
        render.console.print(render.reshard_report(state))
