"""One health model: every replication fact of every node, read once, in parallel.

:func:`observe` probes all declared nodes at the same time (one schema-qualified query per
node, plus the container's state from Docker) and returns a :class:`ClusterFacts`.
:mod:`shardctl.health.checks` judges it, both for ``status`` (as rows) and for
``verify-replication`` (as findings); this module knows nothing of checks. Nothing is queried twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg, poolers
from shardctl.docker.engine import Engines
from shardctl.util import fanout


class ContainerState(StrEnum):
    """What Docker says about a node's container."""

    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    CREATED = "created"
    DEAD = "dead"
    MISSING = "missing"
    UNKNOWN = "unknown"
    UNREACHABLE = "unreachable"
    """Its engine does not answer: a lost host."""


class ActualRole(StrEnum):
    """What a node turned out to be when asked."""

    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ReplicationRow:
    """One row of a primary's ``pg_stat_replication``."""

    application_name: str
    client_addr: str | None
    state: str
    sent_lsn: int | None
    replay_lsn: int | None
    replay_lag_seconds: float | None
    sync_state: str
    pid: int | None = None
    slot_name: str | None = None
    """The replication slot this walsender streams through (joined on ``active_pid``)."""


@dataclass(frozen=True)
class Slot:
    """One row of ``pg_replication_slots``."""

    name: str
    slot_type: str
    active: bool
    wal_status: str | None
    safe_wal_size: int | None
    restart_lsn: int | None


@dataclass(frozen=True)
class WalReceiver:
    """A replica's ``pg_stat_wal_receiver`` row."""

    status: str
    sender_host: str | None
    slot_name: str | None
    received_tli: int | None


@dataclass(frozen=True)
class NodeFacts:
    """Everything one query learned about one node; ``error`` set when it could not be asked."""

    in_recovery: bool
    system_identifier: int
    timeline: int | None
    current_lsn: int | None
    receive_lsn: int | None
    replay_lsn: int | None
    replay_timestamp: float | None
    server_time: float
    server_version: int
    replication: tuple[ReplicationRow, ...]
    receiver: WalReceiver | None
    slots: tuple[Slot, ...]
    synchronous_standby_names: str = ""
    """The server's setting: empty when its commits wait for no standby."""
    pending_restart: tuple[str, ...] = ()
    """Settings changed in the configuration that only a restart applies (``pg_settings``)."""

    @property
    def role(self) -> ActualRole:
        """Primary or replica, as the server itself says."""
        return ActualRole.REPLICA if self.in_recovery else ActualRole.PRIMARY

    @property
    def lsn(self) -> int | None:
        """The node's position: write LSN on a primary, replay LSN on a replica."""
        return self.replay_lsn if self.in_recovery else self.current_lsn

    @property
    def lag_seconds(self) -> float:
        """Replay delay; zero when everything received is replayed (an idle primary)."""
        if not self.in_recovery or self.receive_lsn is None or self.replay_lsn is None:
            return 0.0
        if self.replay_lsn >= self.receive_lsn or self.replay_timestamp is None:
            return 0.0
        return max(0.0, self.server_time - self.replay_timestamp)

    def slot(self, name: str) -> Slot | None:
        """The slot called ``name``, if present."""
        return next((s for s in self.slots if s.name == name), None)


@dataclass(frozen=True)
class NodeObservation:
    """A declared node, its container's state and what its server said (or why it did not)."""

    node: Node
    container: ContainerState
    facts: NodeFacts | None
    error: str | None
    probe_seconds: float


