"""Tables and lines of ``backup``, ``backup --point``, ``backups`` and ``restore``."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from shardctl.cli import plain, render
from shardctl.ops.backup.base import BackupReport
from shardctl.ops.backup.listing import Listing
from shardctl.ops.backup.point import PointReport
from shardctl.ops.backup.repository import ShardBackup
from shardctl.ops.backup.restore import RestoreReport


def when(stamp: float | None) -> str:
    """A record's time in UTC, or ``-``."""
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def size(n: int) -> str:
    """Bytes for people."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def rate(copy: ShardBackup) -> float | None:
    """A shard's copy in bytes per second (its size over pg_basebackup's time)."""
    return copy.size / copy.seconds if copy.seconds > 0 and copy.size else None


def backup_report(done: BackupReport, *, json: bool) -> None:
    """What ``backup`` did: per shard source, size, duration, rate, timeline and WAL range."""
    if json:
        record = dataclasses.asdict(done.record)
        for shard, copy in done.record.shards.items():
            found = rate(copy)
            record["shards"][shard]["bytes_per_second"] = None if found is None else round(found)
        plain.print_json(
            {
                "backup": record,
                "point": dataclasses.asdict(done.point.point),
                "removed": list(done.removed),
                "retention_error": done.retention_error,
            }
        )
        return
    table = Table(title=f"backup {done.record.name}")
    columns = ("shard", "source", "size", "seconds", "rate", "timeline", "WAL start", "WAL end")
    for column in columns:
        table.add_column(column)
    for shard, copy in sorted(done.record.shards.items()):
        speed = rate(copy)
        table.add_row(
            shard,
            copy.source,
            size(copy.size),
            f"{copy.seconds:.1f}",
            "-" if speed is None else f"{size(round(speed))}/s",
            str(copy.timeline),
            copy.start_lsn,
            copy.end_lsn,
        )
    render.show(table)
    copies = done.record.shards.values()
    longest = max((c.seconds for c in copies), default=0.0)
    whole = sum(c.size for c in copies)
    render.console.print(
        f"[green]backup {done.record.name} complete[/] (verified with pg_verifybackup): "
        f"{size(whole)} in {longest:.1f} s"
        + (f" ({size(round(whole / longest))}/s)" if longest > 0 else "")
        + "; "
        f"restore point {done.point.point.name}: writes held "
        f"{done.point.point.write_pause * 1000:.0f} ms"
        + (f"; retention removed {', '.join(done.removed)}" if done.removed else "")
    )


def point_report(made: PointReport, *, json: bool) -> None:
    """What ``backup --point`` did: each shard's LSN and timeline, the write pause."""
    record = made.point
    if json:
        plain.print_json(
            dataclasses.asdict(record)
            | {
                "archived_seconds": made.archived_seconds,
                "fenced_seconds": made.fenced_seconds,
                "prepared_seconds": made.prepared_seconds,
                "held": {shard: dataclasses.asdict(h) for shard, h in made.shards.items()},
            }
        )
        return
    shards = ", ".join(
        f"{shard} {at.lsn} (timeline {at.timeline})" for shard, at in sorted(record.shards.items())
    )
    render.console.print(
        f"[green]restore point {record.name}[/] on every shard at ring epoch {record.epoch}: "
        f"{shards}; writes held {record.write_pause * 1000:.0f} ms, archived "
        f"{made.archived_seconds:.2f} s later"
    )


def listing_facts(listing: Listing) -> dict[str, Any]:
    """``backups -o json``."""
    return {
        "cluster": listing.cluster,
        "repository": listing.repository,
        "recoverable": {"earliest": when(listing.earliest), "latest": when(listing.latest)},
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
                "removed": a.removed,
            }
            for a in listing.archives
        ],
    }


def listing(found: Listing, *, json: bool) -> None:
    """``backups``: base backups, points, the archive per shard and the recoverable window."""
    if json:
        plain.print_json(listing_facts(found))
        return
    table = Table(title=f"base backups of {found.cluster} in {found.repository}")
    for column in ("backup", "state", "finished", "shard", "source", "size", "timeline", "WAL"):
        table.add_column(column)
    for record in found.backups:
        state = "complete" if record.complete else ("failed" if record.error else "incomplete")
        rows: list[tuple[str, ShardBackup | None]] = list(sorted(record.shards.items()))
        for shard, copy in rows or [("-", None)]:
            table.add_row(
                record.name,
                state,
                when(record.finished),
                shard,
                copy.source if copy else "-",
                size(copy.size) if copy else "-",
                str(copy.timeline) if copy else "-",
                f"{copy.start_lsn}..{copy.end_lsn}" if copy else "-",
            )
    render.show(table)
    points = Table(title="restore points")
    for column in ("point", "created", "epoch", "write pause", "shards"):
        points.add_column(column)
    for made in found.points:
        points.add_row(
            made.name,
            when(made.created),
            str(made.epoch),
            f"{made.write_pause * 1000:.0f} ms",
            ", ".join(f"{s} {p.lsn}/tl{p.timeline}" for s, p in sorted(made.shards.items())),
        )
    render.show(points)
    archives = Table(title="WAL archive")
    for column in ("shard", "generation", "segments", "timelines", "size", "newest WAL age"):
        archives.add_column(column)
    for archive in found.archives:
        archives.add_row(
            f"{archive.shard} (removed)" if archive.removed else archive.shard,
            str(archive.generation),
            f"{archive.wal.first or '-'}..{archive.wal.last or '-'}",
            ",".join(map(str, archive.wal.timelines)) or "-",
            size(archive.wal.size),
            "-" if archive.age is None else f"{archive.age:.1f} s",
        )
    render.show(archives)
    render.console.print(f"recoverable from {when(found.earliest)} to {when(found.latest)}")


def restored(done: RestoreReport) -> None:
    """What ``restore`` did."""
    render.console.print(
        f"[green]restored[/] {done.cluster} from {done.source} to {done.target} in "
        f"{done.seconds:.1f} s: "
        + ", ".join(
            f"{shard} on {r['node']} from {r['backup']}"
            + (" (the catalog's roles rewritten to it)" if r.get("catalog_roles_rewritten") else "")
            for shard, r in sorted(done.shards.items())
        )
    )
