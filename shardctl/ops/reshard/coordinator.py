"""Drive a reshard through its phases; persist every step so any machine can resume it.

The :class:`Rebalancer` plans, starts, runs, resumes and aborts; the phases' work is in
:mod:`~shardctl.ops.reshard.copying` (capture, copy), :mod:`~shardctl.ops.reshard.cutover`
(verify, cut-over) and here (clean-up). :func:`~shardctl.ops.reshard.rebalance.decide` says
what ``rebalance`` does given the reshard in flight and the flags.

The state of the operation (plan, phase, whether the ring flipped, the report so far) is a row
of ``shardctl.reshard`` on *every* primary, written after each phase's work completes. When
primaries disagree (a crash between two of those writes), the most advanced phase wins
(:func:`shardctl.state.inflight.current`): the work of every earlier phase was finished before
the later phase was recorded anywhere.
See docs/resharding.md for the protocol and why each step is safe to repeat.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from shardctl.ops.reshard import copying, cutover, transfer
from shardctl.ops.reshard.links import Links
from shardctl.state import catalog, fence, inflight, locks
from shardctl.state.fence import RangeState
from shardctl.state.plan import (
    MoveSize,
    Phase,
    Plan,
    finished,
    make_plan,
    next_phase,
    without_node,
)
from shardctl.util import fanout

T = TypeVar("T")
Conn = psycopg.Connection[Any]

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


UNTHROTTLED_CLEAN_BATCH = 200_000
"""Rows deleted per statement by an unthrottled clean-up: the whole of a source's moved rows
at 1M users, while the statement's list of row ids stays a few megabytes however large the
tables grow."""


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
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time per step: ``planning``, each phase's work by the phase's name, and
    ``recording`` (writing the phase on every primary); summed over resumed runs."""

    def timed(self, step: str, seconds: float) -> None:
        """Add ``seconds`` to ``step`` in :attr:`phase_seconds`."""
        self.phase_seconds[step] = round(self.phase_seconds.get(step, 0.0) + seconds, 3)

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
        self.progress = progress
        self.rows_per_chunk = rows_per_chunk
        self.throttle = throttle_seconds
        self.clean_batch = clean_batch
        self.after_phase = after_phase

    @property
    def topology(self) -> Topology:
        """The cluster's topology, as it is now (a removed shard leaves it mid-run)."""
        return self.cluster.topology

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
        with self.connect(self.primaries()[0]) as conn:
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

    def primaries(self) -> list[str]:
        """Every shard of the topology (a connection to one reaches its acting primary)."""
        return [shard.name for shard in self.topology.spec.shards]

    def each(self, shards: list[str], work: Callable[[str], T]) -> dict[str, T]:
        """Run ``work`` for every shard in parallel; the first failure is raised."""
        return fanout.each({shard: partial(work, shard) for shard in shards})

    # ------------------------------------------------------------------ state

    def state(self) -> State | None:
        """The current reshard (:func:`shardctl.state.inflight.current` of every primary's
        latest record), or None."""

        def read(shard: str) -> inflight.ReshardRecord | None:
            with self.connect(shard) as conn:
                return inflight.latest(conn)

        found = self.each(self.primaries(), read).values()
        best = inflight.current(r for r in found if r is not None)
        if best is None:
            return None
        return State(best.plan, best.phase, best.flipped, Report.from_json(best.report))

    def _record(
        self,
        plan: Plan,
        phase: Phase,
        flipped: bool,
        report: Report,
        held: dict[str, Links] | None = None,
    ) -> None:
        """Write the reshard's state on every primary: over ``held`` connections (one
        :class:`Links` per shard, reconnecting after a restart) when given, else new ones."""
        payload = (
            plan.id,
            phase.value,
            flipped,
            json.dumps(plan.to_json()),
            json.dumps(report.__dict__),
        )

        def write(shard: str) -> None:
            if held is None:
                with self.connect(shard) as conn:
                    conn.execute(inflight.RECORD_RESHARD, payload)
                return
            links = held.setdefault(shard, Links(self.open))
            links.retrying(
                lambda: links.get(shard).execute(inflight.RECORD_RESHARD, payload),
                f"recording the reshard on {shard}",
            )

        self.each(self.primaries(), write)

    # -------------------------------------------------------------- planning

    def plan(self, leaving: Sequence[str] = ()) -> Plan:
        """What a rebalance would move (or, with ``leaving``, the removal of those shards), with
        exact rows and bytes per move; changes nothing. While a reshard is unfinished, its
        recorded plan: that is what the cluster is doing."""
        current = self.state()
        if current is not None and not finished(current.phase):
            return current.plan
        return self._plan_after(current, leaving)

    def _plan_after(
        self, previous: State | None, leaving: Sequence[str] = (), report: Report | None = None
    ) -> Plan:
        """The next plan after ``previous``. With ``report`` (a run about to start), the
        ring-position index is built first on every shard involved, as capture would, and the
        moves are counted by index range scans of the moving rows only; without it (a plan to
        show, changing nothing), by one full scan of each source unless the index is there."""
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
        shares = old.shares()
        # A source giving away most of what it owns (a leaving shard: all of it) is counted by
        # one full scan: an index range scan per move would visit every page once per range.
        # That count needs no index, so it runs while the indexes are built.
        whole = {
            s
            for s in sources
            if transfer.scan_whole([m for m in moves if m.source == s], shares[s])
        }

        def measure(source: str) -> list[tuple[int, MoveSize]]:
            indexes = [i for i, m in enumerate(moves) if m.source == source]
            subset = [moves[i] for i in indexes]
            totals = [MoveSize(0, 0) for _ in subset]
            with self.connect(source) as conn:
                for table in self.topology.spec.tables:
                    indexed = source not in whole and transfer.has_position_index(conn, table)
                    for j, size in enumerate(transfer.sizes(conn, table, subset, indexed=indexed)):
                        totals[j] = MoveSize(totals[j].rows + size[0], totals[j].bytes + size[1])
            return list(zip(indexes, totals, strict=True))

        # A joining shard (empty, owning nothing) gets its index after the copy: see
        # copying.indexed_before_copy.
        involved = sorted(set(sources) | {m.target for m in moves if m.target in old.nodes})
        indexing = time.monotonic()
        indexed_by: list[float] = []

        def prepare(shard: str) -> list[tuple[int, MoveSize]]:
            # Capture needs the index anyway; built now, it makes the count a range scan of
            # the moving rows instead of a full scan hashing every row. A run killed before
            # its plan is recorded leaves the index: the next reshard uses it, then drops it.
            # Each source counts as soon as its own index is there, not after all of them.
            if report is not None:
                self.ensure_index(shard)
                indexed_by.append(time.monotonic() - indexing)
            return measure(shard) if shard in sources and shard not in whole else []

        tasks: dict[str, Callable[[], list[tuple[int, MoveSize]]]] = {
            shard: partial(prepare, shard) for shard in involved
        }
        tasks.update({f"{shard} (whole)": partial(measure, shard) for shard in sorted(whole)})
        for measured in fanout.each(tasks).values():
            for i, size in measured:
                sizes[i] = size
        if report is not None and moves:
            report.timed("planning/index", max(indexed_by, default=0.0))
        plan_id = previous.plan.id + 1 if previous else 1
        return make_plan(plan_id, record.epoch, old, new, sizes, rows_per_chunk=self.rows_per_chunk)

    # ------------------------------------------------------------------- run

    def start(
        self,
        plan: Plan | None = None,
        *,
        leaving: Sequence[str] = (),
        current: State | None = None,
        read: bool = True,
    ) -> State:
        """Record a new plan: ``plan`` as shown to the user, else a fresh one (removing the
        ``leaving`` shards, if any). Recorded on every primary, the plan is what marks its
        leaving shards as leaving for every CLI run. Refused while another reshard is
        unfinished, or when the cluster changed since ``plan`` was made. With ``read=False``,
        ``current`` is the latest reshard as the caller read it holding :meth:`exclusive`
        (not read from every primary again)."""
        if read:
            current = self.state()
        if current is not None and not finished(current.phase):
            raise ReshardingError(
                f"reshard {current.plan.id} is still {current.phase.value}: "
                "run `shardctl rebalance --resume` or `--abort`"
            )
        report = Report()
        if plan is None:
            planning = time.monotonic()
            plan = self._plan_after(current, leaving, report)
            report.timed("planning", time.monotonic() - planning)
        else:
            epoch = catalog.read(self.topology, self.cluster.credentials()).record().epoch
            expected_id = current.plan.id + 1 if current else 1
            if (plan.id, plan.epoch) != (expected_id, epoch):
                raise ReshardingError(
                    "the cluster changed since this plan was made (another rebalance ran); "
                    "run `shardctl rebalance` again to see the new plan"
                )
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
            Phase.CAPTURING: partial(copying.capture, self),
            Phase.COPYING: partial(copying.copy, self),
            Phase.VERIFYING: partial(cutover.verify, self),
            Phase.CUTTING_OVER: partial(cutover.cut_over, self),
            Phase.CLEANING: self._clean,
        }
        # The record after each phase goes over connections held for the whole run: opening
        # one per primary for each of the six records cost more than the writes.
        held: dict[str, Links] = {}
        try:
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
                worked = time.monotonic()
                report.timed(done_phase.value, worked - started)
                report.total_seconds += worked - started
                self._record(plan, phase, flipped, report, held)
                recorded = time.monotonic()
                report.timed("recording", recorded - worked)
                report.total_seconds += recorded - worked
                started = recorded
                self.after_phase(done_phase)
        finally:
            for links in held.values():
                links.close()
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

        emptied: dict[str, int] = {}

        def empty(target: str) -> None:
            # A joining target may have no index yet (built after the copy): the ranges are
            # found by it, not by a full scan per range.
            self.ensure_index(target)
            with self.connect(target) as conn:
                spans = [m for m in plan.moves if m.target == target]
                for table in self.topology.spec.tables:
                    while n := transfer.delete_ranges(conn, table, spans, batch=self.clean_batch):
                        emptied[target] = emptied.get(target, 0) + n
                        self.progress("abort", f"emptying {target}", emptied[target], plan.rows)
                conn.execute(inflight.FORGET_CHUNKS, (plan.id,))

        self.each(plan.sources(), unfence)
        self.each(plan.targets(), empty)
        self.each(plan.targets(), self._drop_index)
        self._record(plan, Phase.ABORTED, False, state.report)
        return State(plan, Phase.ABORTED, False, state.report)

    # ---------------------------------------------------------------- phases

    def _clean(self, plan: Plan, report: Report) -> bool:
        """Delete moved rows from their old owners: one statement per table, or batches with
        a pause after each when throttled."""
        cleaned: dict[str, int] = {}
        seconds: dict[str, tuple[float, float]] = {}

        def clean(source: str) -> None:
            count = 0
            started = time.monotonic()
            with self.connect(source) as src:
                # A resumed run may find the ranges already moved but not yet marked so.
                fence.set_state(src, plan.id, RangeState.MOVED)
                # A leaving shard is removed whole: deleting its rows first would only cost
                # time, and with --keep-volumes its data stays there to inspect.
                # All of the source's ranges in each statement: one per batch and table
                # rather than one per range (an md5 ring's move is ~150 small ranges).
                moves = (
                    []
                    if source in plan.leaving
                    else [plan.moves[i] for i in plan.moves_from(source)]
                )
                planned = sum(plan.sizes[i].rows for i in plan.moves_from(source))
                # Small batches only when throttled: each batch looks the ranges up again.
                batch = self.clean_batch if self.throttle else UNTHROTTLED_CLEAN_BATCH
                for table in self.topology.spec.tables if moves else ():
                    while n := transfer.delete_ranges(src, table, moves, batch=batch):
                        count += n
                        self.progress(f"clean:{source}", f"clean {source}", count, planned)
                        if self.throttle:
                            time.sleep(self.throttle)
                fence.forget_changes(src, plan.targets())
            deleted = time.monotonic()
            self._drop_index(source)
            cleaned[source] = count
            seconds[source] = (deleted - started, time.monotonic() - deleted)

        self.each(plan.sources(), clean)
        report.rows_cleaned += sum(cleaned.values())
        report.timed("cleaning/deletes", max((s[0] for s in seconds.values()), default=0.0))
        report.timed("cleaning/source indexes", max((s[1] for s in seconds.values()), default=0.0))
        dropping = time.monotonic()
        self.each(plan.targets(), self._drop_index)
        report.timed("cleaning/target indexes", time.monotonic() - dropping)
        return True

    def ensure_index(self, shard: str) -> None:
        """Build the ring-position index of every table on ``shard``, unless it is there."""
        with self.connect(shard) as conn:
            for table in self.topology.spec.tables:
                transfer.ensure_position_index(conn, table)

    def _drop_index(self, shard: str) -> None:
        with self.connect(shard) as conn:
            for table in self.topology.spec.tables:
                transfer.drop_position_index(conn, table)

    def record_removed(self, state: State, name: str) -> State:
        """Record that the leaving shard ``name`` is gone (nodes and topology entry), on every
        primary of the (smaller) topology."""
        report = state.report
        if name not in report.removed:
            report.removed.append(name)
        self._record(state.plan, state.phase, state.flipped, report)
        return State(state.plan, state.phase, state.flipped, report)