@dataclass(frozen=True)
class ClusterFacts:
    """One observation per declared node, plus undeclared containers of the cluster."""

    topology: Topology
    nodes: tuple[NodeObservation, ...]
    undeclared: tuple[str, ...] = field(default=())
    poolers: tuple[poolers.PoolerObservation, ...] = field(default=())
    """One per node that has a pooler (see :mod:`shardctl.db.poolers`)."""

    def of(self, node_name: str) -> NodeObservation:
        """The observation of the node called ``node_name``."""
        return next(o for o in self.nodes if o.node.name == node_name)

    def primary_of(self, node: Node) -> NodeObservation:
        """The observation of ``node``'s shard's acting primary (``node.primary_name``)."""
        return self.of(node.primary_name)

    def lag_bytes(self, observation: NodeObservation) -> int | None:
        """Bytes the replica has yet to replay, against its primary's current LSN."""
        facts = observation.facts
        primary = self.primary_of(observation.node).facts
        if facts is None or not facts.in_recovery or primary is None:
            return None if facts is None or facts.in_recovery else 0
        if primary.current_lsn is None or facts.replay_lsn is None:
            return None
        # Probes run at nearly the same moment; a replica may have replayed a few bytes more.
        return max(0, primary.current_lsn - facts.replay_lsn)

    def lag_seconds(self, observation: NodeObservation) -> float | None:
        """Replay delay of a replica; zero when everything received is replayed (idle primary).

        While WAL is pending it is the primary's ``replay_lag`` for the replica's walsender,
        which keeps growing when replay is stuck but, unlike "now minus the last replayed
        commit", does not count the idle time before a new burst of writes. Only when the
        primary has no walsender for it does it fall back to the replica's own estimate.
        """
        facts = observation.facts
        if facts is None:
            return None
        if not facts.in_recovery or facts.receive_lsn is None or facts.replay_lsn is None:
            return 0.0
        if facts.replay_lsn >= facts.receive_lsn:
            return 0.0
        primary = self.primary_of(observation.node).facts
        rows = (
            [r for r in primary.replication if r.slot_name == observation.node.slot]
            if primary
            else []
        )
        if rows:
            # NULL: the standby had replayed everything sent when it last reported.
            return rows[0].replay_lag_seconds or 0.0
        return facts.lag_seconds


FACTS_QUERY = """
SELECT
    pg_catalog.pg_is_in_recovery() AS in_recovery,
    (SELECT system_identifier FROM pg_catalog.pg_control_system())::text AS system_identifier,
    (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()) AS checkpoint_timeline,
    -- A promoted server's last checkpoint may still name the old timeline for minutes; the
    -- WAL segment it writes now says the current one.
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
         ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))
              ::bit(32)::bigint
    END AS current_timeline,
    CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
         ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), '0/0')::bigint
    END AS current_lsn,
    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_receive_lsn(), '0/0')::bigint AS receive_lsn,
    pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_last_wal_replay_lsn(), '0/0')::bigint AS replay_lsn,
    extract(epoch FROM pg_catalog.pg_last_xact_replay_timestamp())::float8 AS replay_timestamp,
    extract(epoch FROM pg_catalog.clock_timestamp())::float8 AS server_time,
    pg_catalog.current_setting('server_version_num')::int AS server_version,
    pg_catalog.current_setting('synchronous_standby_names') AS synchronous_standby_names,
    (SELECT coalesce(json_agg(g.name ORDER BY g.name), '[]')
       FROM pg_catalog.pg_settings g WHERE g.pending_restart) AS pending_restart,
    (SELECT coalesce(json_agg(json_build_object(
            'application_name', r.application_name,
            'client_addr', host(r.client_addr),
            'state', r.state,
            'sent_lsn', pg_catalog.pg_wal_lsn_diff(r.sent_lsn, '0/0')::bigint,
            'replay_lsn', pg_catalog.pg_wal_lsn_diff(r.replay_lsn, '0/0')::bigint,
            'replay_lag', extract(epoch FROM r.replay_lag)::float8,
            'sync_state', r.sync_state,
            'pid', r.pid,
            'slot_name', (SELECT s.slot_name FROM pg_catalog.pg_replication_slots s
                           WHERE s.active_pid = r.pid LIMIT 1))), '[]')
       FROM pg_catalog.pg_stat_replication r) AS replication,
    (SELECT json_build_object(
            'status', w.status, 'sender_host', w.sender_host,
            'slot_name', w.slot_name, 'received_tli', w.received_tli)
       FROM pg_catalog.pg_stat_wal_receiver w) AS receiver,
    (SELECT coalesce(json_agg(json_build_object(
            'name', s.slot_name, 'slot_type', s.slot_type, 'active', s.active,
            'wal_status', s.wal_status, 'safe_wal_size', s.safe_wal_size,
            'restart_lsn', pg_catalog.pg_wal_lsn_diff(s.restart_lsn, '0/0')::bigint)), '[]')
       FROM pg_catalog.pg_replication_slots s) AS slots
"""


