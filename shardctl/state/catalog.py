"""The catalog: the live ring, stored in the cluster itself, on every primary.

Once a cluster exists its ring is read from here, never from ``topology.yaml``: every router and
every CLI run sees the same state, from any machine. Objects, in schema ``shardctl`` of the
topology's database on every shard primary::

    shardctl.ring                 one row per ring epoch (history); the current ring is the
                                  row with the highest epoch
    shardctl.ring_position(text)  md5($1): a key's position on the circle (see shardctl.ring)

**Epochs.** ``up`` writes epoch 1 from the topology when no primary has a catalog, and copies
the current record to a primary that has none (a new or re-created shard). It never bumps an
epoch and never overwrites one: epochs change only through resharding, whose cut-over writes
the new record with :func:`write` on every primary, over connections it opened before fencing
(so the write pause holds no connection set-up). Role changes write epochs too: :func:`publish`
does the same write opening its own connections, for a switchover or failover
(:mod:`shardctl.ops.rolechange`, the new acting roles) and for ``up`` (the epoch that clears
the former primaries it re-joined); the tests use it to play a cut-over's flip. Two writers of
one epoch never both "succeed": the same epoch with different content is :class:`EpochTaken`,
and role changes and re-joins write through :func:`settle`, which builds their change again on
the other writer's record under a fresh epoch.

**Reading.** :func:`read` asks every primary; the highest epoch wins. Primaries that disagree
(missing catalog, older epoch — an interrupted cut-over — or, worst, different rings under one
epoch) are reported in :attr:`CatalogView.problems`. A topology that disagrees with the catalog
(algorithm, virtual nodes, shard list) is reported by :func:`drift`; the catalog is used.

**Shared schema.** The resharding protocol's tables and functions (``shardctl.reshard``,
``shardctl.moving``, ...) live in the same schema and are created by :mod:`shardctl.state.ddl`;
:data:`DDL` here creates only what this module owns. The schema is shared with other features
(the replication canary): it is created if missing and never dropped here.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import CatalogError, DatabaseUnavailable
from shardctl.state.locks import CATALOG_INSTALL_LOCK, XACT_LOCK
from shardctl.util.waiting import retrying

if TYPE_CHECKING:  # the ring is built when asked for: reading roles needs none (status)
    from shardctl.ring.hashing import Ring

DOING = "ring catalog"
"""What a primary that fails a catalog read or write was doing, for the error message."""

DDL: tuple[str, ...] = (
    "CREATE SCHEMA IF NOT EXISTS shardctl",
    """CREATE TABLE IF NOT EXISTS shardctl.ring (
    epoch      bigint PRIMARY KEY CHECK (epoch > 0),
    algorithm  text NOT NULL,
    vnodes     integer NOT NULL CHECK (vnodes > 0),
    nodes      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT 'up'
)""",
    # The acting roles (since switchover/failover): shard -> node acting as its primary, and
    # the fenced former primaries that `up` must re-clone before they serve again.
    "ALTER TABLE shardctl.ring ADD COLUMN IF NOT EXISTS primaries jsonb NOT NULL DEFAULT '{}'",
    "ALTER TABLE shardctl.ring ADD COLUMN IF NOT EXISTS rejoin jsonb NOT NULL DEFAULT '[]'",
    "COMMENT ON TABLE shardctl.ring IS "
    "'shardctl ring catalog: one row per epoch, the highest is current; do not edit by hand'",
    """CREATE OR REPLACE FUNCTION shardctl.ring_position(key text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN md5(key)""",
    "COMMENT ON FUNCTION shardctl.ring_position(text) IS "
    "'position of a key on the shardctl ring: md5(key::text), compare with COLLATE \"C\"'",
)

_SELECT = (
    "SELECT epoch, algorithm, vnodes, nodes, created_at, created_by, primaries, rejoin "
    "FROM shardctl.ring "
)
_SELECT_CURRENT = _SELECT + "ORDER BY epoch DESC LIMIT 1"
_SELECT_EPOCH = _SELECT + "WHERE epoch = %s"


@dataclass(frozen=True)
class RingRecord:
    """One epoch of the ring as stored in ``shardctl.ring``."""

    epoch: int
    algorithm: str
    vnodes: int
    nodes: tuple[str, ...]
    created_at: datetime | None = None
    created_by: str = "up"
    primaries: tuple[tuple[str, str], ...] = ()
    """(shard, node) where a switchover or failover made another node than the declared one
    the shard's primary."""
    rejoin: tuple[str, ...] = ()
    """Former primaries fenced by a failover: ``up`` re-clones them from the new primary."""

    @classmethod
    def from_ring(
        cls,
        ring: Ring,
        epoch: int,
        *,
        created_by: str = "up",
        roles_from: RingRecord | None = None,
    ) -> RingRecord:
        """The record of ``ring`` at ``epoch``, keeping the acting roles of ``roles_from``."""
        data = ring.to_dict()
        return cls(
            epoch,
            data["algorithm"],
            data["vnodes"],
            tuple(data["nodes"]),
            created_by=created_by,
            primaries=roles_from.primaries if roles_from is not None else (),
            rejoin=roles_from.rejoin if roles_from is not None else (),
        )

    def ring(self) -> Ring:
        """The :class:`~shardctl.ring.hashing.Ring` this record describes."""
        from shardctl.ring.hashing import Ring

        try:
            return Ring(self.nodes, self.vnodes, self.algorithm)
        except ValueError as exc:
            raise CatalogError(
                f"the catalog's ring (epoch {self.epoch}) is invalid: {exc}"
            ) from None

    def same_ring(self, other: RingRecord) -> bool:
        """Whether both records describe the same ring (epochs and timestamps aside)."""
        return (self.algorithm, self.vnodes, self.nodes) == (
            other.algorithm,
            other.vnodes,
            other.nodes,
        )

    def same_content(self, other: RingRecord) -> bool:
        """Whether both records say the same thing: the ring and the acting roles (the epoch,
        the time and who wrote it aside). What makes a second write of an epoch idempotent."""
        return (
            self.same_ring(other)
            and dict(self.primaries) == dict(other.primaries)
            and sorted(self.rejoin) == sorted(other.rejoin)
        )


class EpochTaken(CatalogError):
    """Another writer stored different content under the epoch being written (two writers
    raced: a failover and a re-join, two monitors, a monitor and ``shardctl failover``).

    The caller reads the catalog again and writes its change on top of :attr:`existing`
    under a fresh epoch (:func:`settle`)."""

    def __init__(self, message: str, existing: RingRecord) -> None:
        super().__init__(message)
        self.existing = existing


def initial_record(topology: Topology) -> RingRecord:
    """Epoch 1 as the topology declares it: its shards in order, its algorithm and vnodes."""
    from shardctl.ring.hashing import Ring

    ring = Ring(
        [s.name for s in topology.spec.shards],
        topology.spec.ring.vnodes,
        topology.spec.ring.algorithm.value,
    )
    return RingRecord.from_ring(ring, 1)


# ------------------------------------------------------------------ one connection


def install(conn: psycopg.Connection[Any]) -> None:
    """Create the schema, the ring table and ``ring_position`` if missing (idempotent)."""

    def create() -> None:
        with pg.bookkeeping(conn):
            conn.execute(XACT_LOCK, (CATALOG_INSTALL_LOCK,))
            for statement in DDL:
                conn.execute(statement)

    # Another feature creating the shared schema at this very moment: just try again.
    retrying(
        create,
        retry_on=(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject),
        attempts=3,
    )


def read_current(conn: psycopg.Connection[Any]) -> RingRecord | None:
    """The highest-epoch record on this primary, or None when it has no catalog."""
    row = conn.execute("SELECT pg_catalog.to_regclass('shardctl.ring') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute(_SELECT_CURRENT).fetchone()
    return None if found is None else _record(found)


def read_epoch(conn: psycopg.Connection[Any], epoch: int) -> RingRecord | None:
    """The record of one epoch on this primary, if it has it."""
    found = conn.execute(_SELECT_EPOCH, (epoch,)).fetchone()
    return None if found is None else _record(found)


def write(conn: psycopg.Connection[Any], record: RingRecord) -> bool:
    """Store ``record`` unless its epoch is already there; True when written now.

    Idempotent, so an interrupted operation can re-run it: the same ring and acting roles
    already stored under the epoch are fine. *Different* content under the same epoch (another
    ring, other primaries or another re-join list) is :class:`EpochTaken`: two writers raced,
    and keeping either silently would lose the other's change.
    """
    with pg.bookkeeping(conn):  # never waits for a synchronous standby (docs/failover.md)
        cur = conn.execute(
            "INSERT INTO shardctl.ring "
            "(epoch, algorithm, vnodes, nodes, created_by, primaries, rejoin) "
            "VALUES (%s, %s, %s, %s::jsonb, %s, %s::jsonb, %s::jsonb) "
            "ON CONFLICT (epoch) DO NOTHING",
            (
                record.epoch,
                record.algorithm,
                record.vnodes,
                json.dumps(list(record.nodes)),
                record.created_by,
                json.dumps(dict(record.primaries)),
                json.dumps(list(record.rejoin)),
            ),
        )
        if cur.rowcount == 1:
            return True
        existing = read_epoch(conn, record.epoch)
    if existing is None:
        raise CatalogError(f"epoch {record.epoch} vanished while being written; try again")
    refuse_other(existing, record)
    return False


def refuse_other(existing: RingRecord, record: RingRecord) -> None:
    """:class:`EpochTaken` unless ``existing`` (stored under ``record``'s epoch) says the same
    as ``record``: the rule that makes :func:`write` idempotent but never lossy."""
    if not existing.same_ring(record):
        raise EpochTaken(
            f"epoch {record.epoch} already holds a different ring ({existing.nodes}); "
            "refusing to overwrite it",
            existing,
        )
    if not existing.same_content(record):
        raise EpochTaken(
            f"epoch {record.epoch} already holds other acting roles (primaries "
            f"{dict(existing.primaries)}, rejoin {list(existing.rejoin)}; written by "
            f"{existing.created_by!r}): another command or monitor wrote it at the same time",
            existing,
        )


def _record(row: Sequence[Any]) -> RingRecord:
    epoch, algorithm, vnodes, nodes, created_at, created_by, primaries, rejoin = row
    return RingRecord(
        int(epoch), str(algorithm), int(vnodes), tuple(str(n) for n in nodes), created_at,
        str(created_by), tuple(sorted((str(k), str(v)) for k, v in primaries.items())),
        tuple(str(n) for n in rejoin),
    )  # fmt: skip


# ------------------------------------------------------------------ the whole cluster


@dataclass(frozen=True)
class CatalogView:
    """The catalog as every primary holds it, and the record that wins (highest epoch)."""

    current: RingRecord | None
    by_primary: dict[str, RingRecord | None]
    """Primary node name -> its current record (None: no catalog there)."""
    problems: tuple[str, ...] = ()
    """Disagreements among primaries, one line each."""
    unreachable: tuple[str, ...] = ()
    """Primaries that did not answer (only when read with ``require_all=False``)."""
    missed_problem: str = ""
    """The line of :attr:`problems` that names :attr:`missed` ("" when none)."""

    @property
    def missed(self) -> tuple[str, ...]:
        """Nodes behind the current epoch with the same ring: they only missed a role change's
        epoch, and a copy of the current record brings them up to date (``up``, the monitor)."""
        top = self.current
        if top is None:
            return ()
        return tuple(
            name
            for name, held in self.by_primary.items()
            if held is not None and held.epoch < top.epoch and held.same_ring(top)
        )

    def record(self) -> RingRecord:
        """The winning record; CatalogError when no primary has a catalog."""
        if self.current is None:
            raise CatalogError(
                "no ring catalog on any primary (a cluster made before the catalog existed?): "
                "run `shardctl up` to write it from the topology"
            )
        return self.current

    def ring(self) -> Ring:
        """The current ring."""
        return self.record().ring()

    @property
    def agrees(self) -> bool:
        """True when every primary holds the winning record."""
        return not self.problems


def combine(
    by_primary: dict[str, RingRecord | None], unreachable: Sequence[str] = ()
) -> CatalogView:
    """Pick the highest epoch among the primaries' records and describe every disagreement."""
    present = {name: r for name, r in by_primary.items() if r is not None}
    if not present:
        return CatalogView(None, dict(by_primary), (), tuple(unreachable))
    top = max(r.epoch for r in present.values())
    winners = [(name, r) for name, r in present.items() if r.epoch == top]
    current = winners[0][1]
    problems: list[str] = []
    for name, r in winners[1:]:
        if not r.same_ring(current):
            raise CatalogError(
                f"epoch {top} differs between {winners[0][0]} {list(current.nodes)} and "
                f"{name} {list(r.nodes)}: the catalog is corrupt; repair it by hand"
            )
    missing = sorted(name for name, r in by_primary.items() if r is None)
    if missing:
        problems.append(
            f"no catalog on {', '.join(missing)} (run `shardctl up` to copy epoch {top} there)"
        )
    behind = sorted((n, r.epoch) for n, r in present.items() if r.epoch < top)
    same_ring = CatalogView(current, dict(by_primary)).missed
    missed = [(n, e) for n, e in behind if n in same_ring]
    missed_problem = ""
    if missed:  # the same ring: only a role change's epoch did not reach them
        listed = ", ".join(f"{name} (epoch {epoch})" for name, epoch in missed)
        missed_problem = (
            f"{listed} behind epoch {top} (a role change it did not hear of, the same ring): "
            "`shardctl up` copies the epoch there"
        )
        problems.append(missed_problem)
    cut_over = [(n, e) for n, e in behind if (n, e) not in missed]
    if cut_over:
        listed = ", ".join(f"{name} (epoch {epoch})" for name, epoch in cut_over)
        problems.append(
            f"{listed} behind epoch {top}: an interrupted cut-over? "
            "run `shardctl rebalance --resume`"
        )
    return CatalogView(
        current,
        dict(by_primary),
        tuple(problems),
        tuple(unreachable),
        missed_problem,
    )


def read(
    topology: Topology,
    credentials: Credentials,
    *,
    timeout: float = 5.0,
    require_all: bool = True,
) -> CatalogView:
    """Read the catalog from every primary in parallel; the highest epoch wins.

    With ``require_all`` (the CLI's choice) an unreachable primary is DatabaseUnavailable;
    without it, the view is built from those that answered and names the others.
    """
    primaries = topology.primaries()
    results = pg.on_nodes(
        topology,
        credentials,
        primaries,
        read_current,
        timeout=timeout,
        strict=require_all,
        doing=DOING,
    )
    by_primary = {n: r for n, r in results.items() if not isinstance(r, BaseException)}
    unreachable = [n for n, r in results.items() if isinstance(r, BaseException)]
    if not by_primary and unreachable:
        raise DatabaseUnavailable(
            f"no primary answered while reading the ring catalog ({', '.join(unreachable)})"
        )
    return combine(by_primary, unreachable)


def read_any(topology: Topology, credentials: Credentials, *, timeout: float = 3.0) -> CatalogView:
    """Read the catalog from every node that answers, replicas included; the highest epoch wins.

    Replicas hold a copy of their primary's catalog, so this finds the current record even
    when a shard's primary is gone: it is how every command learns the acting roles
    (:func:`acting`). DatabaseUnavailable only when no node answers at all.
    """
    results = pg.on_nodes(
        topology,
        credentials,
        topology.nodes,
        read_current,
        timeout=timeout,
        strict=False,
        doing="reading the ring catalog",
    )
    answered = {n: r for n, r in results.items() if not isinstance(r, BaseException)}
    if not answered:
        # One node's reason (the first by name): "not running" may be a network or a timeout.
        name, why = min(results.items(), key=lambda item: item[0])
        reason = str(why).removeprefix(f"{name}: ")
        raise DatabaseUnavailable(
            f"the cluster {topology.cluster!r} is not running (no node answered; {name}: "
            f"{reason}): run `shardctl up`"
        )
    present = [r for r in answered.values() if r is not None]
    current = max(present, key=lambda r: r.epoch) if present else None
    unreachable = tuple(sorted(n for n, r in results.items() if isinstance(r, BaseException)))
    return CatalogView(current, answered, (), unreachable)


def acting(topology: Topology, credentials: Credentials, *, timeout: float = 3.0) -> Topology:
    """``topology`` with each shard's acting primary from the catalog (as declared if none)."""
    record = read_any(topology, credentials, timeout=timeout).current
    return topology.with_acting(dict(record.primaries)) if record is not None else topology


def drift(topology: Topology, record: RingRecord) -> list[str]:
    """How the topology disagrees with the catalog's ring, one line each (empty: it agrees)."""
    spec = topology.spec
    notes: list[str] = []
    where = f"{topology.path.name}"
    if spec.ring.algorithm.value != record.algorithm:
        notes.append(
            f"{where} says ring algorithm {spec.ring.algorithm.value!r} but the cluster's ring "
            f"(epoch {record.epoch}) is {record.algorithm!r}; the cluster's ring is used"
        )
    if record.algorithm == "md5" and spec.ring.vnodes != record.vnodes:
        notes.append(
            f"{where} says {spec.ring.vnodes} virtual nodes but the cluster's ring "
            f"(epoch {record.epoch}) has {record.vnodes}; the cluster's ring is used"
        )
    declared = [s.name for s in spec.shards]
    unknown = [n for n in record.nodes if n not in declared]
    if unknown:
        notes.append(
            f"the cluster's ring (epoch {record.epoch}) includes {', '.join(unknown)}, which "
            f"{where} does not declare; add the shard back to {where}"
        )
    joining = [n for n in declared if n not in record.nodes]
    if joining:
        notes.append(
            f"{', '.join(joining)} declared in {where} but not in the ring (epoch "
            f"{record.epoch}): owns no keys until `shardctl rebalance` moves data to it"
        )
    return notes


@dataclass
class EnsureReport:
    """What :func:`ensure` did."""

    epoch: int = 0
    written: list[str] = field(default_factory=list)
    """Primaries the current record was written to now."""
    warnings: list[str] = field(default_factory=list)


def ensure(topology: Topology, credentials: Credentials, *, timeout: float = 10.0) -> EnsureReport:
    """Install the catalog on every primary; write epoch 1 from the topology if none has one.

    A primary without a catalog, or behind the current epoch with the same ring (it missed a
    role change's epoch), gets a copy of the current record. Primaries behind with another ring
    (an interrupted cut-over) and a topology that disagrees are reported, not changed.
    """
    primaries = topology.primaries()

    def prepare(conn: psycopg.Connection[Any]) -> RingRecord | None:
        install(conn)
        return read_current(conn)

    found = pg.on_nodes(
        topology, credentials, primaries, prepare, timeout=timeout, strict=True, doing=DOING
    )
    view = combine({n: r for n, r in found.items() if not isinstance(r, BaseException)})
    record = view.current if view.current is not None else initial_record(topology)

    targets = [  # no catalog, or one that only missed a role change
        p for p in primaries if view.by_primary.get(p.name) is None or p.name in view.missed
    ]
    written = pg.on_nodes(
        topology,
        credentials,
        targets,
        lambda c: write(c, record),
        timeout=timeout,
        strict=True,
        doing=DOING,
    )
    report = EnsureReport(epoch=record.epoch, written=sorted(n for n, w in written.items() if w))
    report.warnings = [
        p for p in view.problems if not p.startswith("no catalog on") and p != view.missed_problem
    ]
    report.warnings += drift(topology, record)
    return report


def publish(
    topology: Topology,
    credentials: Credentials,
    record: RingRecord,
    *,
    primaries: Sequence[Node] | None = None,
    timeout: float = 10.0,
    strict: bool = True,
    unreachable: list[str] | None = None,
) -> list[str]:
    """Write a new epoch to every primary, opening connections; idempotent. Names written.

    A primary that does not answer is DatabaseUnavailable, unless ``strict`` is off or
    ``unreachable`` is given (its name is appended there): then the others are written all
    the same. A primary holding different content under the epoch is :class:`EpochTaken`
    either way.
    """
    targets = list(primaries) if primaries is not None else list(topology.primaries())

    def put(conn: psycopg.Connection[Any]) -> bool:
        install(conn)
        return write(conn, record)

    done = pg.on_nodes(
        topology,
        credentials,
        targets,
        put,
        timeout=timeout,
        strict=strict and unreachable is None,
        doing=DOING,
    )
    if unreachable is not None:
        unreachable += sorted(n for n, w in done.items() if isinstance(w, BaseException))
    return sorted(n for n, w in done.items() if w is True)


SETTLE_ATTEMPTS = 5
"""How many fresh epochs :func:`settle` tries before it gives up (each after a short pause)."""


def settle(
    base: RingRecord,
    change: Callable[[RingRecord], RingRecord],
    store: Callable[[RingRecord], object],
    reread: Callable[[], RingRecord],
    *,
    attempts: int = SETTLE_ATTEMPTS,
    pause: Callable[[float], None] = time.sleep,
) -> RingRecord:
    """Write one change to the catalog as a new epoch, however many writers race for it.

    ``change(current)`` is the next record built on ``current`` (its epoch is set here to
    ``current.epoch + 1``); ``store`` writes it wherever it belongs. When ``store`` meets
    another writer's record under that epoch (:class:`EpochTaken`), the change is built again
    on top of that record (or on what ``reread`` finds, if it is newer) under a fresh epoch, so
    both changes end up in the catalog. Bounded: CatalogError after ``attempts`` tries. The
    record written is returned.
    """
    current = base
    for attempt in range(attempts):
        new = dataclasses.replace(change(current), epoch=current.epoch + 1)
        try:
            store(new)
        except EpochTaken as raced:
            if attempt == attempts - 1:
                raise CatalogError(
                    f"the catalog changed under this write {attempts} times in a row "
                    f"(last: {raced}): run the command again"
                ) from None
            fresh = reread()
            current = raced.existing if raced.existing.epoch >= fresh.epoch else fresh
            pause(0.05 * (attempt + 1) + random.uniform(0, 0.1))  # let the other writer finish
            continue
        return new
    raise AssertionError("unreachable")  # pragma: no cover


def forget_rejoined(
    topology: Topology,
    credentials: Credentials,
    names: Sequence[str],
    by: str,
    *,
    timeout: float = 10.0,
    strict: bool = True,
) -> RingRecord | None:
    """Take ``names`` (nodes re-cloned as replicas) off the catalog's re-join list: one more
    epoch, created ``by``, on every acting primary (``strict`` off: on those that answer; a
    dead primary of another shard learns it later). Another writer of the same epoch (a
    failover at that moment, by a monitor or an operator) is built upon, never lost
    (:func:`settle`). None when none of them is on the list any more."""
    gone = set(names)

    def reread() -> RingRecord:
        return read_any(topology, credentials).record()

    def change(current: RingRecord) -> RingRecord:
        return dataclasses.replace(
            current,
            rejoin=tuple(n for n in current.rejoin if n not in gone),
            created_by=by,
        )

    def store(new: RingRecord) -> None:
        acting = topology.with_acting(dict(new.primaries))
        publish(acting, credentials, new, timeout=timeout, strict=strict)

    current = reread()
    if gone.isdisjoint(current.rejoin):
        return None
    return settle(current, change, store, reread)
