"""``shardctl monitor``: watch every shard, fail over where the topology allows and it is safe.

One pass (every ``interval`` seconds):

1. read the acting roles from the catalog (any node that answers);
2. probe every acting primary (one short query, a deadline); remember since when each fails,
   and which standbys were synchronous while it answered;
3. for a failing shard, ask its replicas and the Docker engines, then :func:`decide`;
4. act: kill a frozen primary through its engine, or fail the shard over (exactly
   :meth:`RoleChanger.failover`) holding the monitor lock on every running replica of the
   shard, after checking again that the catalog still names the old primary;
5. write the heartbeat on every primary that answered, apply the sync durability policy,
   and re-join the former primaries the catalog lists as ``up`` would, once their engine answers.

Nothing lives only in memory that a restart would need for safety: the failing-since clock and
the synchronous standbys seen start empty, which only makes a restarted monitor slower to act.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.schema import Durability, Replication
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.ops import durability
from shardctl.ops.cluster import Cluster
from shardctl.ops.monitor import writes
from shardctl.ops.monitor.decide import (
    Decision,
    EngineSays,
    ReplicaSeen,
    ShardSeen,
    Verdict,
    decide,
)
from shardctl.ops.monitor.events import Emit, Event
from shardctl.ops.monitor.rejoin import Rejoiner
from shardctl.ops.rolechange import RoleChange, RoleChanger, Step
from shardctl.state import catalog, history
from shardctl.state import monitor as kept
from shardctl.util import fanout

PROBE_TIMEOUT = 2.0
"""Seconds the probe of a primary may take (connection included) before it counts as failed."""
DEFAULT_INTERVAL = 1.0


def _identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"


def sync_required(topology: Topology, shard: str) -> bool:
    """Whether the shard never acknowledges a commit that no standby has: ``sync`` with
    ``durability: required`` (``preferred`` may acknowledge alone once degraded)."""
    spec = topology.replication_spec(shard)
    return spec.mode is Replication.SYNC and spec.durability is Durability.REQUIRED


class Monitor:
    """The monitor of one cluster: :meth:`once` is one pass, :meth:`run` loops until stopped."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        emit: Emit,
        interval: float = DEFAULT_INTERVAL,
        after_step: Callable[[Step], None] = lambda step: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.declared = cluster.topology
        self.emit = emit
        self.interval = interval
        self.after_step = after_step
        self.clock = clock
        self.id = _identity()
        self.host = socket.gethostname()
        self.started_at = datetime.now(UTC)
        self.heartbeat = writes.Heartbeat(self.id, self.host, self.started_at)
        self.failing_since: dict[str, tuple[str, float]] = {}
        self.sync_standbys: dict[str, frozenset[str]] = {}
        self.automatic_at: dict[str, float] = {}
        self.last: dict[str, Verdict] = {}
        self.changed = False
        """Whether the last pass changed the cluster (killed or promoted)."""
        self._history_loaded = False
        self.policy_cluster = Cluster(cluster.topology, cluster.engines)
        """Its own Cluster for the durability policy, which follows the acting roles."""
        self._catalog_lock = threading.Lock()
        """One catalog writer at a time in this process (a failover, a re-join's epoch)."""
        self.rejoiner = Rejoiner(
            cluster,
            self.declared,
            emit=emit,
            clock=clock,
            engine_states=self._engine_states,
            catalog_lock=self._catalog_lock,
        )

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        """Pass after pass until ``stop`` is set; infrastructure errors are reported, not fatal."""
        self.emit(Event("started", f"monitor {self.id} watching cluster {self.declared.cluster}"))
        while not stop.is_set():
            began = self.clock()
            try:
                self.once()
            except ShardctlError as exc:
                self.emit(Event("error", str(exc)))
            except Exception as exc:  # a bug: said loudly, but the watch goes on
                detail = "".join(traceback.format_exception(exc)).strip().splitlines()
                self.emit(Event("bug", f"{type(exc).__name__}: {exc} ({' | '.join(detail[-3:])})"))
            stop.wait(max(0.05, min(self.interval - (self.clock() - began), self.due())))
        self.wait_for_rejoin()
        self.emit(Event("stopped", f"monitor {self.id} stopped"))

    def due(self) -> float:
        """Seconds until a failing primary will have failed for its ``detect_seconds`` (the
        next pass is then, not up to an interval later); infinity when none is about to."""
        now = self.clock()
        ahead = [
            since + self.declared.failover(shard).detect_seconds - now
            for shard, (_, since) in self.failing_since.items()
        ]
        return min((s for s in ahead if s > 0), default=float("inf"))

    def decide_once(self) -> None:
        """Passes until no shard is merely suspect (a failing primary watched for its
        ``detect_seconds``): what ``monitor --once`` does."""
        began = self.clock()
        longest = max(
            self.declared.failover(s.name).detect_seconds for s in self.declared.spec.shards
        )
        while True:
            self.once()
            suspect = any(v is Verdict.SUSPECT for v in self.last.values())
            if not suspect or self.clock() - began > longest + self.interval:
                self.wait_for_rejoin()
                return
            time.sleep(self.interval)

    def once(self) -> None:
        """One pass over every shard (see the module docstring)."""
        credentials = self.cluster.credentials()
        self.cluster.engines.forget_lost()  # a lost host may be back: asked again each pass
        view = catalog.read_any(self.declared, credentials, timeout=PROBE_TIMEOUT)
        record = view.record()
        topology = self.declared.with_acting(dict(record.primaries))
        self._load_history(topology, credentials)
        with self._catalog_lock:
            writes.catch_up(topology, credentials, view, self.emit)
        primaries = topology.primaries()
        looks = fanout.gather(
            {p.name: partial(self._probe, p, credentials) for p in primaries},
            timeout=PROBE_TIMEOUT + 1,
        )
        now = self.clock()
        answered: list[Node] = []
        acted = False
        states: tuple[dict[str, str], set[str]] | None = None
        for primary in primaries:
            shard = primary.shard
            look = looks[primary.name]
            if isinstance(look, kept.PrimaryLook) and not look.in_recovery:
                answered.append(primary)
                self.failing_since.pop(shard, None)
                self.sync_standbys[shard] = frozenset(look.sync_standbys)
                self._note(Decision(shard, Verdict.HEALTHY, f"{primary.name} answers"))
                continue
            since = self.failing_since.get(shard)
            if since is None or since[0] != primary.name:
                since = (primary.name, now)
                self.failing_since[shard] = since
            if states is None:
                states = self._engine_states(topology)
            seen = self._see(topology, credentials, primary, now - since[1], states)
            decision = decide(seen)
            self._note(decision)
            acted = self._act(topology, credentials, record, decision) or acted
        writes.beat(self.declared, answered, credentials, self.heartbeat, self.emit)
        self._apply_durability_policy(topology)
        if record.rejoin and not acted:
            self.rejoiner.start(topology, record, {p.shard for p in answered})
        self.changed = acted

    def wait_for_rejoin(self, timeout: float = 150.0) -> None:
        """Let a re-join in progress finish (before exiting)."""
        self.rejoiner.wait(timeout)

    # ------------------------------------------------------------------ seeing

    def _probe(self, primary: Node, credentials: Credentials) -> kept.PrimaryLook:
        database = self.declared.spec.database
        with pg.connect(primary, credentials, database, timeout=PROBE_TIMEOUT) as conn:
            return kept.look_at_primary(conn)

    def _engine_states(self, topology: Topology) -> tuple[dict[str, str], set[str]]:
        """Container name -> Docker state, and the containers whose engine does not answer."""
        found, lost = self.cluster.engines.container_states_per_engine(topology)
        unknown = {n.container for n in topology.nodes if n.placement in lost}
        return found, unknown

    def _see(
        self,
        topology: Topology,
        credentials: Credentials,
        primary: Node,
        failing_for: float,
        states: tuple[dict[str, str], set[str]],
    ) -> ShardSeen:
        shard = primary.shard
        found, unknown = states

        def engine(node: Node) -> EngineSays:
            if node.container in unknown:
                return EngineSays.UNKNOWN
            return EngineSays.of(found.get(node.container))

        replicas = topology.shard_nodes(shard)[1:]
        database = topology.spec.database

        def look(node: Node) -> kept.ReplicaLook:
            with pg.connect(node, credentials, database, timeout=PROBE_TIMEOUT) as conn:
                return kept.look_at_replica(conn)

        looks = fanout.gather(
            {r.name: partial(look, r) for r in replicas}, timeout=PROBE_TIMEOUT + 1
        )
        standbys = self.sync_standbys.get(shard, frozenset())
        seen: list[ReplicaSeen] = []
        for replica in replicas:
            answer = looks[replica.name]
            if isinstance(answer, kept.ReplicaLook):
                seen.append(
                    ReplicaSeen(
                        replica.name,
                        True,
                        answer.in_recovery,
                        answer.streaming,
                        answer.receive_lsn,
                        engine(replica),
                        replica.name in standbys,
                        answer.role_change_fenced,
                        kept.cutting_over(answer.reshard_phase),
                    )
                )
            else:
                seen.append(ReplicaSeen(replica.name, False, engine=engine(replica)))
        at = self.automatic_at.get(shard)
        return ShardSeen(
            shard=shard,
            policy=topology.failover(shard),
            sync_required=sync_required(topology, shard),
            primary=primary.name,
            primary_ok=False,
            failing_for=failing_for,
            primary_engine=engine(primary),
            replicas=tuple(seen),
            since_automatic=None if at is None else self.clock() - at,
        )

    def _load_history(self, topology: Topology, credentials: Credentials) -> None:
        """Once: the last automatic failover of each shard from the catalog (hold-down across
        a restart)."""
        if self._history_loaded:
            return
        for node in topology.nodes:
            try:
                with pg.connect(node, credentials, topology.spec.database, timeout=2) as conn:
                    history = kept.read_failovers(conn)
                    row = conn.execute("SELECT now()").fetchone()
            except (DatabaseUnavailable, psycopg.Error):
                continue
            assert row is not None
            server_now = row[0]
            assert isinstance(server_now, datetime)
            for event in history:
                age = (server_now - event.at).total_seconds()
                self.automatic_at[event.shard] = self.clock() - max(0.0, age)
            self._history_loaded = True
            return

    # ------------------------------------------------------------------ acting

    def _note(self, decision: Decision) -> None:
        """Report a decision: a change of verdict always, a refusal every pass."""
        before = self.last.get(decision.shard)
        self.last[decision.shard] = decision.verdict
        if decision.verdict is Verdict.REPORT or decision.verdict is not before:
            if decision.verdict is Verdict.HEALTHY and before is None:
                return  # the first pass: healthy is the quiet default
            self.emit(
                Event(
                    decision.verdict.value,
                    decision.reason,
                    decision.shard,
                    decision.command,
                    {"candidate": decision.candidate} if decision.candidate else {},
                )
            )

    def _act(
        self,
        topology: Topology,
        credentials: Credentials,
        record: catalog.RingRecord,
        decision: Decision,
    ) -> bool:
        """Carry out a KILL, PROMOTE or FINISH; True when the cluster was changed."""
        shard = decision.shard
        if decision.verdict is Verdict.KILL:
            primary = topology.shard_nodes(shard)[0]
            container = self.cluster.engines.container(primary)
            if container is not None:
                self.cluster.engines.kill(container)
                self.emit(Event("killed", f"{primary.name} killed through its engine", shard))
            return True
        if decision.verdict not in (Verdict.PROMOTE, Verdict.FINISH):
            return False
        assert decision.candidate is not None
        try:
            with self._catalog_lock, self._locked(topology, credentials, shard) as held:
                if not held:
                    self.emit(Event("busy", "another monitor holds the failover lock", shard))
                    return False
                fresh = catalog.read_any(self.declared, credentials, timeout=PROBE_TIMEOUT)
                now_record = fresh.record()
                old = topology.acting_primary(shard)
                if dict(now_record.primaries).get(shard, f"{shard}-primary") != old:
                    self.emit(
                        Event("skipped", "another monitor failed the shard over already", shard)
                    )
                    return False
                acting = self.declared.with_acting(dict(now_record.primaries))
                changer = RoleChanger(
                    acting,
                    self.cluster.engines,
                    credentials,
                    log=lambda step: self.emit(Event("step", step, shard)),
                    after_step=self.after_step,
                )
                change = changer.failover(shard, to=decision.candidate)
                after = acting.with_acting(
                    {**dict(now_record.primaries), shard: change.new_primary}
                )
        except ShardctlError as exc:
            anyway = self._published_anyway(topology, record, decision, exc)
            if anyway is None:
                self.emit(
                    Event(
                        "failed",
                        f"failover did not happen: {exc}",
                        shard,
                        f"shardctl failover {shard}",
                    )
                )
                return True
            change = anyway
            after = self.declared.with_acting({**dict(record.primaries), shard: change.new_primary})
        self.automatic_at[shard] = self.clock()
        self.failing_since.pop(shard, None)
        event = kept.Failover(
            epoch=change.epoch,
            at=datetime.now(UTC),
            shard=shard,
            old_primary=change.old_primary,
            new_primary=change.new_primary,
            reason=decision.reason,
            possibly_lost=change.possibly_lost,
            by=f"shardctl monitor {self.id}",
        )
        writes.record_failover(after, credentials, event, self.emit)
        history.record(  # what `shardctl history` lists, beside the manual role changes
            after.node(change.new_primary),
            credentials,
            after.spec.database,
            history.Event(
                at=event.at,
                kind=history.FAILOVER,
                shard=shard,
                detail=f"{shard}: {change.old_primary} -> {change.new_primary}: {decision.reason}",
                by=event.by,
                mode="automatic",
                seconds=change.seconds,
            ),
        )
        self.emit(
            Event(
                "promoted",
                f"{change.old_primary} -> {change.new_primary} (catalog epoch {change.epoch}) "
                f"in {change.seconds:.1f}s; possibly lost: {change.possibly_lost}",
                shard,
                data={
                    "old_primary": change.old_primary,
                    "new_primary": change.new_primary,
                    "epoch": change.epoch,
                    "possibly_lost": change.possibly_lost,
                    "seconds": round(change.seconds, 3),
                },
            )
        )
        for note in change.notes:
            self.emit(Event("note", note, shard))
        return True

    def _published_anyway(
        self,
        topology: Topology,
        record: catalog.RingRecord,
        decision: Decision,
        error: ShardctlError,
    ) -> RoleChange | None:
        """A failover that raised after its new epoch reached the new primary (another shard's
        primary, dead too, could not be told): the shard did fail over. The change, or None."""
        try:
            now = catalog.read_any(self.declared, self.cluster.credentials()).record()
        except ShardctlError:
            return None
        new = dict(now.primaries).get(decision.shard)
        if new is None or new != decision.candidate or now.epoch <= record.epoch:
            return None
        self.emit(
            Event(
                "note",
                f"the new epoch did not reach every primary ({error}); those that answered "
                "have it, and `shardctl up` copies it to the others once they run",
                decision.shard,
            )
        )
        change = RoleChange(decision.shard, topology.acting_primary(decision.shard), new, now.epoch)
        change.possibly_lost = (
            f"cannot know: {decision.shard}'s old primary is gone, and with asynchronous "
            "replication it may have acknowledged writes the new primary never received"
            if not sync_required(topology, decision.shard)
            else "not stated: the failover stopped before its loss report (see the note above)"
        )
        return change

    @contextlib.contextmanager
    def _locked(self, topology: Topology, credentials: Credentials, shard: str) -> Iterator[bool]:
        """Hold the monitor lock on every replica of ``shard`` whose engine does not say it is
        stopped; False (nothing held) when one of them refuses or does not answer."""
        states, unknown = self._engine_states(topology)
        key = kept.lock_key(shard)
        conns: list[psycopg.Connection[Any]] = []
        try:
            for replica in sorted(topology.shard_nodes(shard)[1:], key=lambda n: n.name):
                stopped = (
                    replica.container not in unknown
                    and EngineSays.of(states.get(replica.container)) is EngineSays.STOPPED
                )
                if stopped:
                    continue
                try:
                    conn = pg.connect(replica, credentials, "postgres", timeout=PROBE_TIMEOUT)
                except DatabaseUnavailable:
                    yield False
                    return
                conns.append(conn)
                row = conn.execute(kept.TRY_LOCK, key).fetchone()
                if row is None or not row[0]:
                    yield False
                    return
            yield bool(conns)
        finally:
            for conn in conns:
                with contextlib.suppress(psycopg.Error):
                    conn.close()  # a closed session releases its advisory locks

    def _apply_durability_policy(self, topology: Topology) -> None:
        """The sync durability policy, every pass: a ``preferred`` shard degrades to async
        while no standby is connected and returns to sync when one is back."""
        for change in durability.apply_durability(self.policy_cluster):
            self.emit(Event("durability", change.line, change.shard))
