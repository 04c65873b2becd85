"""What ``shardctl load`` runs once its options are parsed: the checks of its options, the load
test, the bulk loader and ledger verification, and their output. Apart from
:mod:`shardctl.cli.load` (the command and its options), so that ``--help``, which builds every
command, compiles and runs none of this.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from shardctl.cli import plain
from shardctl.cli.app import Output
from shardctl.cli.load import parse_users
from shardctl.errors import UsageError

if TYPE_CHECKING:
    from shardctl.router.router import Router
    from shardctl.workload.bulk import BulkReport
    from shardctl.workload.report import LoadReport
    from shardctl.workload.users import LoadConfig


@dataclass(frozen=True)
class Asked:
    """What the command line asked of ``load``, checked before anything is contacted."""

    via: str | None
    read_from: str
    verify: list[Path]
    bulk: bool
    rows: int | None
    ledger: Path | None
    duration: float | None
    ops: int | None
    users: str | None
    mix: str


def check_options(asked: Asked) -> list[int] | None:
    """Exit 2 on options that contradict each other or name files that cannot be used; the
    virtual user counts of ``--users``."""
    if asked.via not in (None, "direct", "pooler"):
        raise UsageError(f"--via must be pooler or direct, not {asked.via!r}")
    if asked.read_from not in ("primary", "replica"):
        raise UsageError(f"--read-from must be primary or replica, not {asked.read_from!r}")
    if asked.verify and (asked.bulk or asked.rows is not None or asked.ledger is not None):
        raise UsageError("--verify checks ledgers; it takes no --bulk, --rows or --ledger")
    if asked.bulk != (asked.rows is not None):
        raise UsageError("--bulk needs --rows N (and --rows is only for --bulk)")
    if asked.duration is not None and asked.ops is not None:
        raise UsageError("--duration and --ops both say when to stop; give one of them")
    counts = parse_users(asked.users) if asked.users is not None else None
    if counts is not None and (asked.verify or asked.bulk):
        raise UsageError("--users is for the load test; it takes no --verify or --bulk")
    named = [part.partition("=")[0].strip() for part in asked.mix.split(",") if part.strip()]
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise UsageError(f"--mix names {', '.join(repeated)} more than once")
    for path in asked.verify:
        if not path.is_file():
            raise UsageError(f"--verify {path}: no such file")
    if asked.ledger is not None and not asked.ledger.parent.is_dir():
        raise UsageError(f"--ledger {asked.ledger}: no directory {asked.ledger.parent}")
    return counts


def check_workers(router: Router, workers: int) -> None:
    """Virtual users share the workers' connections: never more per node than the servers (or
    the poolers in front of them) take, whatever --users says."""
    from shardctl.workload.load import connection_limit

    limit = connection_limit(router)
    if workers > limit.most:
        raise UsageError(
            f"--workers {workers} could open {workers} connections per node; "
            f"{limit.source} leaves {limit.most} for the load test"
        )


def load_config(
    workers: int,
    duration: float | None,
    ops: int | None,
    mix: str,
    read_from: str,
    ledger: Path | None,
    seed: int | None,
    counts: list[int] | None,
    pipeline: int = 1,
    engine: str = "loop",
    loops: int | None = None,
) -> LoadConfig:
    from shardctl.workload.users import ENGINES, LoadConfig, Mix

    chosen = next((e for e in ENGINES if e == engine), None)
    if chosen is None:
        raise UsageError(f"--engine: expected {' or '.join(ENGINES)}, got {engine!r}")

    return LoadConfig(
        workers=workers,
        duration=duration if duration is not None or ops is not None else 10.0,
        ops=ops,
        mix=Mix.parse(mix),
        read_from="replica" if read_from == "replica" else "primary",
        ledger=ledger,
        seed=seed,
        users=counts[0] if counts else None,
        pipeline=pipeline,
        engine=chosen,
        loops=loops,
    )


def run_load(router: Router, config: LoadConfig, counts: list[int] | None, output: Output) -> None:
    """The load test (one run, or one per user count), its report; exit 1 on a failed op,
    130 when interrupted (the report covers the time run)."""
    from shardctl.cli import progress, render
    from shardctl.workload.load import run_load, run_steps

    stop, interrupted = threading.Event(), threading.Event()
    with progress.load() as tick, _stop_on_interrupt(stop, interrupted):
        if counts is not None and len(counts) > 1:
            reports = run_steps(router, config, counts, stop=stop, progress=tick)
        else:
            reports = [run_load(router, config, stop=stop, progress=tick)]
    if len(reports) == 1 and (counts is None or len(counts) == 1):
        _show_load(reports[0], output, router.topology.cluster)
    else:
        _show_steps(reports, output, router.topology.cluster)
    if interrupted.is_set():
        seconds = sum(r.seconds for r in reports)
        render.err_console.print(
            f"[yellow]interrupted[/]: the report covers the first {seconds:,.1f} s"
        )
        raise typer.Exit(130)
    if any(r.failed or r.anomalies for r in reports):
        raise typer.Exit(1)


def run_bulk(
    router: Router, rows: int, ledger: Path | None, seed: int | None, output: Output
) -> None:
    from shardctl.cli import progress
    from shardctl.workload.bulk import bulk_load

    with progress.bulk(rows) as show:
        result = bulk_load(router, rows, ledger=ledger, seed=seed, progress=show)
    _show_bulk(result, output)


@contextmanager
def _stop_on_interrupt(stop: threading.Event, interrupted: threading.Event) -> Iterator[None]:
    """Ctrl-C sets ``stop`` (the workers finish their op, the report is made) instead of
    raising KeyboardInterrupt in the middle of the run."""

    def handler(signum: int, frame: object) -> None:
        interrupted.set()
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def verify_ledgers(router: Router, paths: list[Path], output: Output) -> None:
    from shardctl.cli import render
    from shardctl.cli.views.load import ledger_table
    from shardctl.workload import ledger as ledgers

    result = ledgers.verify(router, paths)
    if output is Output.JSON:
        plain.print_json({"ok": result.ok, **plain.to_jsonable(result)})
    else:
        render.show(ledger_table(result, paths))
        for finding in result.findings:
            expected, actual = str(finding.expected), str(finding.actual)
            render.err_console.print(
                f"[red]{finding.problem}[/] {finding.key} on {finding.shard}: "
                f"expected {render.escape(expected)}, found {render.escape(actual)}"
            )
        if result.ok:
            render.console.print(
                f"[green]ok[/]: {result.keys:,} keys in their expected state, on their owner only"
            )
    if not result.ok:
        raise typer.Exit(1)


def _show_load(report: LoadReport, output: Output, cluster: str) -> None:
    from shardctl.cli import render
    from shardctl.cli.views.load import load_table

    if output is Output.JSON:
        plain.print_json(report)
        return
    render.show(load_table(report, cluster))
    render.console.print(
        (f"users {report.users:,} · " if report.users != report.workers else "")
        + (f"{report.warm_up:,} warm-up inserts · " if report.warm_up else "")
        + f"concurrency {report.workers} · throughput {report.throughput:,.0f} ops/s · "
        f"success rate {report.success_rate * 100:.2f}%"
        + (f" · ledger {report.ledger}" if report.ledger else "")
    )
    for summary in report.per_op:
        for error, count in sorted(summary.errors.items(), key=lambda e: -e[1])[:3]:
            render.err_console.print(
                f"[red]{summary.op} failed {count}x[/]: {render.escape(error)}"
            )
    if report.anomalies:
        render.err_console.print(
            f"[red]{report.anomalies} acknowledged op(s) found no row where one was expected[/]"
        )


def _show_steps(reports: list[LoadReport], output: Output, cluster: str) -> None:
    from shardctl.cli import render
    from shardctl.cli.views.load import users_table

    if output is Output.JSON:
        plain.print_json({"steps": reports})
        return
    render.show(users_table(reports, cluster))
    warmed = sum(r.warm_up for r in reports)
    if warmed:
        render.console.print(
            f"{warmed:,} new users' first inserts (their keys) ran before the measured time"
        )
    for report in reports:
        for summary in report.per_op:
            for error, count in sorted(summary.errors.items(), key=lambda e: -e[1])[:3]:
                render.err_console.print(
                    f"[red]{report.users:,} users: {summary.op} failed {count}x[/]: "
                    f"{render.escape(error)}"
                )
        if report.anomalies:
            render.err_console.print(
                f"[red]{report.users:,} users: {report.anomalies} acknowledged op(s) found no "
                "row where one was expected[/]"
            )


def _show_bulk(result: BulkReport, output: Output) -> None:
    from shardctl.cli import render
    from shardctl.cli.views.load import bulk_table

    if output is Output.JSON:
        plain.print_json(result)
        return
    render.show(bulk_table(result))
    render.console.print(
        f"{result.rows:,} rows in {result.seconds:.1f}s · {result.rows_per_second:,.0f} rows/s"
    )
