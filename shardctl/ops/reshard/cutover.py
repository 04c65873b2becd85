"""The verify and cut-over phases of a reshard.

Verify drains each source's change log and compares every moved range, source against target
(count and checksum per range, then row by row where they differ), re-syncing and naming the
keys that had to be repaired. Cut-over fences the moving ranges, drains the last changes and
checks each key they named, then writes the new ring epoch on every primary: writes to moving
keys pause from the fence to that write, and the pause is measured. A mismatch lifts the fence
and refuses the cut-over (the old ring stays in force).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from shardctl.config.schema import TableSpec
from shardctl.errors import ReshardingError, ShardctlError
from shardctl.ops.reshard import transfer
from shardctl.ring.hashing import Span
from shardctl.state import catalog, fence, resync
from shardctl.state.fence import RangeState
from shardctl.state.plan import Plan, uncovered
from shardctl.util import fanout

if TYPE_CHECKING:
    from shardctl.ops.reshard.coordinator import Rebalancer, Report

Conn = psycopg.Connection[Any]

PREDRAIN_PASSES = 10
PREDRAIN_ENOUGH = 50
"""Before fencing, drain until a pass re-syncs at most this many keys (or 10 passes)."""


def verify(rebalancer: Rebalancer, plan: Plan, report: Report) -> bool:
    """Drain, then compare every moved range; re-sync and name the keys that differ. Every
    (source, target) pair at once, each side of a comparison at once."""
    # A joining target's index is built now, after its copy (copying.indexed_before_copy):
    # the checksums below are range scans of it. Found valid on every other shard.
    indexing = time.monotonic()
    rebalancer.each(plan.targets(), rebalancer.ensure_index)
    report.timed("verifying/index", time.monotonic() - indexing)
    pairs = plan.pairs()
    lock = threading.Lock()

    def one(pair: tuple[str, str]) -> list[str]:
        resynced, repaired = converge(rebalancer, plan, *pair)
        with lock:
            report.keys_resynced += resynced
        return repaired

    for keys in fanout.each({pair: partial(one, pair) for pair in pairs}).values():
        report.keys_repaired += keys
    return False


def converge(rebalancer: Rebalancer, plan: Plan, source: str, target: str) -> tuple[int, list[str]]:
    """Make every range ``source`` gives ``target`` equal on both; the keys re-synced from the
    change log, and those that had to be repaired.

    A range that differs may only hold a write made after the drain (the routers still write
    there): the change log is drained once more before its keys are compared, so that only
    keys the copy and the log both missed count as repaired."""
    tables = rebalancer.topology.spec.tables
    moves = [plan.moves[i] for i in plan.moves_from(source) if plan.moves[i].target == target]
    repaired: list[str] = []
    with rebalancer.connect(source) as src, rebalancer.connect(target) as dst:
        types = {t.name: resync.key_type(src, t) for t in tables}
        resynced = transfer.drain(src, dst, target, tables, key_types=types)
        drained_again = False
        for table in tables:
            ours, theirs = fanout.each(
                {side: partial(transfer.fingerprints, conn, table, moves)
                 for side, conn in (("source", src), ("target", dst))}
            ).values()  # fmt: skip
            for move, a, b in zip(moves, ours, theirs, strict=True):
                if a != b:
                    if not drained_again:
                        resynced += transfer.drain(src, dst, target, tables, key_types=types)
                        drained_again = True
                    keys = _repair(src, dst, table, types[table.name], move)
                    repaired += [f"{table.name}:{k}" for k in keys]
    return resynced, repaired


def _repair(src: Conn, dst: Conn, table: TableSpec, key_type: str, move: Span) -> list[str]:
    """Re-sync the keys of one range whose rows differ; those keys."""
    where = transfer.range_predicate(table.key, move.start_hex, move.end_hex)
    keys = transfer.differing_keys(src, dst, table, where)
    if keys:
        with src.transaction():
            resync.resync_keys(src, dst, table, key_type, keys)
    return keys


@dataclass(frozen=True)
class _Held:
    """Connections opened before the fence, so that the write pause holds no connection set-up:
    one per primary, one per (source, target) pair for its drain, and the key types."""

    primaries: dict[str, Conn]
    targets: dict[tuple[str, str], Conn]
    types: dict[str, str]
    tables: tuple[TableSpec, ...]

    def pairs_of(self, source: str) -> list[tuple[str, str]]:
        """The (source, target) pairs of ``source``."""
        return [pair for pair in self.targets if pair[0] == source]


def cut_over(rebalancer: Rebalancer, plan: Plan, report: Report) -> bool:
    """Fence, final catch-up, verify what changed, flip the ring; the pause is measured.

    Everything that can happen before the fence does (connections opened, key types looked
    up, the change log drained until short), so writes to moving keys pause only for the
    final drain of a few keys, their row-by-row check and one catalog write per primary.
    """
    sources = plan.sources()
    with ExitStack() as stack:
        started = time.monotonic()
        held = _hold(rebalancer, plan, stack)
        rebalancer.each(sources, lambda source: _predrain(held, source, report))
        fenced_at = time.monotonic()
        report.timed("cutting-over/pre-drain", fenced_at - started)
        _fence_and_check(rebalancer, plan, held, report)
        # Ranges a target gave away for good in an earlier reshard and receives now are its
        # own again from the flip on: lifted while the sources are fenced, so no write
        # reaches them before the epoch that routes there.
        lifted = rebalancer.each(
            plan.targets(), lambda t: take_back_fences(held.primaries[t], t, plan)
        )
        report.fences_lifted += sum(lifted.values())
        _flip(rebalancer, plan, held)
        report.write_pause_ms = (time.monotonic() - fenced_at) * 1000
        for source in sources:
            fence.set_state(held.primaries[source], plan.id, RangeState.MOVED)
    return True


def _hold(rebalancer: Rebalancer, plan: Plan, stack: ExitStack) -> _Held:
    tables = rebalancer.topology.spec.tables
    sources = plan.sources()
    pairs = plan.pairs()
    lock = threading.Lock()

    def opened(shard: str) -> Conn:
        conn = rebalancer.open(shard)
        with lock:  # closed with the stack, even when another one fails to open
            stack.enter_context(conn)
        return conn

    # All at once: one after the other, their set-ups added up (~0.2 s each when loaded).
    wanted = {f"primary {s}": s for s in rebalancer.primaries()}
    wanted |= {f"pair {s} {t}": t for s, t in pairs}
    conns = fanout.each({key: partial(opened, shard) for key, shard in wanted.items()})
    primaries = {s: conns[f"primary {s}"] for s in rebalancer.primaries()}
    targets = {(s, t): conns[f"pair {s} {t}"] for s, t in pairs}
    types = {t.name: resync.key_type(primaries[sources[0]], t) for t in tables}
    return _Held(primaries, targets, types, tables)


def _predrain(held: _Held, source: str, report: Report) -> None:
    """Drain ``source``'s change log until a pass is short, before the fence."""
    for _ in range(PREDRAIN_PASSES):
        resynced = sum(
            transfer.drain(
                held.primaries[s], held.targets[(s, t)], t, held.tables, key_types=held.types
            )
            for s, t in held.pairs_of(source)
        )
        report.keys_resynced += resynced
        if resynced <= PREDRAIN_ENOUGH:
            return


