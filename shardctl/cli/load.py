"""``shardctl load``: the load test, the bulk loader, and ledger verification."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shardctl.cli.app import (
    DATA,
    Output,
    OutputOption,
    TopologyOption,
    command,
    number_option,
    open_cluster,
)
from shardctl.errors import UsageError

PIPELINE = 1
"""``--pipeline``'s default: ops one connection carries at once (see docs/benchmarks.md)."""
MAX_USERS = 100_000
"""The most virtual users ``--users`` takes (each is a few hundred bytes, no thread)."""


@command(
    group=DATA,
    summary="The load test through the Router: throughput, latencies.",
    example="shardctl load --users 1000,5000,10000 --duration 30\n"
    "shardctl load --bulk --rows 1000000\n"
    "shardctl load --verify ledger.jsonl",
)
def load(
    topology: TopologyOption = None,
    output: OutputOption = Output.TABLE,
    workers: Annotated[
        int,
        number_option(
            "--workers",
            "-w",
            low=1,
            high=256,
            help="Ops in flight at once, and connections per node at most.",
        ),
    ] = 8,
    pipeline: Annotated[
        int,
        number_option(
            "--pipeline",
            low=1,
            high=256,
            help="Ops one connection carries at once, several users' pipelined; 1: one op "
            "per connection at a time.",
        ),
    ] = PIPELINE,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            metavar="loop|threads",
            help="With --pipeline 1: one thread carries every op in flight (loop), or each "
            "worker is a thread blocked on its op (threads).",
        ),
    ] = "loop",
    loops: Annotated[
        int | None,
        number_option(
            "--loops",
            low=1,
            high=256,
            show_default=False,
            help="The loop engine's threads, sharing --workers [default: one per 8 workers].",
        ),
    ] = None,
    users: Annotated[
        str | None,
        typer.Option(
            "--users",
            metavar="N[,N...]",
            show_default=False,
            help="Virtual users sharing the workers (one op at a time each). Several counts, "
            "e.g. 1000,5000,10000, run one after the other, one row each in a table.",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        number_option(
            "--duration",
            low=0.1,
            high=86400,
            show_default=False,
            help="Seconds to run [default: 10, unless --ops is given].",
        ),
    ] = None,
    ops: Annotated[
        int | None,
        number_option(
            "--ops", low=1, high=10**9, show_default=False, help="Stop after this many ops."
        ),
    ] = None,
    mix: Annotated[
        str,
        typer.Option(
            "--mix", metavar="OP=WEIGHT,...", help="Op weights, e.g. insert=30,read=40,update=20."
        ),
    ] = "insert=30,read=40,update=20,delete=10",
    read_from: Annotated[
        str,
        typer.Option(
            "--read-from",
            metavar="primary|replica",
            help="primary (read your writes) or replica (may lag behind).",
        ),
    ] = "primary",
    ledger: Annotated[
        Path | None,
        typer.Option(
            "--ledger",
            metavar="FILE",
            help="Write every acknowledged write (key, op, value) as JSON lines.",
        ),
    ] = None,
    verify: Annotated[
        list[Path] | None,
        typer.Option(
            "--verify",
            metavar="FILE",
            help="Check ledger(s) against the cluster instead of running load. Exit 1 on any "
            "lost, stale, resurrected or misplaced key.",
        ),
    ] = None,
    bulk: Annotated[
        bool,
        typer.Option(
            "--bulk", help="Bulk-load --rows new rows of the declared table with COPY, per shard."
        ),
    ] = False,
    rows: Annotated[
        int | None,
        number_option("--rows", low=1, high=10**9, show_default=False, help="Rows for --bulk."),
    ] = None,
    seed: Annotated[
        int | None,
        number_option("--seed", low=0, high=2**63 - 1, show_default=False, help="Random seed."),
    ] = None,
    via: Annotated[
        str | None,
        typer.Option(
            "--via",
            metavar="pooler|direct",
            show_default=False,
            help="pooler (each node's PgBouncer) or direct [default: the topology's "
            "pooler.router].",
        ),
    ] = None,
) -> None:
    """The load test: concurrent workers through the Router; throughput, success, latencies.

    Exit 1 when an op failed or found its row missing. With --verify, checks ledgers instead;
    with --bulk --rows N, fills the declared table (users in the example) through COPY, one
    stream per shard.
    """
    from shardctl.cli.loadrun import (
        Asked,
        check_options,
        check_workers,
        load_config,
        run_bulk,
        run_load,
        verify_ledgers,
    )

    counts = check_options(
        Asked(via, read_from, verify or [], bulk, rows, ledger, duration, ops, users, mix)
    )
    import logging

    from shardctl.router.router import Router

    # Pool reconnect chatter would garble the progress display; failures are counted anyway.
    logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
    with (
        open_cluster(topology, running=True) as cluster,
        Router(
            cluster,
            max_size=max(4, workers),
            via="pooler" if via == "pooler" else "direct" if via == "direct" else None,
        ) as router,
    ):
        if verify:
            verify_ledgers(router, verify, output)
        elif bulk and rows is not None:
            run_bulk(router, rows, ledger, seed, output)
        else:
            check_workers(router, workers)
            run_load(
                router,
                load_config(
                    workers,
                    duration,
                    ops,
                    mix,
                    read_from,
                    ledger,
                    seed,
                    counts,
                    pipeline,
                    engine,
                    loops,
                ),
                counts,
                output,
            )


def parse_users(text: str) -> list[int]:
    """``--users``: one count or several, comma-separated, each 1 to :data:`MAX_USERS`."""
    counts: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        number = part.replace("_", "")
        if not number.isdigit() or not 1 <= int(number) <= MAX_USERS:
            raise UsageError(
                f"--users: expected counts from 1 to {MAX_USERS:,} like 1000,5000,10000, "
                f"got {part!r}"
            )
        counts.append(int(number))
    return counts
