"""Retention: what the repository may forget once a ``backup`` is done.

- Complete base backups beyond ``retention.base_backups`` (or older than ``retention.days``) go,
  oldest first (the newest always stays), and so do incomplete ones older than the newest
  complete one. Counted per declared shard: a base backup stays while it is one of the newest
  of any shard it holds (``add-shard``'s backup of its new shard alone counts for that shard).
- Then, per shard, the archived WAL segments before the oldest kept base backup's start: a
  restore begins at a base backup's start, so it never reads WAL below that segment, on any
  timeline. Timeline history files stay (a few bytes each; recovery reads a target timeline's
  whole ancestry), and so does every WAL generation folder (the backup node writes into the
  newest one).
- A shard no longer in the topology (``remove-shard``) keeps its whole folder while a kept base
  backup holds it; when none does, the folder goes.

A shard with no kept base backup that the topology declares keeps all of its WAL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from shardctl.config.constants import SEGMENT_BYTES  # used only without a backup_label
from shardctl.config.topology import Topology
from shardctl.ops.backup.repository import BackupRecord, Repository, now
from shardctl.util.text import lsn_int

START = re.compile(r"^START WAL LOCATION: [0-9A-F]+/[0-9A-F]+ \(file ([0-9A-F]{24})\)$", re.M)


@dataclass
class Pruned:
    """What the retention removed."""

    backups: list[str] = field(default_factory=list)
    segments: dict[str, int] = field(default_factory=dict)
    """Per shard, the WAL segments removed."""
    shards: list[str] = field(default_factory=list)
    """Removed shards whose whole folder went (no kept base backup holds them)."""


def apply_retention(topology: Topology, repository: Repository) -> tuple[str, ...]:
    """Apply the topology's retention (see the module); the base backups removed."""
    return tuple(prune(topology, repository).backups)


def prune(topology: Topology, repository: Repository) -> Pruned:
    """Base backups, WAL segments and removed shards' folders beyond the retention."""
    spec = topology.spec.backup
    pruned = Pruned()
    if spec is None:
        return pruned
    records = repository.backups()  # read once: every record is a file
    complete = [r for r in records if r.complete]
    declared = {s.name for s in topology.spec.shards}
    kept: set[str] = set()
    for shard in declared:  # counted per shard: add-shard's base backup holds one shard only
        holding = [r for r in complete if shard in r.shards]
        mine = holding[-spec.retention.base_backups :]
        if spec.retention.days is not None:
            horizon = now() - spec.retention.days * 86400
            mine = [r for r in mine if (r.finished or r.started) >= horizon] or holding[-1:]
        kept |= {r.name for r in mine}
    keep = [r for r in complete if r.name in kept]
    # Where each shard's kept WAL starts, read before anything goes: a label that cannot be
    # read stops the retention with nothing removed.
    cuts: dict[str, str | None] = {}
    for shard in repository.shards_with("wal", "base"):
        holding = [r for r in keep if shard in r.shards]
        cuts[shard] = min(start_segment(repository, r, shard) for r in holding) if holding else None
    newest = complete[-1].started if complete else 0.0
    for record in records:
        if record.name in kept:
            continue
        if record.complete or record.started < newest:
            repository.remove_base(record)
            pruned.backups.append(record.name)
    for shard, cut in cuts.items():
        if cut is None:
            if shard not in declared:
                repository.remove_shard(shard)
                pruned.shards.append(shard)
            continue
        removed = prune_wal(repository, shard, cut)
        if removed:
            pruned.segments[shard] = removed
    return pruned


def start_segment(repository: Repository, record: BackupRecord, shard: str) -> str:
    """The position (log and segment, 16 hex digits, timeline left out) of the first WAL
    segment a restore of ``shard`` from ``record`` reads: from the copy's ``backup_label``,
    else from the recorded start LSN with the default segment size."""
    copy = record.shards[shard]
    label = repository.read_text(f"{copy.path}/backup_label") or ""
    found = START.search(label)
    if found is not None:
        return found.group(1)[8:]
    return lsn_segment(copy.start_lsn)


def lsn_segment(lsn: str, segment_bytes: int = SEGMENT_BYTES) -> str:
    """The position part of the name of the segment holding ``lsn`` (``X/Y``); all zeros
    when it is unknown (nothing is older)."""
    position = lsn_int(lsn)
    if position is None:
        return "0" * 16
    per_log = 0x1_0000_0000 // segment_bytes
    number = position // segment_bytes
    return f"{number // per_log:08X}{number % per_log:08X}"


def prune_wal(repository: Repository, shard: str, cut: str) -> int:
    """Remove ``shard``'s segments (complete or partial, every timeline, every generation)
    whose position is before ``cut``; the number removed. History files stay."""
    old = [entry for entry, match in repository.segments(shard) if match.group(2) < cut]
    repository.remove_segments(shard, old)
    return len(old)
