"""The hash ring: which shard owns a key.

**The circle.** Every key has a *position* on a circle of ``2**128`` points: the md5 digest of
``str(key)`` (UTF-8) read as a big-endian integer, i.e.
``int(hashlib.md5(str(key).encode()).hexdigest(), 16)``. md5 hex digests are fixed-width
(32 characters) and lowercase, so comparing two digests as *strings* gives the same answer as
comparing them as integers. That is what lets PostgreSQL select part of the circle on the server::

    md5(key::text) >= 'lo' AND md5(key::text) < 'hi'

PostgreSQL's ``uuid::text``, ``int::text`` and ``text`` spell values exactly as Python's
``str()`` does for :class:`uuid.UUID`, :class:`int` and :class:`str`, so for those key types the
server and :func:`position` agree bit for bit. (Other types may not: ``str(True)`` is ``'True'``
but ``true::text`` is ``'true'``.)

**Ranges.** A ring is a sorted list of boundary positions with an owner for each piece between
them. Every range is half-open, ``[start, end)``, left inclusive, with
``0 <= start < end <= 2**128``: one type, :class:`Span`, whatever the range is for (a
:class:`Range` has an owner, a :class:`Move` a source and a target; a reshard's chunk and a
range a primary gives away are spans too). The top end ``2**128`` has no 32-digit hex spelling,
so :attr:`Span.end_hex` is ``None`` for it, meaning "no upper bound"; :func:`hex_bounds` reads
the hex spelling back.

**Two algorithms, one model.**

* ``md5`` (classic): virtual node ``i`` of node ``n`` sits at ``position(f"{n}:{i}")`` for
  ``i`` in ``range(vnodes)``; a key belongs to the first virtual node clockwise
  (``bisect_right``, wrapping to the first). The virtual node at ``positions[k]`` owns
  ``[positions[k-1], positions[k])``, and the first one also owns the wrap-around
  ``[positions[-1], 2**128)`` plus ``[0, positions[0])``. If two virtual nodes share a position, the
  later node in order wins. This is bit-for-bit the classic dict-and-bisect ring.
* ``balanced`` (default for new clusters): the circle is cut into :data:`SLOTS` equal slots
  (``slot = position >> SLOT_SHIFT``), each owned by one node. ``Ring([a])`` gives every slot to
  ``a``; adding a node to ``N`` nodes sets every quota to ``SLOTS // (N+1)`` or one more (the
  extra slots going to the earliest nodes in order), and the new node takes exactly each old
  node's excess over its new quota, from that node's highest-numbered slots. So a ring is
  deterministic from its ordered node list, ``Ring(nodes + [x]) == Ring(nodes).with_node(x)``,
  no slot ever moves between old nodes, and slot counts differ by at most one. ``vnodes`` does
  not apply to it (it is kept only so the configuration round-trips).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

__all__ = [
    "BITS",
    "SLOTS",
    "SLOT_SHIFT",
    "SPACE",
    "Algorithm",
    "Move",
    "Range",
    "Ring",
    "RingDict",
    "Span",
    "hex_bounds",
    "position",
    "position_hex",
]

BITS = 128
"""Bits in a position (an md5 digest)."""
SPACE = 1 << BITS
"""Points on the circle: positions are ``0 <= pos < SPACE``."""
SLOT_BITS = 14
SLOTS = 1 << SLOT_BITS
"""Equal slots of the balanced ring (16384)."""
SLOT_SHIFT = BITS - SLOT_BITS
"""``pos >> SLOT_SHIFT`` is the balanced slot of a position (114)."""
DEFAULT_VNODES = 150

_md5 = hashlib.md5
_from_bytes = int.from_bytes


class Algorithm(StrEnum):
    """How keys are placed on the ring."""

    MD5 = "md5"
    BALANCED = "balanced"


def position(key: object) -> int:
    """The position of ``key`` on the circle: md5 of ``str(key)`` as a 128-bit integer."""
    return _from_bytes(_md5(str(key).encode(), usedforsecurity=False).digest())


def position_hex(key: object) -> str:
    """The position of ``key`` as 32 lowercase hex digits, as PostgreSQL's ``md5()`` spells it."""
    return _md5(str(key).encode(), usedforsecurity=False).hexdigest()


def _hex(pos: int) -> str:
    """A position as 32 zero-padded lowercase hex digits."""
    return f"{pos:032x}"


