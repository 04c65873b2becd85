"""``shardctl backups``: what the repository holds, and how far back and how recently a
cluster can be restored."""

from __future__ import annotations

from dataclasses import dataclass

from shardctl.config.topology import Topology
from shardctl.health.archiving import RepositoryTimes
from shardctl.ops.backup.repository import BackupRecord, PointRecord, Repository, WalRange, now


@dataclass(frozen=True)
class ShardArchive:
    """One shard's WAL archive."""

    shard: str
    wal: WalRange
    generation: int
    removed: bool = False
    """A shard no longer in the topology (its history kept until the retention drops it)."""

    @property
    def age(self) -> float | None:
        """Seconds since the newest archived WAL was written (the RPO right now)."""
        return None if self.wal.newest_mtime is None else max(0.0, now() - self.wal.newest_mtime)


@dataclass(frozen=True)
class Listing:
    """Base backups, points, and per shard the archive."""

    cluster: str
    repository: str
    backups: tuple[BackupRecord, ...]
    points: tuple[PointRecord, ...]
    archives: tuple[ShardArchive, ...]

    @property
    def earliest(self) -> float | None:
        """The earliest moment a restore can reach: the end of the oldest complete backup."""
        ends = [b.finished for b in self.backups if b.complete and b.finished is not None]
        return min(ends) if ends else None

    @property
    def latest(self) -> float | None:
        """The latest moment every shard's archive reaches (its oldest newest file)."""
        times = [a.wal.newest_mtime for a in self.archives if not a.removed]
        if not times or any(t is None for t in times) or self.earliest is None:
            return None
        return min(t for t in times if t is not None)


def list_backups(topology: Topology, cluster: str | None = None) -> Listing:
    """What the repository holds of ``cluster`` (default: the topology's)."""
    repository = Repository.of(topology, cluster)
    repository.require()
    declared = {s.name for s in topology.spec.shards}
    shards = sorted(declared | set(repository.shards_with("wal")))
    return Listing(
        cluster=repository.cluster,
        repository=str(repository.root),
        backups=tuple(repository.backups()),
        points=tuple(repository.points()),
        archives=tuple(
            ShardArchive(shard, *repository.archive(shard), removed=shard not in declared)
            for shard in shards
        ),
    )


def repository_times(topology: Topology, *, free: bool = False) -> RepositoryTimes:
    """Per shard of ``topology``: when its newest archived WAL was written and its newest
    complete base backup finished (file times and records only: no server is asked); with
    ``free``, the room left on the repository too."""
    repository = Repository.of(topology)
    shards = [s.name for s in topology.spec.shards]
    last: dict[str, float] = {}
    for record in repository.complete_backups():  # oldest first: the newest wins
        for shard in record.shards:
            last[shard] = record.finished or record.started
    return RepositoryTimes(
        newest_wal={shard: repository.wal_range(shard).newest_mtime for shard in shards},
        last_backup=last,
        free_bytes=repository.free_bytes() if free else None,
    )
