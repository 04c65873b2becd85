"""Progress on stderr while a command works: a live display on a terminal, timestamped lines in
a log (see :func:`shardctl.cli.render.progress`). One reporter per kind of work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from shardctl.cli import render
from shardctl.ops.nodes import Reporter
from shardctl.ops.reshard.coordinator import Progress as CopyCallback
from shardctl.workload.report import LoadProgress


@contextmanager
def nodes() -> Iterator[Reporter]:
    """A spinner per node, fed by the provisioner's (node, step) reports."""
    with render.progress(
        SpinnerColumn(),
        TextColumn("{task.fields[node]:<22}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        plain=lambda task: f"{task.fields['node']}: {task.description}",
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def report(node: str, step: str) -> None:
            if node not in tasks:
                tasks[node] = progress.add_task(step, node=node)
            progress.update(tasks[node], description=step)

        yield report


class RateColumn(ProgressColumn):
    """Items per second of a task (rows while copying)."""

    def render(self, task: Task) -> Text:
        """The task's current speed, or a dash before there is one."""
        speed = task.speed
        return Text("-" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


@contextmanager
def copy() -> Iterator[CopyCallback]:
    """A bar per task: rows copied per source (of the plan's exact count, with rows/s and time
    left), moves cleaned up per source."""
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


@contextmanager
def load() -> Iterator[Callable[[LoadProgress], None]]:
    """A bar for the load test: time (or ops) done, ops/s, failures."""
    with render.progress(
        TextColumn("load"),
        BarColumn(),
        TextColumn("{task.fields[ops]:>9,} ops  {task.fields[rate]:>8,.0f} ops/s"),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        plain=lambda task: (
            f"load: {task.fields['ops']:,} ops, {task.fields['rate']:,.0f} ops/s, "
            f"{task.fields['failed']} failed"
        ),
    ) as bar:
        task = bar.add_task("load", total=None, ops=0, rate=0.0, failed=0)

        def tick(p: LoadProgress) -> None:
            if p.target_ops is not None:
                total, done = float(p.target_ops), float(p.ops)
            else:
                total, done = float(p.duration or 1.0), p.seconds
            rate = p.ops / p.seconds if p.seconds > 0 else 0.0
            bar.update(task, total=total, completed=done, ops=p.ops, rate=rate, failed=p.failed)

        yield tick


@contextmanager
def bulk(rows: int) -> Iterator[Callable[[dict[str, int]], None]]:
    """A bar for the bulk loader, with rows per shard."""
    with render.progress(
        TextColumn("bulk"),
        BarColumn(),
        TextColumn("{task.completed:>12,.0f}/{task.total:,.0f} rows"),
        TextColumn("{task.fields[shards]}"),
        TimeElapsedColumn(),
        plain=lambda task: f"bulk: {task.completed:,.0f}/{rows:,} rows {task.fields['shards']}",
    ) as bar:
        task = bar.add_task("bulk", total=rows, shards="")

        def show(per_shard: dict[str, int]) -> None:
            shards = "  ".join(f"{s} {n:,}" for s, n in per_shard.items())
            bar.update(task, completed=sum(per_shard.values()), shards=shards)

        yield show
