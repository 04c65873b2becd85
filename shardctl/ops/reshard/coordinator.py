"""Drive a reshard through its phases; persist every step so any machine can resume it.

The state of the operation (plan, phase, whether the ring flipped, the report so far) is a row
of ``shardctl.reshard`` on *every* primary, written after each phase's work completes. When
primaries disagree (a crash between two of those writes), the most advanced phase wins: the
work of every earlier phase was finished before the later phase was recorded anywhere.
See docs/resharding.md for the protocol and why each step is safe to repeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import digest, pg
from shardctl.errors import (
    DatabaseUnavailable,
    NothingToDo,
    ReshardingError,
    ShardctlError,
    UsageError,
)
from shardctl.ops.reshard import transfer
from shardctl.ops.reshard.transfer import Copied
from shardctl.ring.hashing import Span
from shardctl.state import catalog, ddl, fence, inflight, locks, resync
from shardctl.state.fence import RangeState
from shardctl.state.plan import (
    Chunk,
    MoveSize,
    Phase,
    Plan,
    finished,
    make_plan,
    next_phase,
    uncovered,
    without_node,
)
from shardctl.util.waiting import retrying

T = TypeVar("T")
Conn = psycopg.Connection[Any]

RECONNECT_PATIENCE = 120.0
"""Seconds a step waits for a restarted primary before giving up (resumable)."""
RECONNECT_PAUSE = 0.5

PREDRAIN_PASSES = 10
PREDRAIN_ENOUGH = 50
"""Before fencing, drain until a pass re-syncs at most this many keys (or 10 passes)."""

Progress = Callable[[str, str, int, int], None]
"""Called with (task, description, done, total) while a phase works: rows while copying,
moves while cleaning up."""


AfterPhase = Callable[[Phase], None]
"""Called with each phase once its work is done and the next phase is recorded on every
primary: a point where the run may stop (or be killed) and resume. The one hook for fault
injection: the tests kill the process there (tests/integration/kill_after_phase.py)."""


def _no_progress(task: str, description: str, done: int, total: int) -> None:
    pass


def _nothing_after(phase: Phase) -> None:
    pass


class ClusterAccess(Protocol):
    """What the coordinator needs of a cluster (a :class:`shardctl.ops.cluster.Cluster` is one)."""

    @property
    def topology(self) -> Topology:
        """The declared cluster."""
        ...

    def credentials(self) -> Credentials:
        """The superuser login for its nodes."""
        ...


@dataclass
class Report:
    """What a reshard did, for the end-of-run table."""

    rows_copied: int = 0
    bytes_copied: int = 0
    copy_seconds: float = 0.0
    keys_resynced: int = 0
    keys_repaired: list[str] = field(default_factory=list)
    write_pause_ms: float = 0.0
    rows_cleaned: int = 0
    total_seconds: float = 0.0
    chunk_paths: dict[str, int] = field(default_factory=dict)
    """How chunks were copied: plain COPY, replace (a dual write got there first), merge."""
    fences_lifted: int = 0
    """Ranges a target had moved away for good in an earlier reshard and now took back."""
    removed: list[str] = field(default_factory=list)
    """Leaving shards whose nodes ``remove-shard`` has removed (their topology entry too)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Rebuild a stored report."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class State:
    """A reshard as recorded in the catalog."""

    plan: Plan
    phase: Phase
    flipped: bool
    report: Report


