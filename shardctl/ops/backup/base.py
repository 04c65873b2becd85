"""``shardctl backup``: a base backup of every shard at once, verified, ending with a point.

Each shard is copied by ``pg_basebackup`` run in the backup node (so the copy goes straight into
the repository, on the repository's host), from a streaming replica when the shard has one (no
load on the primary), else from the primary; plain format with the WAL it needs
(``-X stream``) and a backup manifest, then checked with ``pg_verifybackup``. The backup's
record says ``complete`` only after every shard passed; a backup that is killed or fails stays
listed as incomplete, and restores never use it. It ends with a restore point of the same name
(:mod:`shardctl.ops.backup.point`), then applies the retention
(:mod:`shardctl.ops.backup.retention`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.docker.backup_specs import BACKUP_APPLICATION
from shardctl.docker.engine import Engines
from shardctl.docker.specs import PASSFILE
from shardctl.errors import CheckFailed, DatabaseUnavailable, ProvisioningError, UsageError
from shardctl.ops.backup import archiving, point
from shardctl.ops.backup.progress import PROGRESS_QUERY, Copied, CopiedCallback, Meter
from shardctl.ops.backup.repository import (
    BackupRecord,
    Repository,
    RepositoryError,
    ShardBackup,
    check_name,
    now,
)
from shardctl.ops.backup.retention import apply_retention
from shardctl.util import fanout

if TYPE_CHECKING:
    from shardctl.docker.records import Container

Progress = Callable[[str, str], None]
"""Called with (shard, what is happening now)."""

POLL = 1.0
"""Seconds between two readings of a copy's progress on its source server."""
NO_SPACE = "No space left on device"
"""What pg_basebackup (strerror of ENOSPC) says when the repository is full."""


@dataclass(frozen=True)
class BackupReport:
    """What ``backup`` did."""

    record: BackupRecord
    point: point.PointReport
    removed: tuple[str, ...]
    """Older base backups the retention removed."""
    retention_error: str | None = None
    """Why the retention could not be applied (the backup and its point are made all the
    same; the next backup applies it again)."""


def default_name() -> str:
    """A backup name from the time now (UTC), sortable."""
    return datetime.now(UTC).strftime("b%Y%m%dT%H%M%SZ")


def take(
    topology: Topology,
    engines: Engines,
    credentials: Credentials,
    name: str | None = None,
    *,
    progress: Progress = lambda _shard, _step: None,
    copied: CopiedCallback = lambda _copied: None,
) -> BackupReport:
    """Base backups of every shard in parallel, verified, then a restore point named alike;
    ``copied`` gets each shard's bytes, rate and time left while it copies."""
    name = check_name(name or default_name(), "backup")
    shards = [shard.name for shard in topology.spec.shards]
    record = _copies(topology, engines, credentials, name, shards, progress, copied)
    progress("*", "restore point")
    made = point.create(topology, credentials, name)
    try:
        removed = apply_retention(topology, Repository.of(topology))
    except RepositoryError as exc:
        return BackupReport(record, made, (), str(exc))
    return BackupReport(record, made, removed)


def take_shard(
    topology: Topology,
    engines: Engines,
    credentials: Credentials,
    shard: str,
    *,
    progress: Progress = lambda _shard, _step: None,
) -> BackupRecord:
    """A base backup of ``shard`` alone (one ``add-shard`` just made), verified, with no point
    of its own: with it, every shard has a base backup and points can be made at once."""
    name = check_name(f"{default_name()}-{shard}"[:63], "backup")
    record = _copies(topology, engines, credentials, name, [shard], progress, lambda _c: None)
    with contextlib.suppress(RepositoryError):  # made all the same; the next backup prunes
        apply_retention(topology, Repository.of(topology))
    return record