def _fence_and_check(rebalancer: Rebalancer, plan: Plan, held: _Held, report: Report) -> None:
    """Fence every source's moving ranges, drain and check what changed; on any failure or
    differing key the fence is lifted again and the cut-over refused."""

    def fence_and_drain(source: str) -> list[str]:
        # Waits for every in-flight writer of these ranges (they hold the row FOR SHARE).
        conn = held.primaries[source]
        fence.set_state(conn, plan.id, RangeState.FENCED, only=RangeState.CAPTURING)
        mismatched: list[str] = []
        for s, target in held.pairs_of(source):
            drained = transfer.drain_and_check(
                conn, held.targets[(s, target)], target, held.tables, key_types=held.types
            )
            report.keys_resynced += drained.resynced
            mismatched += drained.mismatched
        return mismatched

    try:
        results = rebalancer.each(plan.sources(), fence_and_drain)
    except (ShardctlError, psycopg.Error):
        unfence(rebalancer, plan)
        raise
    mismatched = [key for keys in results.values() for key in keys]
    if mismatched:
        unfence(rebalancer, plan)
        raise ReshardingError(
            f"cut-over refused: {len(mismatched)} keys differ after the final catch-up "
            f"(first: {', '.join(mismatched[:5])}); the old ring stays in force, "
            "run `shardctl rebalance --resume` to retry"
        )


def _flip(rebalancer: Rebalancer, plan: Plan, held: _Held) -> None:
    """Write the new ring epoch on every primary, over the connections held."""
    # The roles stay as they are: a reshard moves keys, not primaries. Those of a leaving
    # shard go with it (a shard added back later under its name starts anew).
    roles = catalog.read_current(held.primaries[rebalancer.primaries()[0]])
    record = without_roles(
        catalog.RingRecord.from_ring(
            plan.new, plan.epoch + 1, created_by=f"reshard {plan.id}", roles_from=roles
        ),
        plan.leaving,
    )
    rebalancer.each(
        rebalancer.primaries(), lambda shard: catalog.write(held.primaries[shard], record)
    )


def take_back_fences(conn: Conn, target: str, plan: Plan) -> int:
    """Lift the part of ``target``'s earlier ``moved`` ranges that this plan gives it."""
    received = [(m.start, m.end) for m in plan.moves if m.target == target]
    lifted = 0
    for operation, moved in fence.given_away_before(conn, target, plan.id):
        keep = uncovered(moved.start, moved.end, received)
        if keep == [(moved.start, moved.end)]:
            continue
        fence.narrow(conn, operation, moved, [Span(lo, hi) for lo, hi in keep])
        lifted += 1
    return lifted


def unfence(rebalancer: Rebalancer, plan: Plan) -> None:
    """Let writes to the plan's ranges through again (back to capturing)."""

    def one(source: str) -> None:
        with rebalancer.connect(source) as src:
            fence.set_state(src, plan.id, RangeState.CAPTURING, only=RangeState.FENCED)

    rebalancer.each(plan.sources(), one)


def without_roles(record: catalog.RingRecord, leaving: Sequence[str]) -> catalog.RingRecord:
    """``record`` without the acting roles of the ``leaving`` shards' nodes."""
    if not leaving:
        return record

    def theirs(node: str) -> bool:
        return any(node == f"{n}-primary" or node.startswith(f"{n}-replica-") for n in leaving)

    return dataclasses.replace(
        record,
        primaries=tuple((s, n) for s, n in record.primaries if s not in leaving),
        rejoin=tuple(n for n in record.rejoin if not theirs(n)),
    )