class Rebalancer:
    """Plans, runs, resumes and aborts the reshard that brings joining shards into the ring,
    or takes leaving shards out of it (``remove-shard``)."""

    def __init__(
        self,
        cluster: ClusterAccess,
        *,
        progress: Progress = _no_progress,
        rows_per_chunk: int = 50_000,
        throttle_seconds: float = 0.0,
        clean_batch: int = 5_000,
        after_phase: AfterPhase = _nothing_after,
    ) -> None:
        self.cluster = cluster
        self.topology = cluster.topology
        self.progress = progress
        self.rows_per_chunk = rows_per_chunk
        self.throttle = throttle_seconds
        self.clean_batch = clean_batch
        self.after_phase = after_phase

    # ------------------------------------------------------------ connections

    def node(self, shard: str) -> Node:
        """The primary of ``shard``."""
        return self.topology.shard_nodes(shard)[0]

    def open(self, shard: str) -> Conn:
        """A new autocommit connection to a shard primary, set up for transfers."""
        conn = pg.connect(self.node(shard), self.cluster.credentials(), self.topology.spec.database)
        digest.prepare(conn)
        return conn

    @contextmanager
    def connect(self, shard: str) -> Iterator[Conn]:
        """:meth:`open`, closed afterwards."""
        with self.open(shard) as conn:
            yield conn

    @contextmanager
    def exclusive(self, busy: type[ShardctlError] = ReshardingError) -> Iterator[None]:
        """Hold the cluster's rebalance lock: one coordinator at a time, from any machine.

        A session-level advisory lock on the first shard's primary (the first shard never
        changes: add-shard appends). It goes with its connection, so a killed coordinator
        never blocks the ``--resume`` that follows it; it also goes if that primary restarts
        mid-run (the run itself reconnects and carries on, unguarded from then on). A
        ``remove-shard`` of the first shard moves the lock to the next one once the shard is
        gone. ``busy`` is the error raised when another coordinator holds it.
        """
        with self.connect(self._primaries()[0]) as conn:
            row = conn.execute(locks.TRY_SESSION_LOCK, (locks.COORDINATOR_LOCK,)).fetchone()
            if not row or not row[0]:
                raise busy(
                    "another `shardctl rebalance` is running against this cluster; wait for it "
                    "to finish (if it died, its lock went with it: retry)"
                )
            try:
                yield
            finally:
                with contextlib.suppress(psycopg.Error):  # a lost session released it already
                    conn.execute(locks.RELEASE_SESSION_LOCK, (locks.COORDINATOR_LOCK,))

    def _primaries(self) -> list[str]:
        return [shard.name for shard in self.topology.spec.shards]

    def _each(self, shards: list[str], work: Callable[[str], T]) -> dict[str, T]:
        """Run ``work`` for every shard in parallel; the first failure is raised."""
        return pg.each({shard: partial(work, shard) for shard in shards})

    # ------------------------------------------------------------------ state

    def state(self) -> State | None:
        """The current reshard (:func:`shardctl.state.inflight.current` of every primary's
        latest record), or None."""

        def read(shard: str) -> inflight.ReshardRecord | None:
            with self.connect(shard) as conn:
                return inflight.latest(conn)

        found = self._each(self._primaries(), read).values()
        best = inflight.current(r for r in found if r is not None)
        if best is None:
            return None
        return State(best.plan, best.phase, best.flipped, Report.from_json(best.report))

    def _record(self, plan: Plan, phase: Phase, flipped: bool, report: Report) -> None:
        payload = (
            plan.id,
            phase.value,
            flipped,
            json.dumps(plan.to_json()),
            json.dumps(report.__dict__),
        )

        def write(shard: str) -> None:
            with self.connect(shard) as conn:
                conn.execute(inflight.RECORD_RESHARD, payload)

        self._each(self._primaries(), write)

    # -------------------------------------------------------------- planning

    def plan(self, leaving: Sequence[str] = ()) -> Plan:
        """What a rebalance would move (or, with ``leaving``, the removal of those shards), with
        exact rows and bytes per move; changes nothing. While a reshard is unfinished, its
        recorded plan: that is what the cluster is doing."""
        current = self.state()
        if current is not None and not finished(current.phase):
            return current.plan
        return self._plan_after(current, leaving)

    def _plan_after(self, previous: State | None, leaving: Sequence[str] = ()) -> Plan:
        record = catalog.read(self.topology, self.cluster.credentials()).record()
        old = record.ring()
        joining = [s.name for s in self.topology.spec.shards if s.name not in old.nodes]
        if previous is not None:
            # Taken out of the ring but still declared: a remove-shard stopped before it
            # removed the nodes. It is not joining, and must not get its keys back.
            for name in joining:
                if name in previous.plan.leaving and name not in previous.report.removed:
                    raise ReshardingError(
                        f"shard {name!r} was taken out of the ring by reshard "
                        f"{previous.plan.id} but its nodes are not removed yet: run "
                        f"`shardctl remove-shard {name} --resume`"
                    )
        if leaving and joining:
            raise ReshardingError(
                f"{', '.join(joining)} joining the ring: run `shardctl rebalance` before "
                "removing a shard"
            )
        if not joining and not leaving:
            raise NothingToDo(
                "nothing to rebalance: no shard is joining the ring (run `shardctl add-shard`)"
            )
        new = old
        for name in joining:
            new = new.with_node(name)
        for name in leaving:
            try:
                new = without_node(new, name)
            except ValueError as exc:
                raise UsageError(f"cannot remove {name!r}: {exc}") from None
        moves = old.moves_to(new)
        sizes = [MoveSize(0, 0) for _ in moves]
        sources = sorted({m.source for m in moves})

        def measure(source: str) -> list[tuple[int, MoveSize]]:
            indexes = [i for i, m in enumerate(moves) if m.source == source]
            subset = [moves[i] for i in indexes]
            totals = [MoveSize(0, 0) for _ in subset]
            with self.connect(source) as conn:
                for table in self.topology.spec.tables:
                    for j, size in enumerate(transfer.sizes(conn, table, subset)):
                        totals[j] = MoveSize(totals[j].rows + size[0], totals[j].bytes + size[1])
            return list(zip(indexes, totals, strict=True))

        for measured in self._each(sources, measure).values():
            for index, size in measured:
                sizes[index] = size
        plan_id = previous.plan.id + 1 if previous else 1
        return make_plan(plan_id, record.epoch, old, new, sizes, rows_per_chunk=self.rows_per_chunk)

    # ------------------------------------------------------------------- run

    def start(self, plan: Plan | None = None, *, leaving: Sequence[str] = ()) -> State:
        """Record a new plan: ``plan`` as shown to the user, else a fresh one (removing the
        ``leaving`` shards, if any). Recorded on every primary, the plan is what marks its
        leaving shards as leaving for every CLI run. Refused while another reshard is
        unfinished, or when the cluster changed since ``plan`` was made."""
        current = self.state()
        if current is not None and not finished(current.phase):
            raise ReshardingError(
                f"reshard {current.plan.id} is still {current.phase.value}: "
                "run `shardctl rebalance --resume` or `--abort`"
            )
        if plan is None:
            plan = self._plan_after(current, leaving)
        else:
            epoch = catalog.read(self.topology, self.cluster.credentials()).record().epoch
            expected_id = current.plan.id + 1 if current else 1
            if (plan.id, plan.epoch) != (expected_id, epoch):
                raise ReshardingError(
                    "the cluster changed since this plan was made (another rebalance ran); "
                    "run `shardctl rebalance` again to see the new plan"
                )
        report = Report()
        self._record(plan, Phase.PLANNED, False, report)
        return State(plan, Phase.PLANNED, False, report)

    def resume(self) -> State:
        """The unfinished reshard to continue; ReshardingError when there is none."""
        current = self.state()
        if current is None or finished(current.phase):
            raise ReshardingError("no reshard to resume")
        return current

    def run(self, state: State) -> State:
        """Do each remaining phase's work, recording progress after each; returns the end state."""
        started = time.monotonic()
        plan, phase, flipped, report = state.plan, state.phase, state.flipped, state.report
        steps: dict[Phase, Callable[[Plan, Report], bool]] = {
            Phase.PLANNED: lambda p, r: False,
            Phase.CAPTURING: self._capture,
            Phase.COPYING: self._copy,
            Phase.VERIFYING: self._verify,
            Phase.CUTTING_OVER: self._cut_over,
            Phase.CLEANING: self._clean,
        }
        while phase is not Phase.DONE:
            try:
                flipped = steps[phase](plan, report) or flipped
            except psycopg.Error as exc:
                failure = f"reshard {plan.id} failed while {phase.value}: {pg.first_line(exc)}"
                hint = "; it is resumable: run `shardctl rebalance --resume` (or --abort)"
                if isinstance(exc, psycopg.OperationalError):
                    raise DatabaseUnavailable(failure + hint) from None
                raise ReshardingError(failure + hint) from None
            done_phase = phase
            phase = next_phase(phase)
            report.total_seconds += time.monotonic() - started
            started = time.monotonic()
            self._record(plan, phase, flipped, report)
            self.after_phase(done_phase)
        return State(plan, phase, flipped, report)

    def abort(self) -> State:
        """Undo an unfinished reshard that has not flipped the ring."""
        state = self.resume()
        # The ring may have flipped even if the record says not: shardctl can die between
        # publishing the new epoch and recording that it did. The catalog is the truth.
        live = catalog.read(self.topology, self.cluster.credentials()).record()
        if not inflight.may_abort(state.phase, state.flipped or live.epoch > state.plan.epoch):
            raise ReshardingError(
                f"reshard {state.plan.id} has already cut over (ring epoch {live.epoch}); "
                "run `shardctl rebalance --resume`"
            )
        plan = state.plan

        def unfence(source: str) -> None:
            with self.connect(source) as conn:
                fence.take_back(conn, plan.id)
                fence.forget_changes(conn, plan.targets())
            self._drop_index(source)

        def empty(target: str) -> None:
            with self.connect(target) as conn:
                for index, move in enumerate(plan.moves):
                    if move.target != target:
                        continue
                    for table in self.topology.spec.tables:
                        while transfer.delete_range(
                            conn, table, move.start_hex, move.end_hex, batch=self.clean_batch
                        ):
                            self.progress("abort", f"emptying {target}", index, len(plan.moves))
                conn.execute(inflight.FORGET_CHUNKS, (plan.id,))

        self._each(plan.sources(), unfence)
        self._each(plan.targets(), empty)
        self._each(plan.targets(), self._drop_index)
        self._record(plan, Phase.ABORTED, False, state.report)
        return State(plan, Phase.ABORTED, False, state.report)

    # ---------------------------------------------------------------- phases

    def _capture(self, plan: Plan, report: Report) -> bool:
        tables = self.topology.spec.tables

        def install(shard: str) -> None:
            with self.connect(shard) as conn:
                ddl.install(conn, tables)
                moves = [plan.moves[index] for index in plan.moves_from(shard)]
                fence.give_away(conn, plan.id, moves, RangeState.CAPTURING)

        self._each(self._involved(plan), install)

        def index(shard: str) -> None:
            # Sources select chunks by ring position; targets empty a chunk's range before
            # re-copying it when a dual write got there first. Both are range scans with it.
            with self.connect(shard) as conn:
                for table in tables:
                    transfer.ensure_position_index(conn, table)

        self._each(self._involved(plan), index)
        return False

    def _involved(self, plan: Plan) -> list[str]:
        """Every shard a plan moves data from or to."""
        return sorted(set(plan.sources()) | set(plan.targets()))

    def _copy(self, plan: Plan, report: Report) -> bool:
        started = time.monotonic()
        tables = self.topology.spec.tables
        totals: dict[str, tuple[int, int]] = {}
        lock = threading.Lock()

        def copy_pair(source: str, target: str) -> tuple[int, int, dict[str, int]]:
            chunks = [
                c
                for c in plan.chunks
                if (plan.moves[c.move].source, plan.moves[c.move].target) == (source, target)
            ]
            planned = sum(plan.sizes[i].rows for i in plan.moves_from(source)
                          if plan.moves[i].target == target)  # fmt: skip
            rows = nbytes = 0
            paths: dict[str, int] = {}
            with _Links(self) as links:
                for chunk in chunks:

                    def copy_chunk(chunk: Chunk = chunk) -> list[Copied]:
                        src, dst = links.get(source), links.get(target)
                        results = []
                        for table in tables:
                            copied = transfer.copy_range(
                                src,
                                dst,
                                table,
                                chunk.start_hex,
                                chunk.end_hex,
                                reshard_id=plan.id,
                                chunk=f"{table.name}:{chunk.id}",
                            )
                            if copied is not None:
                                results.append(copied)
                        return results

                    for copied in links.retrying(copy_chunk, f"copying chunk {chunk.id}"):
                        rows += copied.rows
                        nbytes += copied.bytes
                        paths[copied.how] = paths.get(copied.how, 0) + 1
                    self.progress(
                        f"copy:{source}>{target}", f"copy {source} -> {target}", rows, planned
                    )
                    if self.throttle:
                        time.sleep(self.throttle)
            return rows, nbytes, paths

        def copy_from(source: str) -> None:
            # Each target of a source in parallel: a leaving shard gives to every other shard,
            # and one stream at a time would leave the machine idle between small chunks.
            targets = sorted({plan.moves[i].target for i in plan.moves_from(source)})
            copied = self._each(targets, partial(copy_pair, source))
            with _Links(self) as links:
                # From now on routers dual-write this source's ranges (see moving_ranges).
                links.retrying(
                    lambda: fence.mark_copied(links.get(source), plan.id),
                    "marking the ranges copied",
                )
                for target in targets:
                    report.keys_resynced += links.retrying(
                        lambda target=target: transfer.drain(  # type: ignore[misc]
                            links.get(source), links.get(target), target, tables
                        ),
                        f"draining changes for {target}",
                    )
            totals[source] = (
                sum(rows for rows, _, _ in copied.values()),
                sum(nbytes for _, nbytes, _ in copied.values()),
            )
            with lock:
                for _, _, paths in copied.values():
                    for how, count in paths.items():
                        report.chunk_paths[how] = report.chunk_paths.get(how, 0) + count

        self._each(plan.sources(), copy_from)
        report.rows_copied += sum(r for r, _ in totals.values())
        report.bytes_copied += sum(b for _, b in totals.values())
        report.copy_seconds += time.monotonic() - started
        return False

    def _verify(self, plan: Plan, report: Report) -> bool:
        """Drain, then compare every moved range; re-sync and name the keys that differ."""
        repaired: dict[str, list[str]] = {}

        def verify(source: str) -> None:
            repaired[source] = self._converge(plan, source, report)

        self._each(plan.sources(), verify)
        for keys in repaired.values():
            report.keys_repaired += keys
        return False

    def _converge(self, plan: Plan, source: str, report: Report) -> list[str]:
        """Make every range of ``source`` equal on its target; keys that had to be repaired."""
        tables = self.topology.spec.tables
        repaired: list[str] = []
        with self.connect(source) as src:
            types = {t.name: resync.key_type(src, t) for t in tables}
            for target in {plan.moves[i].target for i in plan.moves_from(source)}:
                moves = [plan.moves[i] for i in plan.moves_from(source)]
                moves = [m for m in moves if m.target == target]
                with self.connect(target) as dst:
                    report.keys_resynced += transfer.drain(
                        src, dst, target, tables, key_types=types
                    )
                    for table in tables:
                        ours = transfer.fingerprints(src, table, moves)
                        theirs = transfer.fingerprints(dst, table, moves)
                        for move, a, b in zip(moves, ours, theirs, strict=True):
                            if a == b:
                                continue
                            where = transfer.range_predicate(
                                table.key, move.start_hex, move.end_hex
                            )
                            keys = transfer.differing_keys(src, dst, table, where)
                            if keys:
                                with src.transaction():
                                    resync.resync_keys(src, dst, table, types[table.name], keys)
                                repaired += [f"{table.name}:{k}" for k in keys]
        return repaired

    def _cut_over(self, plan: Plan, report: Report) -> bool:
        """Fence, final catch-up, verify what changed, flip the ring; the pause is measured.

        Everything that can happen before the fence does (connections opened, key types looked
        up, the change log drained until short), so writes to moving keys pause only for the
        final drain of a few keys, their row-by-row check and one catalog write per primary.
        """
        tables = self.topology.spec.tables
        sources = plan.sources()
        pairs = [
            (s, t)
            for s in sources
            for t in sorted({plan.moves[i].target for i in plan.moves_from(s)})
        ]
        with ExitStack() as stack:
            held = {shard: stack.enter_context(self.connect(shard)) for shard in self._primaries()}
            target_conns = {pair: stack.enter_context(self.connect(pair[1])) for pair in pairs}
            types = {t.name: resync.key_type(held[sources[0]], t) for t in tables}

            def predrain(source: str) -> None:
                for _ in range(PREDRAIN_PASSES):
                    resynced = sum(
                        transfer.drain(held[s], target_conns[(s, t)], t, tables, key_types=types)
                        for s, t in pairs
                        if s == source
                    )
                    report.keys_resynced += resynced
                    if resynced <= PREDRAIN_ENOUGH:
                        return

            self._each(sources, predrain)
            fenced_at = time.monotonic()

            def fence_and_drain(source: str) -> list[str]:
                # Waits for every in-flight writer of these ranges (they hold the row FOR SHARE).
                fence.set_state(held[source], plan.id, RangeState.FENCED, only=RangeState.CAPTURING)
                mismatched: list[str] = []
                for s, target in pairs:
                    if s == source:
                        drained = transfer.drain_and_check(
                            held[s], target_conns[(s, target)], target, tables, key_types=types
                        )
                        report.keys_resynced += drained.resynced
                        mismatched += drained.mismatched
                return mismatched

            try:
                results = self._each(sources, fence_and_drain)
            except (ShardctlError, psycopg.Error):
                self._unfence(plan)
                raise
            mismatched = [key for keys in results.values() for key in keys]
            if mismatched:
                self._unfence(plan)
                raise ReshardingError(
                    f"cut-over refused: {len(mismatched)} keys differ after the final catch-up "
                    f"(first: {', '.join(mismatched[:5])}); the old ring stays in force, "
                    "run `shardctl rebalance --resume` to retry"
                )
            # Ranges a target gave away for good in an earlier reshard and receives now are
            # its own again from the flip on: lifted while the sources are fenced, so no
            # write reaches them before the epoch that routes there.
            report.fences_lifted += sum(
                self._each(plan.targets(), lambda t: self._take_back_fences(held[t], t, plan))
                .values()
            )  # fmt: skip
            # The roles stay as they are: a reshard moves keys, not primaries. Those of a
            # leaving shard go with it (a shard added back later under its name starts anew).
            roles = catalog.read_current(held[self._primaries()[0]])
            record = without_roles(
                catalog.RingRecord.from_ring(
                    plan.new, plan.epoch + 1, created_by=f"reshard {plan.id}", roles_from=roles
                ),
                plan.leaving,
            )
            self._each(self._primaries(), lambda shard: catalog.write(held[shard], record))
            report.write_pause_ms = (time.monotonic() - fenced_at) * 1000
            for source in sources:
                fence.set_state(held[source], plan.id, RangeState.MOVED)
        return True

    def _take_back_fences(self, conn: Conn, target: str, plan: Plan) -> int:
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

    def record_removed(self, state: State, name: str) -> State:
        """Record that the leaving shard ``name`` is gone (nodes and topology entry), on every
        primary of the (smaller) topology."""
        report = state.report
        if name not in report.removed:
            report.removed.append(name)
        self._record(state.plan, state.phase, state.flipped, report)
        return State(state.plan, state.phase, state.flipped, report)

    def _unfence(self, plan: Plan) -> None:
        def unfence(source: str) -> None:
            with self.connect(source) as src:
                fence.set_state(src, plan.id, RangeState.CAPTURING, only=RangeState.FENCED)

        self._each(plan.sources(), unfence)

    def _clean(self, plan: Plan, report: Report) -> bool:
        """Delete moved rows from their old owners, in throttled batches."""
        cleaned: dict[str, int] = {}

        def clean(source: str) -> None:
            count = 0
            with self.connect(source) as src:
                # A resumed run may find the ranges already moved but not yet marked so.
                fence.set_state(src, plan.id, RangeState.MOVED)
                # A leaving shard is removed whole: deleting its rows first would only cost
                # time, and with --keep-volumes its data stays there to inspect.
                indexes = [] if source in plan.leaving else plan.moves_from(source)
                for done, index in enumerate(indexes, start=1):
                    move = plan.moves[index]
                    for table in self.topology.spec.tables:
                        while n := transfer.delete_range(
                            src, table, move.start_hex, move.end_hex, batch=self.clean_batch
                        ):
                            count += n
                            if self.throttle:
                                time.sleep(self.throttle)
                    self.progress(f"clean:{source}", f"clean {source}", done, len(indexes))
                fence.forget_changes(src, plan.targets())
            self._drop_index(source)
            cleaned[source] = count

        self._each(plan.sources(), clean)
        report.rows_cleaned += sum(cleaned.values())
        self._each(plan.targets(), self._drop_index)
        return True

    def _drop_index(self, shard: str) -> None:
        with self.connect(shard) as conn:
            for table in self.topology.spec.tables:
                transfer.drop_position_index(conn, table)


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


