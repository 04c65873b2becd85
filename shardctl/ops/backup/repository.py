"""The backup repository: a directory, laid out so that PostgreSQL's own tools restore it.

::

    REPOSITORY/<cluster>/
        <shard>/wal/<generation>/   pg_receivewal's folder: WAL segments (a .partial one being
                                    written) and timeline history files; a restore starts a
                                    new generation, so no folder ever holds two histories
        <shard>/base/<backup>/      a plain-format pg_basebackup with its backup_manifest
        backups/<backup>.json       one base backup of every shard (complete or not)
        points/<point>.json         one named restore point: each shard's LSN, timeline and
                                    base backup, the ring epoch and the acting roles
        restores/<n>.json           each restore into this cluster (what it came from)

The JSON records are written whole into a temporary file and renamed, so a killed command
leaves either the old record or the new one. A backup's record says ``complete`` only once
every shard's copy was verified with ``pg_verifybackup``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardctl.config.topology import Placement, Topology
from shardctl.errors import CheckFailed, InfrastructureError, UsageError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial)?$")


class RepositoryError(InfrastructureError):
    """The repository is missing, unwritable or full (exit 3)."""


def check_name(name: str, what: str) -> str:
    """A backup or point name usable as a file name and a restore point name, or exit 2."""
    if NAME.fullmatch(name) is None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UsageError(f"{shown!r} is not a valid {what} name: {NAME_RULE} characters")
    return name


@dataclass(frozen=True)
class ShardBackup:
    """One shard's copy in a base backup."""

    source: str
    """The node it was taken from."""
    path: str
    """Its folder, relative to the repository."""
    size: int = 0
    seconds: float = 0.0
    timeline: int = 0
    start_lsn: str = ""
    end_lsn: str = ""
    verified: bool = False


@dataclass(frozen=True)
class BackupRecord:
    """A base backup of every shard (``backups/<name>.json``)."""

    name: str
    cluster: str
    started: float
    finished: float | None = None
    complete: bool = False
    generation: dict[str, int] = field(default_factory=dict)
    shards: dict[str, ShardBackup] = field(default_factory=dict)
    epoch: int = 0
    primaries: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackupRecord:
        shards = {k: ShardBackup(**v) for k, v in (data.get("shards") or {}).items()}
        return cls(**{**data, "shards": shards})


@dataclass(frozen=True)
class ShardPoint:
    """Where one shard was at a restore point."""

    lsn: str
    timeline: int
    backup: str
    """The base backup a restore of this shard starts from."""


@dataclass(frozen=True)
class PointRecord:
    """A named restore point, the same moment on every shard (``points/<name>.json``)."""

    name: str
    cluster: str
    created: float
    epoch: int
    primaries: dict[str, str]
    shards: dict[str, ShardPoint]
    write_pause: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PointRecord:
        shards = {k: ShardPoint(**v) for k, v in (data.get("shards") or {}).items()}
        return cls(**{**data, "shards": shards})


@dataclass(frozen=True)
class WalRange:
    """What one shard's archive holds."""

    first: str | None
    last: str | None
    timelines: tuple[int, ...]
    newest_mtime: float | None
    size: int


