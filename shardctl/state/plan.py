"""What a reshard will do, and the order of its phases. Pure: no I/O.

A :class:`Plan` is computed from the live ring and the ring with the joining shard (or without
the leaving one, :func:`without_node`): its moves (``old.moves_to(new)``) split into chunks
that can be copied and resumed one at a time. The plan and its phase are stored in the catalog
as JSON, so any machine can resume it; a plan that removes a shard names it in
:attr:`Plan.leaving`, which is how every CLI run and Router knows the shard is leaving.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shardctl.ring.hashing import Move, Ring, Span


class Phase(StrEnum):
    """Where a reshard is. Each phase's work is idempotent, so a resume re-runs it."""

    PLANNED = "planned"
    CAPTURING = "capturing"
    COPYING = "copying"
    VERIFYING = "verifying"
    CUTTING_OVER = "cutting-over"
    CLEANING = "cleaning"
    DONE = "done"
    ABORTED = "aborted"


FORWARD = (
    Phase.PLANNED,
    Phase.CAPTURING,
    Phase.COPYING,
    Phase.VERIFYING,
    Phase.CUTTING_OVER,
    Phase.CLEANING,
    Phase.DONE,
)


def next_phase(phase: Phase) -> Phase:
    """The phase after ``phase`` on the way to done."""
    if phase not in FORWARD or phase is Phase.DONE:
        raise ValueError(f"no phase follows {phase.value}")
    return FORWARD[FORWARD.index(phase) + 1]


def finished(phase: Phase) -> bool:
    """Whether nothing is left to do (done or aborted)."""
    return phase in (Phase.DONE, Phase.ABORTED)


@dataclass(frozen=True)
class Chunk(Span):
    """A piece ``[start, end)`` of one move that is copied, and recorded as copied, in one
    transaction."""

    id: str
    move: int
    """The index of its move in the plan."""


