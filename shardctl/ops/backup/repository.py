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
every shard's copy was verified with ``pg_verifybackup``. On another host's engine the
repository is read and written through that engine (:mod:`shardctl.ops.backup.store`), in the
same layout.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardctl.config.topology import Placement, Topology
from shardctl.errors import CheckFailed, UsageError
from shardctl.ops.backup.store import (
    Entry,
    LocalStore,
    Store,
    engine_store,
)
from shardctl.ops.backup.store import (
    RepositoryError as RepositoryError,
)
from shardctl.util.text import lsn_int

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NAME_RULE = "letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63"
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial)?$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
"""A timeline history file: the timeline's ancestry, one line per parent and switch point."""


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
    """One cluster's part of a backup repository, read and written through its
    :class:`~shardctl.ops.backup.store.Store` (this machine's file system, or the repository's
    engine when that is another host's)."""

    def __init__(
        self, root: Path, cluster: str, placement: Placement, store: Store | None = None
    ) -> None:
        self.root = root
        self.cluster = cluster
        self.placement = placement
        self.store: Store = store if store is not None else LocalStore(root)

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
        if is_local(placement):
            root = (topology.path.parent / Path(spec.repository).expanduser()).absolute()
            return cls(root, cluster or topology.cluster, placement)
        root = remote_root(spec.repository, placement.name, topology.path)
        store = engine_store(placement, root, topology.cluster, topology.spec.image)
        return cls(root, cluster or topology.cluster, placement, store)

    @property
    def remote(self) -> bool:
        """Whether the repository is on another host (read and written through its engine)."""
        return not isinstance(self.store, LocalStore)

    @property
    def where(self) -> str:
        """The repository as messages name it: its folder, and its engine when remote."""
        return f"{self.root} on engine {self.placement.name}" if self.remote else str(self.root)

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
        self.store.prepare(self.folder, ("backups", "points", "restores"))

    def require(self) -> None:
        """RepositoryError unless this cluster has a folder in the repository."""
        if not self.store.is_dir(self.root):
            raise RepositoryError(f"backup repository {self.where} does not exist")
        if not self.store.is_dir(self.folder):
            raise CheckFailed(
                f"backup repository {self.where} holds nothing of cluster {self.cluster!r}"
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
        names = [e.path for e in self.store.entries(self.wal_folder(shard))]
        return sorted(int(n) for n in names if n.isdigit())

    def generation(self, shard: str) -> int:
        """The generation the backup node writes ``shard``'s WAL into now."""
        found = self.generations(shard)
        return found[-1] if found else 1

    def shards_with(self, *subfolders: str) -> list[str]:
        """The shards with a folder in this cluster's part holding one of ``subfolders``
        (``wal``, ``base``), by name."""
        found = {
            entry.path.partition("/")[0]
            for entry in self.store.entries(self.folder, depth=2)
            if entry.directory and entry.path.partition("/")[2] in subfolders
        }
        return sorted(found)

    def make_wal_folder(self, shard: str) -> Path:
        """``shard``'s WAL folder, made when missing."""
        folder = self.wal_folder(shard)
        self.store.make_folders(folder)
        return folder

    def read_text(self, relative: str) -> str | None:
        """A file of the repository (``relative`` to its root); None when it is missing.
        RepositoryError when it cannot be read: a read that failed is not a missing file (the
        retention would otherwise guess which WAL a kept backup needs)."""
        return self.store.read(self.root / relative)

    # ------------------------------------------------------------ records

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.store.write(path, json.dumps(data, indent=2, sort_keys=True))

    def _parse(self, path: Path | str, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RepositoryError(f"{path}: unreadable record: {exc}") from None
        if not isinstance(data, dict):
            raise RepositoryError(f"{path}: unreadable record: not an object")
        return data

    def _read(self, path: Path) -> dict[str, Any] | None:
        text = self.store.read(path)
        return None if text is None else self._parse(path, text)

    def _all(self, sub: str) -> list[dict[str, Any]]:
        folder = self.folder / sub
        return [self._parse(folder, text) for text in self.store.texts(folder, ".json")]

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

    def segments(self, shard: str) -> list[tuple[Entry, re.Match[str]]]:
        """Every WAL segment file (complete or partial) of ``shard``, in every generation,
        with its name's match of :data:`SEGMENT` (timeline, position)."""
        return self._wal(shard)[0]

    def _wal(self, shard: str) -> tuple[list[tuple[Entry, re.Match[str]]], list[int]]:
        """``shard``'s segment files and its generations, from one listing."""
        found = []
        generations = []
        for generation, name, entry in self._wal_entries(shard):
            if not name:
                generations.append(int(generation))
                continue
            match = SEGMENT.fullmatch(name)
            if match is not None and not entry.directory:
                found.append((entry, match))
        return found, sorted(generations)

    def _wal_entries(self, shard: str) -> Iterator[tuple[str, str, Entry]]:
        """What ``shard``'s WAL generations hold, one listing: (generation, name, entry), the
        name empty for a generation's own folder."""
        for entry in self.store.entries(self.wal_folder(shard), depth=2):
            generation, _, name = entry.path.partition("/")
            if generation.isdigit():
                yield generation, name, entry

    def archive(self, shard: str) -> tuple[WalRange, int]:
        """:meth:`wal_range` and :meth:`generation` of ``shard`` from one listing."""
        segments, generations = self._wal(shard)
        return wal_range_of(segments), (generations[-1] if generations else 1)

    def wal_range(self, shard: str) -> WalRange:
        """The oldest and newest segment of ``shard``'s archive, its timelines, and when the
        newest file was last written."""
        return wal_range_of(self.segments(shard))

    def history(self, shard: str) -> Histories:
        """``shard``'s timeline history files in the archive (every generation), parsed."""
        found: dict[int, list[Switch]] = {}
        for _, name, entry in self._wal_entries(shard):
            match = HISTORY.fullmatch(name)
            if match is not None and not entry.directory:
                timeline = int(match.group(1), 16)
                if timeline not in found:
                    text = self.store.read(self.wal_folder(shard) / entry.path)
                    if text is not None:
                        found[timeline] = parse_history(text)
        return Histories(found)

    def remove_segments(self, shard: str, entries: list[Entry]) -> None:
        """Remove WAL files of ``shard`` (entries of :meth:`segments`)."""
        folder = self.wal_folder(shard)
        self.store.remove(folder / entry.path for entry in entries)

    def remove_shard(self, shard: str) -> None:
        """Delete a shard's whole folder (a removed shard nothing holds any more)."""
        self.store.remove([self.folder / shard])

    def free_bytes(self) -> int | None:
        """Space left on the repository's file system; None when unreadable."""
        return self.store.free_bytes()

    def discard_copies(self, backup: str, shards: list[str]) -> None:
        """Delete what a failed base backup copied of ``shards``: never restorable, and on a
        full repository the space archiving needs."""
        # Best effort: the failed backup's own error says what went wrong.
        with contextlib.suppress(RepositoryError):
            self.store.remove(self.base_folder(shard, backup) for shard in shards)

    def remove_base(self, record: BackupRecord) -> None:
        """Delete a base backup's copies and then its record (retention)."""
        self.store.remove(self.root / shard.path for shard in record.shards.values())
        self.store.remove([self.folder / "backups" / f"{record.name}.json"])


Switch = tuple[int, int]
"""A line of a history file: the parent timeline, and the LSN where the child left it."""


def parse_history(text: str) -> list[Switch]:
    """A timeline history file's lines (``parent<TAB>X/Y<TAB>reason``); others skipped."""
    found: list[Switch] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit():
            switch = lsn_int(fields[1])
            if switch is not None:
                found.append((int(fields[0]), switch))
    return found


@dataclass(frozen=True)
class Histories:
    """A shard's timeline histories from its archive, by timeline."""

    by_timeline: dict[int, list[Switch]]

    @property
    def newest(self) -> int:
        """The highest timeline with a history (1 without any): where recovery with
        ``recovery_target_timeline = latest`` ends up."""
        return max(self.by_timeline, default=1)

    def holds(self, copy: ShardBackup, timeline: int) -> bool:
        """Whether recovery on ``timeline`` can start from ``copy``: it was taken on that
        timeline, or on an ancestor that the timeline left only after the copy ended. A copy
        that ends past the switch holds WAL the timeline does not (what a failover lost):
        PostgreSQL refuses it ("requested timeline is not a child of this server's
        history"). Without the timeline's history file nothing can be judged: True."""
        if copy.timeline in (0, timeline):
            return True
        history = self.by_timeline.get(timeline)
        if history is None:
            return timeline > copy.timeline
        end = lsn_int(copy.end_lsn) or lsn_int(copy.start_lsn)
        for parent, switch in history:
            if parent == copy.timeline:
                return end is not None and end <= switch
        return False


def wal_range_of(segments: list[tuple[Entry, re.Match[str]]]) -> WalRange:
    """The range, timelines, newest time and size of these segment files."""
    first: str | None = None
    last: str | None = None
    timelines: set[int] = set()
    newest: float | None = None
    size = 0
    for entry, match in segments:
        size += entry.size
        timelines.add(int(match.group(1), 16))
        position = match.group(2)
        if first is None or position < first:
            first = position
        if last is None or position > last:
            last = position
        newest = entry.mtime if newest is None else max(newest, entry.mtime)
    return WalRange(first, last, tuple(sorted(timelines)), newest, size)


def is_local(placement: Placement) -> bool:
    """Whether an engine's host is this machine (its folders are this machine's): the default
    engine, or one reached through a ``unix://`` socket."""
    return placement.endpoint is None or placement.endpoint.startswith("unix://")


def remote_root(repository: str, engine: str, topology: Path) -> Path:
    """The repository folder on another host's engine: an absolute path, or exit 2 (a path
    relative to the topology, or to a home folder, only means something on this machine)."""
    if not repository.startswith("/"):
        raise UsageError(
            f"{topology}: backup.repository {repository!r} is on engine {engine}, another "
            "host: give an absolute path on that host"
        )
    return Path(posixpath.normpath(repository))


def now() -> float:
    """Wall-clock time for records (seconds since the epoch)."""
    return time.time()