def _check_position(pos: int) -> None:
    """Raise ``ValueError`` unless ``pos`` is a position on the circle."""
    if not isinstance(pos, int) or isinstance(pos, bool) or not 0 <= pos < SPACE:
        raise ValueError(f"position must be an int in [0, 2**128), got {pos!r}")


def hex_bounds(start_hex: str, end_hex: str | None) -> tuple[int, int]:
    """``(start, end)`` of a span spelt as 32 hex digits each, no end meaning the top."""
    return int(start_hex, 16), SPACE if end_hex is None else int(end_hex, 16)


@dataclass(frozen=True)
class Span:
    """A half-open piece ``[start, end)`` of the circle: the one range type."""

    start: int
    end: int

    def __post_init__(self) -> None:
        """Reject empty, reversed or out-of-circle spans."""
        if not (isinstance(self.start, int) and isinstance(self.end, int)):
            raise ValueError(f"start and end must be ints, got {self.start!r}, {self.end!r}")
        if not 0 <= self.start < self.end <= SPACE:
            raise ValueError(
                f"need 0 <= start < end <= 2**128, got start={self.start:#x}, end={self.end:#x}"
            )

    @property
    def start_hex(self) -> str:
        """The inclusive lower bound as 32 hex digits."""
        return _hex(self.start)

    @property
    def end_hex(self) -> str | None:
        """The exclusive upper bound as 32 hex digits, or ``None`` for the top of the circle."""
        return None if self.end == SPACE else _hex(self.end)

    def sql_bounds(self) -> tuple[str, str | None]:
        """``(lo, hi)`` for ``md5(key::text) >= lo AND md5(key::text) < hi``; None = no bound."""
        return self.start_hex, self.end_hex

    def contains(self, pos: int) -> bool:
        """Whether ``start <= pos < end``."""
        return self.start <= pos < self.end

    @property
    def size(self) -> int:
        """How many positions the span covers."""
        return self.end - self.start

    @property
    def share(self) -> float:
        """The fraction of the circle the span covers."""
        return (self.end - self.start) / SPACE


@dataclass(frozen=True)
class Range(Span):
    """A half-open piece ``[start, end)`` of the circle and the node that owns it."""

    owner: str


@dataclass(frozen=True)
class Move(Span):
    """A piece ``[start, end)`` owned by ``source`` in one ring and by ``target`` in another."""

    source: str
    target: str


class RingDict(TypedDict):
    """The serialised form of a :class:`Ring`."""

    algorithm: str
    nodes: list[str]
    vnodes: int


def _parse_algorithm(algorithm: Algorithm | str) -> Algorithm:
    """``algorithm`` as an :class:`Algorithm`, or a ``ValueError`` naming the valid ones."""
    try:
        return Algorithm(algorithm)
    except ValueError:
        valid = ", ".join(repr(a.value) for a in Algorithm)
        raise ValueError(f"unknown ring algorithm {algorithm!r}: expected one of {valid}") from None


def _check_nodes(nodes: Sequence[str]) -> tuple[str, ...]:
    """The node names as a tuple, or a ``ValueError`` if empty, blank, non-string or repeated."""
    if isinstance(nodes, str):
        raise ValueError(f"nodes must be a sequence of names, not the string {nodes!r}")
    names = tuple(nodes)
    if not names:
        raise ValueError("a ring needs at least one node")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"node names must be non-empty strings, got {name!r}")
    dups = sorted(n for n, count in Counter(names).items() if count > 1)
    if dups:
        raise ValueError(f"duplicate node names: {', '.join(dups)}")
    return names


def _vnode_position(node: str, index: int) -> int:
    """The position of virtual node ``index`` of ``node`` on the md5 ring."""
    return position(f"{node}:{index}")


def _balanced_step(slots: list[list[int]]) -> list[list[int]]:
    """The assignment (each node's sorted slot list) with one node added; the input is untouched.

    With ``N`` old nodes the quotas become ``SLOTS // (N+1)`` plus one for the first
    ``SLOTS % (N+1)`` nodes; each old node hands its excess, highest slots first, to the new node.
    """
    total = len(slots) + 1
    base, extra = divmod(SLOTS, total)
    kept: list[list[int]] = []
    taken: list[int] = []
    for i, owned in enumerate(slots):
        quota = base + (1 if i < extra else 0)
        # Counts before the step are SLOTS//N (+1 for the first SLOTS%N nodes), never below quota.
        kept.append(owned[:quota])
        taken.extend(owned[quota:])
    taken.sort()
    kept.append(taken)
    return kept