class _Links:
    """Connections to shard primaries that survive a server restart: on a lost connection,
    :meth:`retrying` reconnects (waiting for the node to come back) and redoes the step, which
    is safe because every step of a reshard is idempotent (a chunk commits with its progress
    row; a drain deletes only the change rows it processed)."""

    def __init__(self, rebalancer: Rebalancer, patience: float = RECONNECT_PATIENCE) -> None:
        self.rebalancer = rebalancer
        self.patience = patience
        self.conns: dict[str, Conn] = {}

    def get(self, shard: str) -> Conn:
        """An open connection to ``shard``'s primary, made on first use."""
        if shard not in self.conns:
            self.conns[shard] = self.rebalancer.open(shard)
        return self.conns[shard]

    def retrying(self, step: Callable[[], T], what: str) -> T:
        """Run ``step``; after a lost connection, reconnect and run it again until patience ends."""

        def gave_up(exc: BaseException) -> DatabaseUnavailable:
            return DatabaseUnavailable(
                f"{what}: {pg.first_line(exc)} (for {self.patience:g}s); the reshard is "
                "resumable: run `shardctl rebalance --resume` once the node is back"
            )

        return retrying(
            step,
            retry_on=(psycopg.OperationalError, DatabaseUnavailable),
            patience=self.patience,
            pause=RECONNECT_PAUSE,
            after_failure=self.close,
            on_give_up=gave_up,
        )

    def close(self) -> None:
        """Close every connection (they are reopened on the next :meth:`get`)."""
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()

    def __enter__(self) -> _Links:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
