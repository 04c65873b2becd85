"""``shardctl verify-replication``: the replication checks, for people, scripts and CI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from shardctl.cli import plain
from shardctl.cli.app import (
    REPLICATION,
    TopologyOption,
    command,
    number_option,
    open_cluster,
)
from shardctl.cli.data import explain_in_flight, in_flight_reshards
from shardctl.cli.statusrun import WideOutput, not_running
from shardctl.errors import UsageError

DEFAULTS = {
    "max_lag_bytes": "16MiB",
    "max_lag_seconds": 60,
    "canary_timeout": 10,
    "probe_timeout": 5,
}
"""The defaults of ``health:`` in topology.yaml, as --help states them without loading the
topology model (a unit test holds them equal to :class:`~shardctl.config.schema.HealthSpec`)."""
_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
_UNITS |= {"gb": 1000**3, "gib": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3}
MAX_SIZE = 1024**4


def parse_size(text: str) -> int:
    """A byte count such as ``1048576``, ``512KiB``, ``16MiB`` or ``1GiB``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise typer.BadParameter(f"{text!r} is not a size (examples: 1048576, 512KiB, 16MiB)")
    size = float(match.group(1)) * _UNITS[unit]
    if not size <= MAX_SIZE:  # also inf, from a number too long for a float
        raise typer.BadParameter(f"{text!r} is not a size from 0 to 1TiB")
    return int(size)


def _default(name: str, unit: str = "s") -> str:
    return f"[default: topology health.{name}, else {DEFAULTS[name]}{unit}]"


@command(
    "verify-replication",
    group=REPLICATION,
    summary="Check that replicas stream, keep up and hold their data.",
    example="shardctl verify-replication --junit report.xml\nshardctl verify-replication --deep",
)
def verify_replication(
    topology: TopologyOption = None,
    output: Annotated[
        WideOutput,
        typer.Option(
            "-o",
            "--output",
            help="table (a row per node, 80 columns), wide (a row per check) or json.",
        ),
    ] = WideOutput.TABLE,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit", metavar="FILE", help="Also write a JUnit XML report (a test per check)."
        ),
    ] = None,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also compare row counts and checksums of every sharded table, "
            "primary against each replica, at the primary's snapshot.",
        ),
    ] = False,
    max_lag_bytes: Annotated[
        int | None,
        typer.Option(
            "--max-lag-bytes",
            metavar="SIZE",
            parser=parse_size,
            show_default=False,
            help="Fail a replica whose replay is further behind its primary's WAL position "
            f"(bytes, or 512KiB, 16MiB; at most 1TiB). {_default('max_lag_bytes', '')}",
        ),
    ] = None,
    max_lag_seconds: Annotated[
        float | None,
        number_option(
            "--max-lag-seconds",
            low=0,
            high=86400,
            metavar="SECONDS",
            show_default=False,
            help="Fail a replica whose replay is further behind in time; a replica that has "
            "replayed all it received counts as 0 s. "
            f"{_default('max_lag_seconds')}",
        ),
    ] = None,
    canary_timeout: Annotated[
        float | None,
        number_option(
            "--canary-timeout",
            low=0.1,
            high=3600,
            metavar="SECONDS",
            show_default=False,
            help="Seconds a canary row written on a primary may take to show on its replicas "
            "(also how long --deep waits for a replica to catch up). "
            f"{_default('canary_timeout')}",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        number_option(
            "--timeout",
            low=0.1,
            high=3600,
            metavar="SECONDS",
            show_default=False,
            help="Seconds each node may take to answer its probe; a hung node fails after it. "
            f"{_default('probe_timeout')}",
        ),
    ] = None,
) -> None:
    """Check that every replica streams from its primary, is close behind and holds its data.

    Exit 0 when every check passed, 1 when one failed, 2 on bad usage or topology, 3 when the
    Docker engine or every node of the cluster is unreachable.
    """
    from shardctl.cli import render
    from shardctl.cli.views import verify as views
    from shardctl.errors import InfrastructureError
    from shardctl.health.checks import PENDING_RESTART

    with open_cluster(topology) as cluster:
        overrides = {
            "max_lag_bytes": max_lag_bytes,
            "max_lag_seconds": max_lag_seconds,
            "canary_timeout": canary_timeout,
            "probe_timeout": timeout,
        }
        limits = cluster.topology.spec.health.replace(
            **{k: v for k, v in overrides.items() if v is not None}
        )
        for line in cluster.apply_durability_quietly():
            render.err_console.print(f"[yellow]note[/]: {render.escape(line)}")
        try:
            report = cluster.verify_replication(limits, deep=deep)
        except InfrastructureError as exc:
            if junit is not None:
                _write(junit, views.junit_error(cluster.topology.cluster, str(exc)))
            raise
    if junit is not None:
        _write(junit, views.junit_xml(report))
    if output is WideOutput.JSON:
        plain.print_json(views.verify_facts(report))
    elif output is WideOutput.WIDE:
        render.show(views.checks_table(report))
    else:
        render.show(views.checks_summary_table(report))
    for failure in report.failures:
        render.err_console.print(f"[red]FAIL[/] {render.escape(failure.line)}", highlight=False)
    for check in report.checks:
        if check.check == PENDING_RESTART:
            note = f"{check.node}: {check.detail}"
            render.err_console.print(f"[yellow]note[/]: {render.escape(note)}", highlight=False)
    if report.failures and report.answered:
        explain_in_flight(in_flight_reshards(cluster))
    if report.answered == 0:
        raise not_running(cluster.topology)
    if not report.ok:
        raise typer.Exit(1)


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"--junit {path}: cannot write the report: {exc.strerror}") from None