def _merge(starts: list[int], owners: list[str]) -> tuple[list[int], list[str]]:
    """Drop empty pieces and join neighbours with the same owner."""
    out_starts: list[int] = []
    out_owners: list[str] = []
    for i, (start, owner) in enumerate(zip(starts, owners, strict=True)):
        end = starts[i + 1] if i + 1 < len(starts) else SPACE
        if start >= end:
            continue
        if out_owners and out_owners[-1] == owner:
            continue
        out_starts.append(start)
        out_owners.append(owner)
    return out_starts, out_owners


class Ring:
    """An immutable hash ring over an ordered list of node names."""

    __slots__ = (
        "_algorithm",
        "_lookup",
        "_lookup_owners",
        "_nodes",
        "_seg_owners",
        "_seg_starts",
        "_slots",
        "_vnodes",
    )

    _algorithm: Algorithm
    _nodes: tuple[str, ...]
    _vnodes: int
    _lookup: list[int]
    _lookup_owners: list[str]
    _slots: list[list[int]]
    _seg_starts: list[int]
    _seg_owners: list[str]

    def __init__(
        self,
        nodes: Sequence[str],
        vnodes: int = DEFAULT_VNODES,
        algorithm: Algorithm | str = Algorithm.BALANCED,
    ) -> None:
        """Build the ring; ValueError on no nodes, repeated names, vnodes < 1 or bad algorithm."""
        names = _check_nodes(nodes)
        if not isinstance(vnodes, int) or isinstance(vnodes, bool) or vnodes < 1:
            raise ValueError(f"vnodes must be an int >= 1, got {vnodes!r}")
        algo = _parse_algorithm(algorithm)
        if algo is Algorithm.BALANCED:
            if len(names) > SLOTS:
                raise ValueError(f"a balanced ring holds at most {SLOTS} nodes, got {len(names)}")
            slots: list[list[int]] = [list(range(SLOTS))]
            for _ in names[1:]:
                slots = _balanced_step(slots)
            self._init(names, vnodes, algo, slots)
        else:
            self._init(names, vnodes, algo, [])

    @classmethod
    def _from_slots(cls, nodes: tuple[str, ...], vnodes: int, slots: list[list[int]]) -> Ring:
        """A balanced ring from an already computed slot assignment."""
        ring = cls.__new__(cls)
        ring._init(nodes, vnodes, Algorithm.BALANCED, slots)
        return ring

    def _init(
        self, nodes: tuple[str, ...], vnodes: int, algorithm: Algorithm, slots: list[list[int]]
    ) -> None:
        """Set the fields and the lookup tables."""
        self._nodes = nodes
        self._vnodes = vnodes
        self._algorithm = algorithm
        self._slots = slots
        if algorithm is Algorithm.BALANCED:
            owner_of = [""] * SLOTS
            for name, owned in zip(nodes, slots, strict=True):
                for slot in owned:
                    owner_of[slot] = name
            self._lookup = []
            self._lookup_owners = owner_of
            starts = [slot << SLOT_SHIFT for slot in range(SLOTS)]
            self._seg_starts, self._seg_owners = _merge(starts, owner_of)
        else:
            ring: dict[int, str] = {}
            for name in nodes:
                for i in range(vnodes):
                    ring[_vnode_position(name, i)] = name  # later nodes win a collision
            positions = sorted(ring)
            owners = [ring[p] for p in positions]
            self._lookup = positions
            # One extra owner so bisect_right == len wraps to the first virtual node for free.
            self._lookup_owners = [*owners, owners[0]]
            # Piece [0, p0) belongs to vnode 0, [p(k-1), p(k)) to vnode k, [p(-1), top) to vnode 0.
            self._seg_starts, self._seg_owners = _merge([0, *positions], self._lookup_owners)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node names, in order."""
        return self._nodes

    @property
    def vnodes(self) -> int:
        """Virtual nodes per node (md5 only; kept but unused by balanced)."""
        return self._vnodes

    @property
    def algorithm(self) -> Algorithm:
        """How keys are placed."""
        return self._algorithm

    def node_for(self, key: object) -> str:
        """The node that owns ``key`` (hashed as ``md5(str(key))``)."""
        pos = _from_bytes(_md5(str(key).encode(), usedforsecurity=False).digest())
        if self._lookup:
            return self._lookup_owners[bisect_right(self._lookup, pos)]
        return self._lookup_owners[pos >> SLOT_SHIFT]

    def node_for_position(self, pos: int) -> str:
        """The node that owns position ``pos`` (``0 <= pos < 2**128``)."""
        _check_position(pos)
        if self._lookup:
            return self._lookup_owners[bisect_right(self._lookup, pos)]
        return self._lookup_owners[pos >> SLOT_SHIFT]

    def with_node(self, name: str) -> Ring:
        """A new ring with ``name`` added last; for balanced, only the new node gains slots."""
        nodes = _check_nodes([*self._nodes, name])
        if self._algorithm is Algorithm.BALANCED:
            if len(nodes) > SLOTS:
                raise ValueError(f"a balanced ring holds at most {SLOTS} nodes, got {len(nodes)}")
            return Ring._from_slots(nodes, self._vnodes, _balanced_step(self._slots))
        return Ring(nodes, self._vnodes, self._algorithm)

    def ranges(self) -> list[Range]:
        """The whole circle as sorted ranges, neighbours of one owner merged (not across 0)."""
        starts, owners = self._seg_starts, self._seg_owners
        ends = [*starts[1:], SPACE]
        return [Range(s, e, o) for s, e, o in zip(starts, ends, owners, strict=True)]

    def ranges_of(self, node: str) -> list[Range]:
        """The sorted ranges ``node`` owns; ``ValueError`` if it is not on the ring."""
        if node not in self._nodes:
            raise ValueError(f"unknown node {node!r}: the ring has {', '.join(self._nodes)}")
        return [r for r in self.ranges() if r.owner == node]

    def shares(self) -> dict[str, float]:
        """The fraction of the circle each node owns, in node order, summing to 1."""
        sizes = dict.fromkeys(self._nodes, 0)
        for r in self.ranges():
            sizes[r.owner] += r.end - r.start
        return {name: size / SPACE for name, size in sizes.items()}

    def moves_to(self, other: Ring) -> list[Move]:
        """Every maximal range whose owner differs between this ring and ``other``, sorted."""
        bounds = sorted(set(self._seg_starts) | set(other._seg_starts))
        moves: list[Move] = []
        run: tuple[int, str, str] | None = None  # (start, source, target) of the open move
        a_starts, a_owners = self._seg_starts, self._seg_owners
        b_starts, b_owners = other._seg_starts, other._seg_owners
        ia = ib = 0
        for lo in bounds:
            while ia + 1 < len(a_starts) and a_starts[ia + 1] <= lo:
                ia += 1
            while ib + 1 < len(b_starts) and b_starts[ib + 1] <= lo:
                ib += 1
            src, dst = a_owners[ia], b_owners[ib]
            if run is not None and (src, dst) != run[1:]:
                moves.append(Move(run[0], lo, run[1], run[2]))
                run = None
            if run is None and src != dst:
                run = (lo, src, dst)
        if run is not None:
            moves.append(Move(run[0], SPACE, run[1], run[2]))
        return moves

    def to_dict(self) -> RingDict:
        """The ring as plain data: algorithm, nodes and vnodes fully determine it."""
        return {
            "algorithm": self._algorithm.value,
            "nodes": list(self._nodes),
            "vnodes": self._vnodes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ring:
        """A ring from :meth:`to_dict` output; ``ValueError`` if a field is missing or wrong."""
        missing = [k for k in ("algorithm", "nodes") if k not in data]
        if missing:
            raise ValueError(f"ring data is missing {', '.join(missing)}")
        unknown = sorted(set(data) - {"algorithm", "nodes", "vnodes"})
        if unknown:
            raise ValueError(f"ring data has unknown fields: {', '.join(unknown)}")
        nodes = data["nodes"]
        if not isinstance(nodes, list | tuple):
            raise ValueError(f"ring data 'nodes' must be a list, got {nodes!r}")
        return cls(nodes, data.get("vnodes", DEFAULT_VNODES), data["algorithm"])

    def _key(self) -> tuple[Algorithm, tuple[str, ...], int]:
        """What equality and hashing compare."""
        return self._algorithm, self._nodes, self._vnodes

    def __eq__(self, other: object) -> bool:
        """Same algorithm, same ordered nodes, same vnodes."""
        if not isinstance(other, Ring):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        """Hash of (algorithm, nodes, vnodes)."""
        return hash(self._key())

    def __repr__(self) -> str:
        """``Ring(nodes, vnodes=..., algorithm=...)``."""
        algo = self._algorithm.value
        return f"Ring({list(self._nodes)!r}, vnodes={self._vnodes}, algorithm={algo!r})"