def split(move_index: int, move: Move, rows: int, rows_per_chunk: int) -> list[Chunk]:
    """Cut a move into equal slices of the circle, about ``rows_per_chunk`` rows each."""
    pieces = max(1, math.ceil(rows / rows_per_chunk)) if rows_per_chunk > 0 else 1
    width = move.end - move.start
    bounds = [move.start + width * i // pieces for i in range(pieces)] + [move.end]
    return [
        Chunk(bounds[i], bounds[i + 1], f"{move_index}.{i}", move_index)
        for i in range(pieces)
        if bounds[i] < bounds[i + 1]
    ]


@dataclass(frozen=True)
class MoveSize:
    """Exact size of one move on its source, counted on the server."""

    rows: int
    bytes: int


@dataclass(frozen=True)
class Plan:
    """Everything a reshard needs to run, resume or abort, from any machine."""

    id: int
    epoch: int
    """The live ring's epoch when planned; cut-over writes ``epoch + 1``."""
    old: Ring
    new: Ring
    moves: tuple[Move, ...]
    sizes: tuple[MoveSize, ...]
    chunks: tuple[Chunk, ...] = field(default=())
    leaving: tuple[str, ...] = field(default=())
    """Shards this reshard removes (``remove-shard``): in ``old``, not in ``new``."""

    @property
    def rows(self) -> int:
        """Rows that change owner."""
        return sum(s.rows for s in self.sizes)

    @property
    def bytes(self) -> int:
        """Bytes that change owner (row data as stored)."""
        return sum(s.bytes for s in self.sizes)

    def sources(self) -> list[str]:
        """Shards giving away ranges, in ring order."""
        return [n for n in self.old.nodes if any(m.source == n for m in self.moves)]

    def targets(self) -> list[str]:
        """Shards receiving ranges."""
        return list(dict.fromkeys(m.target for m in self.moves))

    def pairs(self) -> list[tuple[str, str]]:
        """Every (source, target) with a move, sources in ring order, targets sorted."""
        return [
            (s, t)
            for s in self.sources()
            for t in sorted({self.moves[i].target for i in self.moves_from(s)})
        ]

    def moves_from(self, source: str) -> list[int]:
        """Indexes of the moves whose source is ``source``."""
        return [i for i, m in enumerate(self.moves) if m.source == source]

    def chunk_rows(self, chunk: Chunk) -> int:
        """Rows expected in ``chunk``: its move's rows shared evenly by the move's chunks."""
        pieces = sum(1 for c in self.chunks if c.move == chunk.move)
        return self.sizes[chunk.move].rows // max(pieces, 1)

    def batches(self, source: str, target: str, rows: int) -> list[tuple[Chunk, ...]]:
        """The chunks ``source`` gives ``target``, grouped in circle order into batches of
        about ``rows`` rows at most (a chunk larger than that alone): each batch is copied as
        one stream in one transaction, which records every chunk in it as copied.

        An md5 ring's move is ~150 small ranges, and a chunk each cost more in round trips and
        index probes than its rows (docs/benchmarks.md). The grouping is not recorded: a batch
        commits whole or not at all, so a resumed copy may group what is left differently.
        """
        mine = sorted(
            (c for c in self.chunks if (self.moves[c.move].source, self.moves[c.move].target)
             == (source, target)),
            key=lambda c: c.start,
        )  # fmt: skip
        groups: list[tuple[Chunk, ...]] = []
        current: list[Chunk] = []
        total = 0
        for chunk in mine:
            size = self.chunk_rows(chunk)
            if current and total + size > rows:
                groups.append(tuple(current))
                current, total = [], 0
            current.append(chunk)
            total += size
        if current:
            groups.append(tuple(current))
        return groups

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON for the catalog."""
        return {
            "id": self.id,
            "epoch": self.epoch,
            "old": dict(self.old.to_dict()),
            "new": dict(self.new.to_dict()),
            "moves": [[str(m.start), str(m.end), m.source, m.target] for m in self.moves],
            "sizes": [[s.rows, s.bytes] for s in self.sizes],
            "chunks": [[c.id, c.move, str(c.start), str(c.end)] for c in self.chunks],
            "leaving": list(self.leaving),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        """Rebuild a plan stored by :meth:`to_json`."""
        return cls(
            id=int(data["id"]),
            epoch=int(data["epoch"]),
            old=Ring.from_dict(data["old"]),
            new=Ring.from_dict(data["new"]),
            moves=tuple(Move(int(s), int(e), src, dst) for s, e, src, dst in data["moves"]),
            sizes=tuple(MoveSize(int(r), int(b)) for r, b in data["sizes"]),
            chunks=tuple(Chunk(int(s), int(e), i, int(m)) for i, m, s, e in data["chunks"]),
            # Plans recorded before remove-shard existed have no "leaving".
            leaving=tuple(str(n) for n in data.get("leaving", ())),
        )


def make_plan(
    plan_id: int,
    epoch: int,
    old: Ring,
    new: Ring,
    sizes: list[MoveSize],
    *,
    rows_per_chunk: int = 50_000,
) -> Plan:
    """A plan for moving from ``old`` to ``new``, given the exact size of each move; the
    shards of ``old`` missing from ``new`` are the leaving ones."""
    moves = tuple(old.moves_to(new))
    if len(sizes) != len(moves):
        raise ValueError(f"{len(sizes)} sizes for {len(moves)} moves")
    chunks = tuple(
        chunk
        for index, (move, size) in enumerate(zip(moves, sizes, strict=True))
        for chunk in split(index, move, size.rows, rows_per_chunk)
    )
    leaving = tuple(n for n in old.nodes if n not in new.nodes)
    return Plan(plan_id, epoch, old, new, moves, tuple(sizes), chunks, leaving)


def merged(spans: Sequence[Span]) -> list[Span]:
    """``spans`` in circle order, those that touch or overlap joined into one."""
    joined: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if joined and span.start <= joined[-1].end:
            if span.end > joined[-1].end:
                joined[-1] = Span(joined[-1].start, span.end)
        else:
            joined.append(Span(span.start, span.end))
    return joined


def without_node(ring: Ring, name: str) -> Ring:
    """The ring without shard ``name``: the same algorithm, virtual nodes and order of the others.

    For ``md5`` only the leaving shard's ranges change owner (each to the next virtual node
    clockwise), and adding the shard back gives the former ring bit for bit. For ``balanced``
    the ring is rebuilt from the remaining order, so unless ``name`` was added last some
    ranges also move between remaining shards (the plan lists every one). ValueError for a
    shard not in the ring or the last one.
    """
    if name not in ring.nodes:
        raise ValueError(f"shard {name!r} is not in the ring ({', '.join(ring.nodes)})")
    rest = [n for n in ring.nodes if n != name]
    if not rest:
        raise ValueError(f"shard {name!r} is the last shard of the ring: a cluster needs one")
    return Ring(rest, ring.vnodes, ring.algorithm)


def uncovered(start: int, end: int, taken: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces of ``[start, end)`` outside every ``[lo, hi)`` of ``taken``, in order.

    A shard that receives ranges it once gave away still holds them as ``moved`` (refused) in
    its fence: the cut-over lifts exactly the received part and keeps refusing the rest.
    """
    pieces: list[tuple[int, int]] = []
    cursor = start
    for lo, hi in sorted(taken):
        if hi <= cursor or lo >= end:
            continue
        if lo > cursor:
            pieces.append((cursor, lo))
        cursor = max(cursor, hi)
        if cursor >= end:
            break
    if cursor < end:
        pieces.append((cursor, end))
    return pieces


ASSUMED_ROWS_PER_SECOND = 50_000.0
"""For the plan's estimate only. On the 2-core development machine the copy ran at 120k-250k
rows/s when quiet and 13k-21k rows/s under load with replicas (docs/benchmarks.md)."""


def estimate_seconds(plan: Plan, rows_per_second: float) -> float:
    """Expected copy time at a measured or assumed rate."""
    return plan.rows / rows_per_second if rows_per_second > 0 else math.inf
