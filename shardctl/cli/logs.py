"""``shardctl logs``: the nodes' server logs, interleaved and prefixed with the node's name."""

from __future__ import annotations

import os
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from shardctl.cli import complete
from shardctl.cli.app import OPERATIONS, TopologyOption, command, number_option, open_cluster
from shardctl.errors import UsageError

if TYPE_CHECKING:
    from shardctl.config.topology import Node, Topology

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from now (``30s``, ``10m``, ``2h``, ``1d``) or a time
    (``2026-12-07T10:00``, ``2026-12-07 10:00:00+01:00``; without a zone, local time)."""
    now = now or datetime.now(UTC)
    match = re.fullmatch(r"\s*(\d{1,7})\s*([smhd])\s*", text)
    if match is not None:
        return now - timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor a time (2026-12-07T10:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def targets(topology: Topology, names: list[str]) -> list[Node]:
    """The nodes that ``names`` (shards or nodes) mean, in declared order; all when none."""
    if not names:
        return list(topology.nodes)
    shards = {s.name for s in topology.spec.shards}
    chosen = {n.name for n in topology.nodes if n.name in names or n.shard in names}
    unknown = [n for n in names if n not in shards and n not in chosen]
    if unknown:
        raise UsageError(
            f"no shard or node {unknown[0]!r} in {topology.path}: shards are "
            f"{', '.join(sorted(shards))}; `shardctl validate` lists the nodes"
        )
    return [n for n in topology.nodes if n.name in chosen]


@command(
    group=OPERATIONS,
    summary="Server logs of shards or nodes, interleaved by time.",
    example="shardctl logs shard-1 --since 10m\nshardctl logs -f --tail 20",
)
def logs(
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[SHARD|NODE]...",
            help="Shards (all their nodes) or nodes [default: every node].",
            autocompletion=complete.target,
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until Ctrl-C.")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            show_default=False,
            help="Only lines since a duration ago (30s, 10m, 2h, 1d) or a time (2026-12-07T10:00).",
        ),
    ] = None,
    tail: Annotated[
        int | None,
        number_option(
            "--tail",
            low=0,
            high=1_000_000,
            metavar="LINES",
            show_default=False,
            help="Only the last LINES lines of each node.",
        ),
    ] = None,
    topology: TopologyOption = None,
) -> None:
    """The server logs of the nodes, on whichever engine each runs, interleaved by time and
    prefixed with the node's name, as docker compose does."""
    from shardctl.cli import render
    from shardctl.docker import logs as node_logs

    start = parse_since(since) if since is not None else None
    with open_cluster(topology, nodes=names or []) as cluster:
        nodes = targets(cluster.topology, names or [])
        width = max(len(n.name) for n in nodes)
        if follow:
            lines, missing = node_logs.follow(cluster.engines, nodes, since=start, tail=tail)
        else:
            found, missing = node_logs.read(cluster.engines, nodes, since=start, tail=tail)
            lines = iter(found)
        for name in missing:
            render.err_console.print(
                f"[yellow]note[/]: {name} has no container (run `shardctl up`)"
            )
        try:
            for line in lines:
                sys.stdout.write(f"{line.node:<{width}} | {line.text}\n")
                if follow:
                    sys.stdout.flush()
        except KeyboardInterrupt:
            return  # the way to stop following: exit 0
        except BrokenPipeError:  # `shardctl logs | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
