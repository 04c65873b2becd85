"""The capture and copy phases of a reshard.

Capture lists every moving range in its source's fence as ``capturing`` (from then on each
write to it is logged in the source's change log) and indexes the ring position on every shard
involved. Copy streams each chunk of each move from source to target, every target of a source
in parallel, over :class:`~shardctl.ops.reshard.links.Links` that survive a primary's restart;
then it marks the source's ranges copied (Routers dual-write them from then on) and drains the
change log once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from shardctl.config.schema import TableSpec
from shardctl.ops.reshard import transfer
from shardctl.ops.reshard.links import Links
from shardctl.ops.reshard.transfer import Copied
from shardctl.ring.hashing import Span
from shardctl.state import ddl, fence
from shardctl.state.fence import RangeState
from shardctl.state.plan import Chunk, Plan

if TYPE_CHECKING:
    from shardctl.ops.reshard.coordinator import Rebalancer, Report


def capture(rebalancer: Rebalancer, plan: Plan, report: Report) -> bool:
    """Install the fence and list every moving range as capturing; index the ring position."""
    tables = rebalancer.topology.spec.tables

    def install(shard: str) -> None:
        with rebalancer.connect(shard) as conn:
            ddl.install(conn, tables)
            moves = [plan.moves[index] for index in plan.moves_from(shard)]
            fence.give_away(conn, plan.id, moves, RangeState.CAPTURING)

    rebalancer.each(involved(plan), install)

    # Sources select chunks by ring position; targets empty a chunk's range before
    # re-copying it when a dual write got there first; verification counts and checksums
    # each range on both. All range scans with it. A run that planned anew built it already
    # (planning/index): then this only finds it valid.
    indexing = time.monotonic()
    rebalancer.each(indexed_before_copy(plan), rebalancer.ensure_index)
    report.timed("capturing/index", time.monotonic() - indexing)
    return False


def involved(plan: Plan) -> list[str]:
    """Every shard a plan moves data from or to."""
    return sorted(set(plan.sources()) | set(plan.targets()))


def joining(plan: Plan, shard: str) -> bool:
    """Whether ``shard`` joins the ring in this plan (it owned nothing before: a new shard)."""
    return shard not in plan.old.nodes


def indexed_before_copy(plan: Plan) -> list[str]:
    """The shards that get the ring-position index before the copy: every source, and every
    target already in the ring. A joining shard's table holds only what the copy brings, so
    its index is built after the copy (verification builds it), in one pass: maintaining it as
    the rows arrive cost ~6 us of the target's CPU a row, building it ~2.2 us (measured in
    docs/benchmarks.md). Its copy skips the emptiness probe (see :func:`_copy_batch`)."""
    return [shard for shard in involved(plan) if not joining(plan, shard)]


@dataclass
class _Totals:
    """What the copy of one source (or one source-target pair) moved."""

    rows: int = 0
    bytes: int = 0
    paths: Counter[str] = field(default_factory=Counter)

    def add(self, other: _Totals | Copied) -> None:
        self.rows += other.rows
        self.bytes += other.bytes
        if isinstance(other, Copied):
            self.paths[other.how] += 1
        else:
            self.paths.update(other.paths)


def copy(rebalancer: Rebalancer, plan: Plan, report: Report) -> bool:
    """Copy every chunk of the plan, each source in parallel; add what moved to ``report``."""
    started = time.monotonic()
    lock = threading.Lock()

    streams: list[float] = []
    drains: list[float] = []

    def copy_from(source: str) -> None:
        totals, resynced, seconds = _copy_from(rebalancer, plan, source)
        with lock:
            streams.append(seconds[0])
            drains.append(seconds[1])
            report.rows_copied += totals.rows
            report.bytes_copied += totals.bytes
            report.keys_resynced += resynced
            for how, count in totals.paths.items():
                report.chunk_paths[how] = report.chunk_paths.get(how, 0) + count

    rebalancer.each(plan.sources(), copy_from)
    report.copy_seconds += time.monotonic() - started
    # The slowest source's share: its streams, then marking copied and draining its log.
    report.timed("copying/streams", max(streams, default=0.0))
    report.timed("copying/drain", max(drains, default=0.0))
    return False


def _copy_from(
    rebalancer: Rebalancer, plan: Plan, source: str
) -> tuple[_Totals, int, tuple[float, float]]:
    """Copy ``source``'s chunks to every target, mark its ranges copied, drain its change log
    once; what moved, the keys re-synced, and the seconds of the copy and of the rest."""
    started = time.monotonic()
    # Each target of a source in parallel: a leaving shard gives to every other shard, and
    # one stream at a time would leave the machine idle between small chunks.
    targets = sorted({plan.moves[i].target for i in plan.moves_from(source)})
    totals = _Totals()
    for pair in rebalancer.each(targets, partial(_copy_pair, rebalancer, plan, source)).values():
        totals.add(pair)
    copied = time.monotonic()
    resynced = 0
    tables = rebalancer.topology.spec.tables
    with Links(rebalancer.open) as links:
        # From now on routers dual-write this source's ranges (see moving_ranges).
        links.retrying(
            lambda: fence.mark_copied(links.get(source), plan.id), "marking the ranges copied"
        )
        for target in targets:
            resynced += links.retrying(
                partial(_drain, links, source, target, tables), f"draining changes for {target}"
            )
    return totals, resynced, (copied - started, time.monotonic() - copied)


def _drain(links: Links, source: str, target: str, tables: tuple[TableSpec, ...]) -> int:
    return transfer.drain(links.get(source), links.get(target), target, tables)


def _copy_pair(rebalancer: Rebalancer, plan: Plan, source: str, target: str) -> _Totals:
    """Copy the chunks ``source`` gives ``target`` in batches of up to ``rows_per_chunk``
    rows, one stream and one transaction per batch and table, reporting progress."""
    planned = sum(
        plan.sizes[i].rows for i in plan.moves_from(source) if plan.moves[i].target == target
    )
    totals = _Totals()
    with Links(rebalancer.open) as links:
        for batch in plan.batches(source, target, rebalancer.rows_per_chunk):
            step = partial(
                _copy_batch, links, rebalancer.topology.spec.tables, plan, source, target, batch
            )
            for copied in links.retrying(step, f"copying chunks {batch[0].id}..{batch[-1].id}"):
                totals.add(copied)
            rebalancer.progress(
                f"copy:{source}>{target}", f"copy {source} -> {target}", totals.rows, planned
            )
            if rebalancer.throttle:
                time.sleep(rebalancer.throttle)
    return totals


def _copy_batch(
    links: Links,
    tables: tuple[TableSpec, ...],
    plan: Plan,
    source: str,
    target: str,
    batch: tuple[Chunk, ...],
) -> list[Copied]:
    """Copy one batch of chunks of every table; what each table's copy moved (none: copied
    before)."""
    src, dst = links.get(source), links.get(target)
    # A joining target has no index during the copy, and nothing but this copy writes its
    # uncopied ranges: Routers route nothing to it, and dual writes and drains reach a
    # source's ranges only once all of them are copied (a resumed run skips the chunks
    # recorded). So no probe: a plain COPY, falling back to replace or merge if a key is there.
    probe = not joining(plan, target)
    results = []
    for table in tables:
        named = [(f"{table.name}:{chunk.id}", Span(chunk.start, chunk.end)) for chunk in batch]
        copied = transfer.copy_ranges(src, dst, table, named, reshard_id=plan.id, probe=probe)
        if copied is not None:
            results.append(copied)
    return results
