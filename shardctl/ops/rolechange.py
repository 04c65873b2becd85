"""Switchover and failover: change which node acts as a shard's primary, fenced and published.

The acting roles live in the catalog (``shardctl.ring.primaries``), under the same epoch as the
ring: a role change is one more epoch, written to every acting primary, exactly as a reshard's
cut-over is. Every command and every Router derives its topology from the current record
(:meth:`Topology.with_acting`), so all of them follow a role change without a restart.

**Switchover** (planned, nothing acknowledged lost)::

    fence the old primary     a whole-circle fenced range (SC001 for every write to the shard,
                              the reshard fence): Routers wait and retry, nothing new commits
    catch up                  wait until the candidate has replayed the old primary's flush LSN
                              (timeout: the fence is lifted and the old primary serves again)
    stop the old primary      a clean shutdown; its last WAL (the shutdown checkpoint) reaches
                              the candidate, so it can later follow the new timeline as is
    promote, publish          pg_promote, then in one transaction on the new primary: drop the
                              replicated fence row and write the new epoch; then every other
                              primary gets the epoch
    re-join                   ``up``'s convergence recreates the old primary's container as a
                              replica of the new one, and re-points the other replicas

**Failover** (the primary is gone): refuse if the old primary still answers; promote the replica
that received the most WAL; fence the old primary for good (stop its container and leave a
``standby.signal`` in its data directory, so a ``docker start`` by hand brings up a read-only
server; the catalog lists it under ``rejoin``, so ``up`` re-clones it from the new primary
instead of starting it); publish. Under ``replication: async`` the report says what may have
been lost, or plainly that it cannot be known.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.schema import Durability, Replication
from shardctl.config.topology import Node, Topology
from shardctl.db import admin, pg
from shardctl.db.admin import commit_waits_for_replicas, create_slot
from shardctl.docker.engine import Engines
from shardctl.errors import DatabaseUnavailable, RoleChangeError, ShardctlError, UsageError
from shardctl.health import durability as policy
from shardctl.ops import durability
from shardctl.ops.rejoin import RoleSteps
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.ring.hashing import SPACE, Move
from shardctl.state import catalog, fence, inflight, locks
from shardctl.state import durability as degradation
from shardctl.state.plan import Phase
from shardctl.util.waiting import NotYet, wait_for


class Step(StrEnum):
    """The steps of a role change, in order; ``RoleChanger(after_step=...)`` is called after
    each (the tests' fault injection: a switchover killed between any two steps)."""

    FENCED = "fenced"
    CAUGHT_UP = "caught-up"
    STOPPED = "stopped"
    PROMOTED = "promoted"
    PUBLISHED = "published"
    REJOINED = "rejoined"


@dataclass
class RoleChange:
    """What a switchover or failover did."""

    shard: str
    old_primary: str
    new_primary: str
    epoch: int
    write_pause: float = 0.0
    """Seconds the shard refused writes (fence to publish); Routers waited that long at most."""
    seconds: float = 0.0
    possibly_lost: str = ""
    """Failover only: what acknowledged writes may be missing, or that it cannot be known."""
    notes: list[str] = dataclasses.field(default_factory=list)


Conn = psycopg.Connection[Any]
Log = Callable[[str], None]


def _quiet(step: str) -> None:
    pass


@dataclass(frozen=True)
class _Position:
    """A node's replication position as it answered just now."""

    node: Node
    in_recovery: bool
    receive_lsn: int
    replay_lsn: int
    streaming: bool


def _position(node: Node, credentials: Credentials, timeout: float) -> _Position:
    with pg.connect(node, credentials, "postgres", timeout=timeout) as conn:
        row = conn.execute(
            "SELECT pg_catalog.pg_is_in_recovery(),"
            " COALESCE(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0'),"
            "          0)::bigint,"
            " COALESCE(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0'),"
            "          pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_flush_lsn(), '0/0')"
            "          )::bigint,"
            " EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver WHERE status = 'streaming')"
        ).fetchone()
    assert row is not None
    in_recovery, receive, replay, streaming = row
    assert isinstance(receive, int) and isinstance(replay, int)
    return _Position(node, bool(in_recovery), receive, replay, bool(streaming))


def _try_position(node: Node, credentials: Credentials, timeout: float) -> _Position | None:
    try:
        return _position(node, credentials, timeout)
    except (DatabaseUnavailable, psycopg.Error):
        return None


class RoleChanger:
    """Switchover and failover of one cluster's shards."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials,
        *,
        log: Log = _quiet,
        reporter: Reporter = quiet_reporter,
        after_step: Callable[[Step], None] = lambda step: None,
    ) -> None:
        """``topology`` with the acting roles (:func:`shardctl.state.catalog.acting`)."""
        self.topology = topology
        self.engines = engines
        self.credentials = credentials
        self.log = log
        self.reporter = reporter
        self.after_step = after_step

    def _provisioner(self, topology: Topology) -> RoleSteps:
        return RoleSteps(topology, self.engines, self.credentials, self.reporter)

    # ----------------------------------------------------------------- switchover

    def switchover(self, shard: str, to: str | None = None, *, timeout: float = 30.0) -> RoleChange:
        """Planned primary change with nothing acknowledged lost (see the module docstring)."""
        started = time.monotonic()
        old, *replicas = self.topology.shard_nodes(shard)
        record = self._current_record()
        answer = _try_position(old, self.credentials, 5.0)
        if answer is None or answer.in_recovery:
            raise RoleChangeError(
                f"{shard}: the primary {old.name} does not answer as a primary: "
                f"use `shardctl failover {shard}`"
            )
        self._refuse_during_reshard(shard, [old, *replicas])
        candidate = self._candidate(shard, replicas, to, streaming_only=True)[0].node
        database = self.topology.spec.database
        # Held until the old primary stops: while it is, `up` leaves this fence alone.
        with pg.connect(old, self.credentials, database) as held:
            row = held.execute(locks.TRY_SESSION_LOCK, (locks.ROLE_CHANGE_LOCK,)).fetchone()
            if row is None or not row[0]:
                raise RoleChangeError(f"{shard}: another switchover of {old.name} is running")
            self.log(f"fencing writes on {old.name}")
            fenced_at = time.monotonic()
            _fence(held, shard, candidate.name)
            flush = admin.flush_lsn(held)
            self.after_step(Step.FENCED)
            try:
                self.log(f"waiting for {candidate.name} to replay everything {old.name} flushed")
                self._wait_replayed(candidate, flush, timeout)
            except ShardctlError:
                _unfence(held)
                raise RoleChangeError(
                    f"{shard}: {candidate.name} did not catch up within {timeout:g}s; "
                    f"switchover undone, {old.name} serves writes again"
                ) from None
            self.after_step(Step.CAUGHT_UP)
            self.log(f"stopping {old.name} cleanly")
            self._provisioner(self.topology).stop(old)
        self.after_step(Step.STOPPED)
        self._wait_received_all(candidate, timeout)
        notes: list[str] = []
        new_record = self._promote_and_publish(shard, candidate, record, fenced=(), notes=notes)
        pause = time.monotonic() - fenced_at
        acting = self._provisioner(self.topology.with_acting(dict(new_record.primaries)))
        deadline = time.monotonic() + max(timeout, 60.0)
        self.log(f"re-joining {old.name} as a replica of {candidate.name}")
        acting.rejoin_as_replica(acting.topology.node(old.name), deadline)
        for other in replicas:
            if other.name != candidate.name:
                acting.follow(acting.topology.node(other.name), deadline)
        self.after_step(Step.REJOINED)
        change = RoleChange(
            shard, old.name, candidate.name, new_record.epoch, pause, time.monotonic() - started
        )
        change.notes += notes
        return change

    # ------------------------------------------------------------------- failover

    def failover(self, shard: str, to: str | None = None) -> RoleChange:
        """Promote the most advanced replica of a shard whose primary is gone."""
        started, started_at = time.monotonic(), time.time()
        old, *replicas = self.topology.shard_nodes(shard)
        record = self._current_record()
        answer = _try_position(old, self.credentials, 3.0)
        if answer is not None and not answer.in_recovery:
            raise UsageError(
                f"{shard}: the primary {old.name} still answers and accepts writes: "
                f"use `shardctl switchover {shard}` for a planned change"
            )
        chosen, usable, silent = self._candidate(shard, replicas, to, streaming_only=False)
        candidate = chosen.node
        self.log(f"fencing {old.name} for good")
        on_disk = self._provisioner(self.topology).demote_on_disk(old)
        self.log(f"promoting {candidate.name}")
        notes: list[str] = []
        new_record = self._promote_and_publish(
            shard, candidate, record, fenced=(old.name,), notes=notes
        )
        acting = self._provisioner(self.topology.with_acting(dict(new_record.primaries)))
        deadline = time.monotonic() + 60.0
        for other in replicas:
            if other.name != candidate.name:
                self.log(f"re-pointing {other.name} to {candidate.name}")
                acting.follow(acting.topology.node(other.name), deadline)
        change = RoleChange(shard, old.name, candidate.name, new_record.epoch, notes=notes)
        change.possibly_lost = self._loss_statement(shard, chosen, usable, silent, started_at)
        spec = self.topology.replication_spec(shard)
        alone = spec.mode is Replication.SYNC and not [
            p for p in usable if p.node.name != candidate.name
        ]
        if alone and spec.durability is Durability.PREFERRED:
            # Its only standby-to-be is the fenced old primary, back only through `up`:
            # nothing to wait for, so it acknowledges as async from now on (recorded).
            missing = (f"{old.name} (fenced by this failover: `shardctl up` re-clones it)",)
            degraded = durability.degrade_now(acting.topology, self.credentials, shard, missing)
            change.notes.append(degraded.line)
        elif alone:
            change.notes.append(
                f"{shard} replicates synchronously (durability required) and has no other "
                f"replica now: its commits wait until `shardctl up` re-clones {old.name} as a "
                "replica"
            )
        change.seconds = time.monotonic() - started
        if not on_disk:
            change.notes.append(
                f"{old.name}'s engine could not be reached to fence its data directory: it is "
                "fenced in the catalog (no Router or `up` writes to it); if its host comes back, "
                "run `shardctl up` before anything else"
            )
        return change

    # ---------------------------------------------------------------- shared steps

    def _current_record(self) -> catalog.RingRecord:
        return catalog.read_any(self.topology, self.credentials).record()

    def _refuse_during_reshard(self, shard: str, nodes: list[Node]) -> None:
        """A role change under a reshard in flight would race its cut-over's epoch."""
        for node in nodes:
            try:
                with pg.connect(node, self.credentials, self.topology.spec.database) as conn:
                    row = conn.execute(inflight.LATEST_RESHARD).fetchone()
            except (DatabaseUnavailable, psycopg.Error):
                continue  # not installed there, or gone: ask the next node
            if row is not None and str(row[1]) not in (Phase.DONE, Phase.ABORTED):
                raise RoleChangeError(
                    f"{shard}: reshard {row[0]} is in flight (phase {row[1]}): finish it with "
                    "`shardctl rebalance --resume` or `--abort` first; nothing changed"
                )
            return

    def _candidate(
        self, shard: str, replicas: list[Node], to: str | None, *, streaming_only: bool
    ) -> tuple[_Position, list[_Position], list[str]]:
        """The replica to promote (``to``, or the one that received the most WAL), every
        usable replica's position, and the replicas that did not answer."""
        if to is not None and to not in {n.name for n in replicas}:
            names = ", ".join(n.name for n in replicas) or "none"
            raise UsageError(f"{shard}: {to!r} is not a replica of this shard (replicas: {names})")
        answers = {n.name: _try_position(n, self.credentials, 3.0) for n in replicas}
        silent = [name for name, p in answers.items() if p is None]
        promoted = [p for p in answers.values() if p is not None and not p.in_recovery]
        if len(promoted) > 1:
            names = ", ".join(p.node.name for p in promoted)
            raise RoleChangeError(
                f"{shard}: split brain: {names} all accept writes; nothing changed"
            )
        if promoted and not streaming_only:
            # Promoted already (an interrupted role change, or by hand): finish its promotion.
            if to is not None and promoted[0].node.name != to:
                raise RoleChangeError(
                    f"{shard}: {promoted[0].node.name} was promoted already; fail over to it"
                )
            return promoted[0], [], silent
        usable = [
            p
            for p in answers.values()
            if p is not None and p.in_recovery and (p.streaming or not streaming_only)
        ]
        chosen = [p for p in usable if to is None or p.node.name == to]
        if not chosen:
            wanted = to or "any replica"
            how = "streaming " if streaming_only else "answering "
            raise RoleChangeError(
                f"{shard}: no usable replica ({wanted} is not a {how}replica): nothing changed"
            )
        return max(chosen, key=lambda p: (p.receive_lsn, p.replay_lsn)), usable, silent

    def _wait_replayed(self, node: Node, lsn: int, timeout: float) -> None:
        def probe() -> None:
            position = _position(node, self.credentials, 3.0)
            if position.replay_lsn < lsn:
                raise NotYet(f"replayed {position.replay_lsn}, need {lsn}")

        wait_for(
            probe,
            timeout=timeout,
            what=f"{node.name} to replay LSN {lsn}",
            on_timeout=RoleChangeError,
            interval=0.01,
            max_interval=0.1,
        )

    def _wait_received_all(self, node: Node, timeout: float) -> None:
        """After the old primary stopped: everything received is replayed (its last WAL)."""

        def probe() -> None:
            position = _position(node, self.credentials, 3.0)
            if position.streaming or position.replay_lsn < position.receive_lsn:
                raise NotYet(
                    f"streaming={position.streaming}, replayed {position.replay_lsn} "
                    f"of {position.receive_lsn}"
                )

        wait_for(
            probe,
            timeout=timeout,
            what=f"{node.name} to replay the old primary's last WAL",
            on_timeout=RoleChangeError,
            interval=0.01,
            max_interval=0.1,
        )

    def _promote_and_publish(
        self,
        shard: str,
        candidate: Node,
        record: catalog.RingRecord,
        *,
        fenced: tuple[str, ...],
        notes: list[str],
    ) -> catalog.RingRecord:
        """Promote ``candidate``, then write the epoch naming it (and listing ``fenced`` to
        re-join) on it and on every other acting primary that answers (:func:`catalog.settle`:
        another writer's epoch met on the way is built upon, not lost)."""
        with pg.connect(candidate, self.credentials, "postgres", deadline=75.0) as conn:
            row = conn.execute(
                "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() "
                "THEN pg_catalog.pg_promote(true, 60) ELSE true END"
            ).fetchone()
        if row is None or not row[0]:
            raise RoleChangeError(f"{shard}: {candidate.name} did not finish promoting in 60 s")
        self.after_step(Step.PROMOTED)

        def change(current: catalog.RingRecord) -> catalog.RingRecord:
            primaries = dict(current.primaries) | {shard: candidate.name}
            return dataclasses.replace(
                current,
                primaries=tuple(sorted(primaries.items())),
                rejoin=tuple(sorted({*current.rejoin, *fenced})),
                created_by=f"role change: {shard} -> {candidate.name}",
            )

        missed: list[str] = []

        def store(new: catalog.RingRecord) -> None:
            acting = self.topology.with_acting(dict(new.primaries))
            with pg.connect(
                candidate, self.credentials, self.topology.spec.database, local_commit=True
            ) as conn:
                # Before any Router learns of it: under sync, no commit here without a replica.
                wanted = policy.standby_names(acting, acting.node(candidate.name))
                commit_waits_for_replicas(conn, wanted)
                with conn.transaction():
                    _unfence(conn)
                    catalog.install(conn)
                    catalog.write(conn, new)
                for node in acting.shard_nodes(shard)[1:]:
                    create_slot(conn, node)
            # The other shards' primaries: one that does not answer (dead too, its host lost)
            # learns the epoch later; the readers take the highest epoch of those that answer.
            missed.clear()
            others = [p for p in acting.primaries() if p.shard != shard]
            catalog.publish(acting, self.credentials, new, primaries=others, unreachable=missed)

        new = catalog.settle(record, change, store, self._current_record)
        if missed:
            notes.append(
                f"the new epoch {new.epoch} could not be written to {', '.join(missed)} (not "
                "answering): every reader takes the highest epoch of the nodes that answer, and "
                "they get it when they answer again (`shardctl up`, or the monitor's next pass)"
            )
        self.after_step(Step.PUBLISHED)
        return new

    def _loss_statement(
        self,
        shard: str,
        chosen: _Position,
        usable: list[_Position],
        silent: list[str],
        started_at: float,
    ) -> str:
        """What acknowledged writes the new primary may lack, as far as can be known."""
        ahead = [p.node.name for p in usable if p.receive_lsn > chosen.receive_lsn]
        if ahead:
            return (
                f"writes acknowledged by the old primary may be lost: {', '.join(ahead)} had "
                f"received more WAL than {chosen.node.name}, which was asked for"
            )
        if self.topology.replication(shard) is Replication.SYNC:
            found, unasked = degradation.read_all(
                self.topology, self.credentials, self.topology.nodes, timeout=3.0
            )
            record = found.get(shard)
            if record is not None and record.degraded_since is not None:
                return (
                    f"writes acknowledged since {policy.clock(record.degraded_since)} may be "
                    f"lost: {shard} was degraded (durability preferred: acknowledging as async, "
                    f"no synchronous standby: {', '.join(record.missing) or 'none'}) from then "
                    f"until this failover at {policy.clock(started_at)}"
                )
            preferred = self.topology.replication_spec(shard).durability is Durability.PREFERRED
            others = {p.name for p in self.topology.primaries() if p.shard != shard}
            if preferred and others <= set(unasked):
                # A degradation is recorded on every primary that answers, its own included.
                return (
                    f"cannot be sure: {shard} acknowledges as async when degraded (durability "
                    "preferred), and no other shard's primary answered to say whether it was"
                )
            if silent:
                return (
                    f"cannot be sure: synchronous replication put every acknowledged commit on "
                    f"a replica, but {', '.join(silent)} did not answer and may have been it"
                )
            return (
                "nothing acknowledged: the shard replicates synchronously, so every acknowledged "
                f"commit was on a replica, and {chosen.node.name} received the most WAL"
            )
        return (
            f"cannot know: {shard}'s old primary is gone, and with asynchronous replication it "
            "may have acknowledged writes the new primary never received"
        )


# ----------------------------------------------------------------- the fence on a primary


def _fence(conn: Conn, shard: str, target: str) -> None:
    """Refuse every write to the sharded tables here: the reshard fence, over the circle."""
    whole_circle = Move(0, SPACE, shard, target)
    # Its own transaction, committed locally: visible at once, whatever the standbys do.
    fence.give_away(conn, locks.ROLE_CHANGE, [whole_circle], fence.RangeState.FENCED)


def _unfence(conn: Conn) -> None:
    fence.take_back(conn, locks.ROLE_CHANGE)


__all__ = ["RoleChange", "RoleChangeError", "RoleChanger", "Step"]