def _copies(
    topology: Topology,
    engines: Engines,
    credentials: Credentials,
    name: str,
    shards: list[str],
    progress: Progress,
    copied: CopiedCallback,
) -> BackupRecord:
    """Copy ``shards`` in parallel into base backup ``name``; its record, complete only when
    every copy was verified (else recorded as failed, and CheckFailed)."""
    repository = Repository.of(topology)
    repository.prepare()
    if repository.backup(name) is not None or repository.point(name) is not None:
        raise UsageError(f"a backup or point named {name!r} exists already")
    node = _backup_node(topology, engines)
    primaries = {p.shard: p.name for p in topology.primaries()}
    record = BackupRecord(
        name=name,
        cluster=topology.cluster,
        started=now(),
        generation={shard: repository.generation(shard) for shard in shards},
        primaries={shard: primaries[shard] for shard in shards if shard in primaries},
    )
    repository.write_backup(record)  # listed as incomplete until every shard is verified
    results = fanout.gather(
        {
            shard: partial(
                _one,
                topology,
                engines,
                credentials,
                repository,
                node,
                name,
                shard,
                progress,
                copied,
            )
            for shard in shards
        }
    )
    copies: dict[str, ShardBackup] = {}
    failures: list[BaseException] = []
    for shard, result in results.items():
        if isinstance(result, BaseException):
            failures.append(result)
        else:
            copies[shard] = result
    if failures:
        repository.discard_copies(name, shards)  # first: it frees a full repository
        error = "; ".join(str(f) for f in failures)
        repository.write_backup(dataclasses.replace(record, finished=now(), error=error))
        full = [f for f in failures if isinstance(f, RepositoryError)]
        kind = RepositoryError if full else CheckFailed
        raise kind(f"backup {name} failed, its copies removed: {(full or failures)[0]}")
    record = dataclasses.replace(record, shards=copies, finished=now(), complete=True)
    repository.write_backup(record)
    return record


def _backup_node(topology: Topology, engines: Engines) -> Container:
    repository = Repository.of(topology)
    name = archiving.container_name(topology)
    found = engines.named(name, repository.placement)
    if found is None or engines.status(found) != "running":
        raise ProvisioningError(
            f"the backup node {name} is not running: run `shardctl up` (it starts it)"
        )
    return found


def source(topology: Topology, credentials: Credentials, shard: str) -> Node:
    """The node to copy ``shard`` from: a replica that answers and streams, else the primary."""
    primary, *replicas = topology.shard_nodes(shard)
    for replica in replicas:
        try:
            with pg.connect(replica, credentials, "postgres", timeout=3.0) as conn:
                row = conn.execute(
                    "SELECT pg_catalog.pg_is_in_recovery() AND EXISTS (SELECT 1 FROM "
                    "pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming')"
                ).fetchone()
        except (DatabaseUnavailable, psycopg.Error):
            continue
        if row is not None and row[0]:
            return replica
    if primary.role is not Role.PRIMARY:
        raise CheckFailed(f"{shard}: no primary")
    return primary


