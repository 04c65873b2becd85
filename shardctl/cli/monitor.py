"""``shardctl monitor``: the long-running watcher that fails over automatically."""

from __future__ import annotations

import json
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from shardctl.cli.app import (
    ROLES,
    Output,
    OutputOption,
    TopologyOption,
    command,
    number_option,
    open_cluster,
)

if TYPE_CHECKING:
    from shardctl.ops.monitor.events import Event

DEFAULT_INTERVAL = 1.0
"""Seconds between passes (the loop's own default, restated so --help imports no driver)."""


def _emit_line(event: Event) -> None:
    sys.stderr.write(event.line() + "\n")
    sys.stderr.flush()


def _emit_json(event: Event) -> None:
    sys.stdout.write(json.dumps(event.facts()) + "\n")
    sys.stdout.flush()


@command(
    group=ROLES,
    summary="Watch every shard, fail over by itself where allowed.",
    example="shardctl monitor -o json\nshardctl monitor --once",
)
def monitor(
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One decision, then exit: a failing primary is probed again for its "
            "detect_seconds first. 0 when every shard's primary answers or was failed over, "
            "1 when one is failing and was not.",
        ),
    ] = False,
    interval: Annotated[
        float,
        number_option("--interval", low=0.1, high=60, help="Seconds between passes."),
    ] = DEFAULT_INTERVAL,
    output: OutputOption = Output.TABLE,
    topology: TopologyOption = None,
) -> None:
    """Watch every shard; fail over by itself where the topology says failover: automatic and
    the old primary provably cannot acknowledge a write; otherwise say why not, every pass.
    Timestamped lines on stderr (-o json: JSON lines on stdout). Stops on SIGTERM or SIGINT."""
    from shardctl.ops.monitor.decide import Verdict
    from shardctl.ops.monitor.loop import Monitor

    emit = _emit_json if output is Output.JSON else _emit_line
    with open_cluster(topology, running=True) as cluster:
        watcher = Monitor(cluster, emit=emit, interval=interval)
        if once:
            watcher.decide_once()
            failing = [s for s, v in watcher.last.items() if v is not Verdict.HEALTHY]
            if failing and not watcher.changed:
                raise typer.Exit(1)
            return
        stop = threading.Event()

        def request_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        # A shell's background job starts with SIGINT ignored: keep it so (the job-control
        # convention); otherwise Ctrl-C stops the monitor as cleanly as SIGTERM.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, request_stop)
        watcher.run(stop)
