"""Progress on stderr while a command works: a live display on a terminal, timestamped lines in
a log (see :func:`shardctl.cli.render.progress`). One reporter per kind of work."""

from __future__ import annotations

import threading
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
from shardctl.ops.backup.progress import Copied, CopiedCallback, total
from shardctl.ops.reporting import Reporter
from shardctl.ops.reshard.coordinator import Progress as CopyCallback
from shardctl.util.text import size_text
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


def copied_text(copied: Copied) -> str:
    """A copy's bytes, share of the estimate, rate and time left, in a few words."""
    parts = [size_text(copied.streamed)]
    if copied.total is not None and not copied.done:
        fraction = copied.fraction or 0.0
        parts[0] += f" of ~{size_text(copied.total)} ({fraction:.0%})"
    if copied.rate is not None:
        parts.append(f"{size_text(round(copied.rate))}/s")
    if copied.eta is not None and not copied.done:
        parts.append(f"{_clock(copied.eta)} left")
    return ", ".join(parts)


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return (
        f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
        if whole >= 3600
        else (f"{whole // 60}:{whole % 60:02d}")
    )


@contextmanager
def backup() -> Iterator[tuple[Reporter, CopiedCallback]]:
    """A line per shard (its step, then bytes, rate and time left while it copies) and one for
    all shards together; fed by the (shard, step) reports and each shard's copy."""
    with render.progress(
        SpinnerColumn(),
        TextColumn("{task.fields[node]:<12}"),
        TextColumn("{task.description}"),
        TextColumn("{task.fields[bytes]}"),
        TimeElapsedColumn(),
        plain=lambda task: (
            f"{task.fields['node']}: {task.description}"
            + (f" {task.fields['bytes']}" if task.fields["bytes"] else "")
        ),
    ) as progress:
        tasks: dict[str, TaskID] = {}
        copies: dict[str, Copied] = {}
        lock = threading.Lock()  # reports come from every shard's thread

        def task(name: str, step: str) -> TaskID:
            if name not in tasks:
                tasks[name] = progress.add_task(step, node=name, bytes="")
            return tasks[name]

        def report(shard: str, step: str) -> None:
            with lock:
                progress.update(
                    task("all shards" if shard == "*" else shard, step), description=step
                )

        def copied(now: Copied) -> None:
            with lock:
                copies[now.shard] = now
                progress.update(task(now.shard, now.phase), bytes=copied_text(now))
                whole = total(copies.values())
                progress.update(
                    task("all shards", whole.phase),
                    description=whole.phase,
                    bytes=copied_text(whole),
                )

        yield report, copied
