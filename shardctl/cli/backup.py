"""Backup commands: ``backup`` (base backups and a point, or ``--point`` alone), ``backups``
and ``restore``."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shardctl.cli.app import (
    BACKUP,
    Output,
    OutputOption,
    TopologyOption,
    command,
    open_cluster,
    require_running,
)
from shardctl.errors import UsageError

if TYPE_CHECKING:  # the rest is imported in each command's body (see shardctl.cli.app)
    from shardctl.ops.backup import point
    from shardctl.ops.backup.listing import Listing

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@command(
    group=BACKUP,
    summary="Base backups of every shard and a restore point.",
    example="shardctl backup\nshardctl backup --point before-migration",
)
def backup(
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of the base backup [default: b<UTC time>]."),
    ] = None,
    point_name: Annotated[
        str | None,
        typer.Option(
            "--point", help="Only write this named restore point (no copy), on every shard."
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
    topology: TopologyOption = None,
) -> None:
    """Base backups of every shard (from replicas), verified, ending with a restore point."""
    from rich.table import Table

    from shardctl.cli import progress, render
    from shardctl.ops.backup import base, point

    if name is not None and point_name is not None:
        raise UsageError("give --name (a base backup) or --point (a point alone), not both")
    with open_cluster(topology, running=True) as cluster:
        if point_name is not None:
            made = point.create(cluster.topology, cluster.credentials(), point_name)
            _point_report(made, output)
            return
        with progress.nodes() as report:
            done = base.take(
                cluster.topology, cluster.engines, cluster.credentials(), name, progress=report
            )
    if output is Output.JSON:
        render.print_json(
            {
                "backup": dataclasses.asdict(done.record),
                "point": dataclasses.asdict(done.point.point),
                "removed": list(done.removed),
            }
        )
        return
    table = Table(title=f"backup {done.record.name}")
    for column in ("shard", "source", "size", "seconds", "timeline", "WAL start", "WAL end"):
        table.add_column(column)
    for shard, copy in sorted(done.record.shards.items()):
        table.add_row(
            shard,
            copy.source,
            _size(copy.size),
            f"{copy.seconds:.1f}",
            str(copy.timeline),
            copy.start_lsn,
            copy.end_lsn,
        )
    render.show(table)
    render.console.print(
        f"[green]backup {done.record.name} complete[/] (verified with pg_verifybackup); "
        f"restore point {done.point.point.name}: writes held "
        f"{done.point.point.write_pause * 1000:.0f} ms"
        + (f"; retention removed {', '.join(done.removed)}" if done.removed else "")
    )


def _point_report(made: point.PointReport, output: Output) -> None:
    from shardctl.cli import render

    record = made.point
    if output is Output.JSON:
        render.print_json(dataclasses.asdict(record) | {"archived_seconds": made.archived_seconds})
        return
    shards = ", ".join(
        f"{shard} {at.lsn} (timeline {at.timeline})" for shard, at in sorted(record.shards.items())
    )
    render.console.print(
        f"[green]restore point {record.name}[/] on every shard at ring epoch {record.epoch}: "
        f"{shards}; writes held {record.write_pause * 1000:.0f} ms, archived "
        f"{made.archived_seconds:.2f} s later"
    )


def _listing_facts(listing: Listing) -> dict[str, Any]:
    return {
        "cluster": listing.cluster,
        "repository": listing.repository,
        "recoverable": {
            "earliest": _when(listing.earliest),
            "latest": _when(listing.latest),
        },
        "backups": [dataclasses.asdict(b) for b in listing.backups],
        "points": [dataclasses.asdict(p) for p in listing.points],
        "archives": [
            {
                "shard": a.shard,
                "generation": a.generation,
                "first_segment": a.wal.first,
                "last_segment": a.wal.last,
                "timelines": list(a.wal.timelines),
                "bytes": a.wal.size,
                "newest_wal_age_seconds": a.age,
            }
            for a in listing.archives
        ],
    }


@command(
    group=BACKUP,
    summary="Base backups and points, the recoverable window, WAL age.",
    example="shardctl backups\nshardctl backups --cluster old-demo -o json",
)
def backups(
    cluster_name: Annotated[
        str | None,
        typer.Option("--cluster", help="Another cluster's backups in the same repository."),
    ] = None,
    output: OutputOption = Output.TABLE,
    topology: TopologyOption = None,
) -> None:
    """Base backups and points, the recoverable window and the age of the newest WAL."""
    from rich.table import Table

    from shardctl.cli import render
    from shardctl.ops.backup.listing import list_backups
    from shardctl.ops.backup.repository import ShardBackup

    with open_cluster(topology) as cluster:
        listing = list_backups(cluster.topology, cluster_name)
    if output is Output.JSON:
        render.print_json(_listing_facts(listing))
        return
    table = Table(title=f"base backups of {listing.cluster} in {listing.repository}")
    for column in ("backup", "state", "finished", "shard", "source", "size", "timeline", "WAL"):
        table.add_column(column)
    for record in listing.backups:
        state = "complete" if record.complete else ("failed" if record.error else "incomplete")
        rows: list[tuple[str, ShardBackup | None]] = list(sorted(record.shards.items()))
        for shard, copy in rows or [("-", None)]:
            table.add_row(
                record.name,
                state,
                _when(record.finished),
                shard,
                copy.source if copy else "-",
                _size(copy.size) if copy else "-",
                str(copy.timeline) if copy else "-",
                f"{copy.start_lsn}..{copy.end_lsn}" if copy else "-",
            )
    render.show(table)
    points = Table(title="restore points")
    for column in ("point", "created", "epoch", "write pause", "shards"):
        points.add_column(column)
    for made in listing.points:
        points.add_row(
            made.name,
            _when(made.created),
            str(made.epoch),
            f"{made.write_pause * 1000:.0f} ms",
            ", ".join(f"{s} {p.lsn}/tl{p.timeline}" for s, p in sorted(made.shards.items())),
        )
    render.show(points)
    archives = Table(title="WAL archive")
    for column in ("shard", "generation", "segments", "timelines", "size", "newest WAL age"):
        archives.add_column(column)
    for archive in listing.archives:
        archives.add_row(
            archive.shard,
            str(archive.generation),
            f"{archive.wal.first or '-'}..{archive.wal.last or '-'}",
            ",".join(map(str, archive.wal.timelines)) or "-",
            _size(archive.wal.size),
            "-" if archive.age is None else f"{archive.age:.1f} s",
        )
    render.show(archives)
    render.console.print(f"recoverable from {_when(listing.earliest)} to {_when(listing.latest)}")


def _parse_time(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--time {value!r} is not an ISO 8601 time (e.g. 2026-12-07T01:30:00+00:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.astimezone()


@command(
    group=BACKUP,
    summary="Restore the cluster to a point, a time or the latest WAL.",
    example="shardctl restore --to before-migration --yes\n"
    "shardctl -f new.yaml restore --from demo --latest",
)
def restore(
    to: Annotated[str | None, typer.Option("--to", help="The named restore point.")] = None,
    at: Annotated[
        str | None,
        typer.Option("--time", help="Each shard to this moment (ISO 8601; as good as clocks)."),
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Everything the archive holds.")] = False,
    source: Annotated[
        str | None,
        typer.Option(
            "--from", help="Build this topology's (new) cluster from CLUSTER's repository."
        ),
    ] = None,
    yes: YesOption = False,
    topology: TopologyOption = None,
) -> None:
    """Restore the whole cluster to a point, a time or the latest WAL (new cluster or in place)."""
    from shardctl.cli import progress, render
    from shardctl.ops.backup.restore import Target
    from shardctl.ops.backup.restore import restore as restore_cluster

    chosen = [x for x in (to is not None, at is not None, latest) if x]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --to NAME, --time T or --latest")
    target = Target(point=to, time=_parse_time(at) if at is not None else None, latest=latest)
    with open_cluster(topology) as cluster, progress.nodes() as report:
        done = restore_cluster(cluster, target, source=source, yes=yes, reporter=report)
        require_running(cluster)
    render.console.print(
        f"[green]restored[/] {done.cluster} from {done.source} to {done.target} in "
        f"{done.seconds:.1f} s: "
        + ", ".join(
            f"{shard} on {r['node']} from {r['backup']}" for shard, r in sorted(done.shards.items())
        )
    )