def read_facts(conn: psycopg.Connection[Any]) -> NodeFacts:
    """Run the one facts query on an open connection."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(FACTS_QUERY).fetchone()
    assert row is not None
    receiver = WalReceiver(**row["receiver"]) if row["receiver"] else None
    timeline = row["current_timeline"] or row["checkpoint_timeline"]
    if row["in_recovery"] and receiver is not None and receiver.received_tli:
        timeline = receiver.received_tli
    return NodeFacts(
        in_recovery=row["in_recovery"],
        system_identifier=int(row["system_identifier"]),
        timeline=timeline,
        current_lsn=row["current_lsn"],
        receive_lsn=row["receive_lsn"],
        replay_lsn=row["replay_lsn"],
        replay_timestamp=row["replay_timestamp"],
        server_time=row["server_time"],
        server_version=row["server_version"],
        replication=tuple(
            ReplicationRow(
                application_name=r["application_name"],
                client_addr=r["client_addr"],
                state=r["state"],
                sent_lsn=r["sent_lsn"],
                replay_lsn=r["replay_lsn"],
                replay_lag_seconds=r["replay_lag"],
                sync_state=r["sync_state"],
                pid=r["pid"],
                slot_name=r["slot_name"],
            )
            for r in row["replication"]
        ),
        receiver=receiver,
        slots=tuple(Slot(**s) for s in row["slots"]),
        synchronous_standby_names=row["synchronous_standby_names"],
        pending_restart=tuple(str(name) for name in row["pending_restart"]),
    )


ContainerStates = tuple[dict[str, ContainerState], tuple[str, ...], dict[str, str]]
"""Each node's container state, the undeclared containers, the nodes whose engine is lost."""


def engine_container_states(topology: Topology, engines: Engines) -> ContainerStates:
    """Each declared node's container state (and each pooler's, by its container name), the
    names of undeclared cluster containers, and each node whose engine did not answer (a lost
    host), name -> why: those nodes are UNREACHABLE, and the other engines are still read."""
    declared = {node.container: node.name for node in topology.nodes}
    pooler_containers = {node.pooler_container for node in topology.pooled_nodes()}
    states = {node.name: ContainerState.MISSING for node in topology.nodes}
    undeclared: list[str] = []
    found, lost = engines.container_states_per_engine(topology)
    if lost and len(lost) == len(engines.endpoints(topology)):
        raise next(iter(lost.values()))  # no engine answers: nothing can be judged
    unreachable: dict[str, str] = {}
    for node in topology.nodes:
        error = lost.get(node.placement)
        if error is not None:
            states[node.name] = ContainerState.UNREACHABLE
            where = node.placement
            unreachable[node.name] = (
                f"host {where.advertise} unreachable: engine {where.name} does not answer"
            )
    for name, state in found.items():
        if name in declared:
            try:
                states[declared[name]] = ContainerState(state)
            except ValueError:
                states[declared[name]] = ContainerState.UNKNOWN
        elif name == f"{topology.cluster}-backup" and topology.spec.backup is not None:
            continue  # the backup node (shardctl.ops.backup.archiving): not a node
        elif name in pooler_containers:  # by container name: observe() reads the poolers
            try:
                states[name] = ContainerState(state)
            except ValueError:
                states[name] = ContainerState.UNKNOWN
        else:
            undeclared.append(name)
    return states, tuple(sorted(undeclared)), unreachable


def observe(
    topology: Topology,
    engines: Engines,
    credentials: Callable[[], Credentials],
    *,
    timeout: float | None = None,
    containers: ContainerStates | None = None,
) -> ClusterFacts:
    """Probe every declared node in parallel; a node that does not answer is an observation too.

    ``credentials`` is called only when some container runs, so a cluster that was never
    brought up reports its nodes as missing instead of failing for want of passwords.
    ``containers``: :func:`engine_container_states`, when the caller asked the engines already.
    """
    timeout = timeout if timeout is not None else topology.spec.health.probe_timeout
    if containers is None:
        containers = engine_container_states(topology, engines)
    states, undeclared, unreachable = containers

    def probe(node: Node) -> Callable[[], tuple[NodeFacts, float]]:
        def run() -> tuple[NodeFacts, float]:
            started = time.monotonic()
            assert login is not None
            with pg.connect(
                node, login, "postgres", timeout=timeout, deadline=timeout, any_database=True
            ) as conn:
                return read_facts(conn), time.monotonic() - started

        return run

    reachable = [n for n in topology.nodes if states[n.name] is ContainerState.RUNNING]
    login = credentials() if reachable else None
    answers = fanout.gather({n.name: probe(n) for n in reachable}, timeout=timeout + 1.0)
    observations = []
    for node in topology.nodes:
        state = states[node.name]
        answer = answers.get(node.name)
        if answer is None:
            why = unreachable.get(node.name, f"container {state.value}")
            observations.append(NodeObservation(node, state, None, why, 0.0))
        elif isinstance(answer, BaseException):
            observations.append(
                NodeObservation(node, state, None, pg.failure_reason(answer), timeout)
            )
        else:
            facts, seconds = answer
            observations.append(NodeObservation(node, state, facts, None, seconds))
    pooled = poolers.observe(
        topology.pooled_nodes(),
        {name: state.value for name, state in states.items()},
        credentials,
        topology.spec.database,
        timeout=timeout,
    )
    return ClusterFacts(topology, tuple(observations), undeclared, pooled)
