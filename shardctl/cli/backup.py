"""Backup commands: ``backup`` (base backups and a point, or ``--point`` alone), ``backups``
and ``restore`` (docs/backup.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from datetime import datetime

YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@command(
    group=BACKUP,
    summary="Base backups of every shard, verified, then a point.",
    example="shardctl backup --name nightly\nshardctl backup --point before-migration",
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
    """Base backups of every shard in parallel (from a streaming replica where there is one),
    verified with pg_verifybackup, ending with a restore point of the same name; with
    --point, only a named restore point, the same moment on every shard (writes wait a moment:
    the sharded tables are locked on every primary until every point is written)."""
    if name is not None and point_name is not None:
        raise UsageError("give --name (a base backup) or --point (a point alone), not both")
    from shardctl.cli import progress
    from shardctl.cli.views import backup as views
    from shardctl.ops.backup import base, point

    json = output is Output.JSON
    with open_cluster(topology, running=True) as cluster:
        if point_name is not None:
            views.point_report(
                point.create(cluster.topology, cluster.credentials(), point_name), json=json
            )
            return
        with progress.backup() as (report, copied):
            done = base.take(
                cluster.topology,
                cluster.engines,
                cluster.credentials(),
                name,
                progress=report,
                copied=copied,
            )
    views.backup_report(done, json=json)
    if done.retention_error is not None:
        from shardctl.cli import render

        render.warn(f"retention not applied: {done.retention_error}")


@command(
    group=BACKUP,
    summary="Backups, points, recoverable window, newest WAL's age.",
    example="shardctl backups\nshardctl backups -o json",
)
def backups(
    cluster_name: Annotated[
        str | None,
        typer.Option("--cluster", help="Another cluster's backups in the same repository."),
    ] = None,
    output: OutputOption = Output.TABLE,
    topology: TopologyOption = None,
) -> None:
    """The base backups (complete or not) and restore points in the repository, per shard
    the archived WAL (range, timelines, the age of the newest: the RPO now), and the window a
    restore can reach."""
    from shardctl.cli.views import backup as views
    from shardctl.ops.backup.listing import list_backups

    with open_cluster(topology) as cluster:
        found = list_backups(cluster.topology, cluster_name)
    views.listing(found, json=output is Output.JSON)


def _parse_time(value: str) -> datetime:
    from datetime import datetime

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
    example="shardctl restore --to nightly --yes\n"
    "shardctl -f copy.yaml restore --from prod --to before-migration",
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
    """In place (--yes, when none of the cluster's nodes runs: after `shardctl down`, even
    with --volumes), or into the new cluster this topology declares (--from CLUSTER); ends
    healthy, with replicas, the point's ring and roles, and new credentials."""
    chosen = [x for x in (to is not None, at is not None, latest) if x]
    if len(chosen) != 1:
        raise UsageError("give exactly one of --to NAME, --time T or --latest")
    from shardctl.cli import progress
    from shardctl.cli.views import backup as views
    from shardctl.ops.backup.restore import Target
    from shardctl.ops.backup.restore import restore as restore_cluster

    target = Target(point=to, time=_parse_time(at) if at is not None else None, latest=latest)
    with open_cluster(topology) as cluster, progress.nodes() as report:
        done = restore_cluster(cluster, target, source=source, yes=yes, reporter=report)
        require_running(cluster)
    views.restored(done)