def _one(
    topology: Topology,
    engines: Engines,
    credentials: Credentials,
    repository: Repository,
    container: Container,
    name: str,
    shard: str,
    progress: Progress,
    copied: CopiedCallback,
) -> ShardBackup:
    node = source(topology, credentials, shard)
    host, port = archiving.reach(topology, repository, node)
    folder = repository.base_folder(shard, name)
    inside = f"/repository/{repository.relative(folder)}"
    environment = {"PGPASSFILE": PASSFILE, "PGAPPNAME": f"{BACKUP_APPLICATION}-base"}
    progress(shard, f"copying from {node.name}")
    started = time.monotonic()
    stop = threading.Event()
    seen: list[Copied] = []
    sampling = threading.Lock()

    def sampled(now: Copied) -> None:
        with sampling:
            if stop.is_set():
                return  # the copy is over: its last word is the "copied" sample below
            seen[:] = [now]
            copied(now)

    watcher = threading.Thread(
        target=_watch,
        args=(node, credentials, shard, environment["PGAPPNAME"], sampled, stop),
        name=f"shardctl-backup-progress-{shard}",
        daemon=True,
    )
    watcher.start()
    try:
        code, output = engines.run_in(
            container,
            [
                "pg_basebackup",
                "-D",
                inside,
                "-h",
                host,
                "-p",
                str(port),
                "-U",
                topology.spec.credentials.replication_user,
                "-w",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--manifest-checksums=CRC32C",
            ],
            environment=environment,
        )
    finally:
        # Not joined: the copy is timed, and checked, without waiting for a reading in flight
        # (or a connection still being made) on a loaded source; the watcher ends by itself.
        with sampling:
            stop.set()
    if code != 0:
        if NO_SPACE in output:
            said = next(line for line in output.splitlines() if NO_SPACE in line)
            raise RepositoryError(
                f"{shard}: backup repository {repository.root} is full: pg_basebackup from "
                f"{node.name} failed: {said.strip()}"
            )
        raise CheckFailed(f"{shard}: pg_basebackup from {node.name} failed: {_last(output)}")
    seconds = time.monotonic() - started
    size = _read_in(engines, container, ["du", "-sb", inside], _du, f"the size of {inside}")
    streamed = max(size, seen[0].streamed if seen else 0)  # a copy quicker than one reading
    rate = streamed / seconds if seconds > 0 and streamed else None
    copied(Copied(shard, "copied", streamed, streamed, rate, 0.0, done=True))
    progress(shard, "verifying")
    code, output = engines.run_in(container, ["pg_verifybackup", "-q", inside])
    if code != 0:
        raise CheckFailed(f"pg_verifybackup of {inside} failed: {_last(output)}")
    timeline, start, end = _read_in(
        engines, container, ["cat", f"{inside}/backup_manifest"], _wal_range, "its manifest"
    )
    progress(shard, "verified")
    return ShardBackup(
        source=node.name,
        path=repository.relative(folder),
        size=size,
        seconds=seconds,
        timeline=timeline,
        start_lsn=start,
        end_lsn=end,
        verified=True,
    )


def _watch(
    node: Node,
    credentials: Credentials,
    shard: str,
    application: str,
    copied: CopiedCallback,
    stop: threading.Event,
) -> None:
    """Read the copy's progress on its source every :data:`POLL` seconds until ``stop``; a
    source that does not answer only costs the progress display, never the backup."""
    meter = Meter(shard)
    try:
        with pg.connect(node, credentials, "postgres", timeout=3.0, deadline=5.0) as conn:
            while not stop.wait(POLL):
                row = conn.execute(PROGRESS_QUERY, (application,)).fetchone()
                if row is None:
                    continue
                phase, streamed, estimate = row
                total = None if estimate is None else int(str(estimate))
                copied(meter.sample(time.monotonic(), str(phase), int(str(streamed)), total))
    except (DatabaseUnavailable, psycopg.Error):
        return


READ_ATTEMPTS = 3
READ_TIMEOUT = 120
"""Seconds ``du`` of a copy or ``cat`` of its manifest may take before the engine counts as
stuck (the copy and its verification themselves are not bounded: they take what the size
takes)."""
T = TypeVar("T")


def _read_in(
    engines: Engines,
    container: Container,
    argv: list[str],
    parse: Callable[[str], T | None],
    what: str,
) -> T:
    """What ``argv``'s output in the backup node says, parsed; asked again when the answer
    does not parse (an exec's output can arrive empty under heavy load), CheckFailed after
    :data:`READ_ATTEMPTS`: a copy is never recorded with a size or WAL range it did not have."""
    output = ""
    for _ in range(READ_ATTEMPTS):
        code, output = engines.run_in(container, argv, timeout=READ_TIMEOUT)
        found = parse(output) if code == 0 else None
        if found is not None:
            return found
    raise CheckFailed(f"could not read {what} in the backup node: {_last(output)}")


def _du(output: str) -> int | None:
    """``du -sb``'s bytes."""
    words = output.split()
    return int(words[0]) if words and words[0].isdigit() else None


def _wal_range(manifest: str) -> tuple[int, str, str] | None:
    """A backup manifest's timeline (the last range's), start and end LSN."""
    try:
        ranges = json.loads(manifest).get("WAL-Ranges") or []
    except (ValueError, AttributeError):
        return None
    if not ranges:
        return None
    return (
        int(ranges[-1].get("Timeline", 0)),
        str(ranges[0].get("Start-LSN", "")),
        str(ranges[-1].get("End-LSN", "")),
    )


def _last(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