class Repository:
    """One cluster's part of a backup repository, read and written from this host."""

    def __init__(self, root: Path, cluster: str, placement: Placement) -> None:
        self.root = root
        self.cluster = cluster
        self.placement = placement

    @classmethod
    def of(cls, topology: Topology, cluster: str | None = None) -> Repository:
        """The repository ``topology`` declares, for its own cluster or ``cluster``'s."""
        spec = topology.spec.backup
        if spec is None:
            raise UsageError(
                f"{topology.path}: no backup repository declared: add "
                "`backup: {repository: DIR}` (see docs/backup.md)"
            )
        placement = topology.placement(spec.engine)
        endpoint = placement.endpoint
        if endpoint is not None and not endpoint.startswith("unix://"):
            raise UsageError(
                f"{topology.path}: backup.engine {placement.name!r} is on another host; this "
                "version keeps the repository on this machine's engine only"
            )
        root = (topology.path.parent / Path(spec.repository).expanduser()).absolute()
        return cls(root, cluster or topology.cluster, placement)

    @property
    def folder(self) -> Path:
        """This cluster's folder in the repository."""
        return self.root / self.cluster

    def relative(self, path: Path) -> str:
        """``path`` relative to the repository root (how records and containers name it)."""
        return path.relative_to(self.root).as_posix()

    def prepare(self) -> None:
        """Make the repository and this cluster's record folders; RepositoryError when it
        cannot be written."""
        try:
            for sub in ("backups", "points", "restores"):
                (self.folder / sub).mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".write-test"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except OSError as exc:
            raise RepositoryError(
                f"backup repository {self.root}: cannot write: {exc.strerror or exc}"
            ) from None

    def require(self) -> None:
        """RepositoryError unless this cluster has a folder in the repository."""
        if not self.root.is_dir():
            raise RepositoryError(f"backup repository {self.root} does not exist")
        if not self.folder.is_dir():
            raise CheckFailed(
                f"backup repository {self.root} holds nothing of cluster {self.cluster!r}"
            )

    # ------------------------------------------------------------ layout

    def wal_folder(self, shard: str) -> Path:
        """The folder of ``shard``'s WAL generations."""
        return self.folder / shard / "wal"

    def base_folder(self, shard: str, backup: str) -> Path:
        """The folder of ``shard``'s copy in base backup ``backup``."""
        return self.folder / shard / "base" / backup

    def generations(self, shard: str) -> list[int]:
        """The WAL generations of ``shard``, oldest first."""
        try:
            names = os.listdir(self.wal_folder(shard))
        except OSError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def generation(self, shard: str) -> int:
        """The generation the backup node writes ``shard``'s WAL into now."""
        found = self.generations(shard)
        return found[-1] if found else 1

    # ------------------------------------------------------------ records

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp")
            with temporary.open("w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(path)
        except OSError as exc:
            raise RepositoryError(
                f"backup repository {self.root}: cannot write {path.name}: {exc.strerror or exc}"
            ) from None

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{path}: unreadable record: {exc}") from None
        if not isinstance(data, dict):
            raise RepositoryError(f"{path}: unreadable record: not an object")
        return data

    def _all(self, sub: str) -> list[dict[str, Any]]:
        folder = self.folder / sub
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            data = self._read(path)
            if data is not None:
                found.append(data)
        return found

    def write_backup(self, record: BackupRecord) -> None:
        """Store a base backup's record (in progress, complete or failed)."""
        self._write(self.folder / "backups" / f"{record.name}.json", asdict(record))

    def backups(self) -> list[BackupRecord]:
        """Every base backup's record, oldest first."""
        records = [BackupRecord.from_json(d) for d in self._all("backups")]
        return sorted(records, key=lambda r: r.started)

    def backup(self, name: str) -> BackupRecord | None:
        """The record of base backup ``name``, if any."""
        data = self._read(self.folder / "backups" / f"{name}.json")
        return None if data is None else BackupRecord.from_json(data)

    def complete_backups(self) -> list[BackupRecord]:
        """The complete base backups, oldest first."""
        return [r for r in self.backups() if r.complete]

    def write_point(self, record: PointRecord) -> None:
        """Store a restore point's record."""
        self._write(self.folder / "points" / f"{record.name}.json", asdict(record))

    def points(self) -> list[PointRecord]:
        """Every restore point, oldest first."""
        records = [PointRecord.from_json(d) for d in self._all("points")]
        return sorted(records, key=lambda r: r.created)

    def point(self, name: str) -> PointRecord | None:
        """The restore point ``name``, if recorded."""
        data = self._read(self.folder / "points" / f"{check_name(name, 'point')}.json")
        return None if data is None else PointRecord.from_json(data)

    def write_restore(self, generation: int, data: dict[str, Any]) -> None:
        """Record a restore into this cluster (``restores/<n>.json``)."""
        self._write(self.folder / "restores" / f"{generation}.json", data)

    # ------------------------------------------------------------ WAL

    def wal_range(self, shard: str) -> WalRange:
        """The oldest and newest segment of ``shard``'s archive, its timelines, and when the
        newest file was last written."""
        first: str | None = None
        last: str | None = None
        timelines: set[int] = set()
        newest: float | None = None
        size = 0
        for generation in self.generations(shard):
            folder = self.wal_folder(shard) / str(generation)
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                match = SEGMENT.fullmatch(entry.name)
                if match is None:
                    continue
                stat = entry.stat()
                size += stat.st_size
                timelines.add(int(match.group(1), 16))
                position = match.group(2)
                if first is None or position < first:
                    first = position
                if last is None or position > last:
                    last = position
                newest = stat.st_mtime if newest is None else max(newest, stat.st_mtime)
        return WalRange(first, last, tuple(sorted(timelines)), newest, size)

    def free_bytes(self) -> int | None:
        """Space left for this user on the repository's file system; None when unreadable."""
        try:
            found = os.statvfs(self.root)
        except OSError:
            return None
        return found.f_bavail * found.f_frsize

    def discard_copies(self, backup: str, shards: list[str]) -> None:
        """Delete what a failed base backup copied of ``shards``: never restorable, and on a
        full repository the space archiving needs."""
        for shard in shards:
            shutil.rmtree(self.base_folder(shard, backup), ignore_errors=True)

    def remove_base(self, record: BackupRecord) -> None:
        """Delete a base backup's copies and then its record (retention)."""
        for shard in record.shards.values():
            shutil.rmtree(self.root / shard.path, ignore_errors=True)
        (self.folder / "backups" / f"{record.name}.json").unlink(missing_ok=True)


def now() -> float:
    """Wall-clock time for records (seconds since the epoch)."""
    return time.time()
