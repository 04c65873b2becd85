"""One scrape's reading of the cluster: the health model of ``status``, within one deadline.

:meth:`Scraper.snapshot` asks every node at once over **one** connection each (the replication
facts of :func:`shardctl.health.facts.read_facts`, the ring catalog, and on a primary its WAL
archiver and the catalog's history of role changes), the poolers and what is in flight
likewise, and returns a :class:`Snapshot`. A node that has not answered when the deadline
passes is not up; its connection is shut down (a frozen server still completes TCP handshakes
behind Docker's port proxy, so only a client-side deadline notices it) and the scrape returns
on time. The acting roles come from the highest catalog epoch any node holds.

Rows per shard and table are never counted on a scrape: :class:`RowsCache` counts them in a
background thread every ``interval`` seconds and a snapshot carries the last count and its age.
:mod:`shardctl.health.metrics` turns a snapshot into Prometheus metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.rules import is_loopback
from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.db import pg, poolers
from shardctl.db.deadlines import interrupt
from shardctl.docker.engine import Engines
from shardctl.errors import ShardctlError
from shardctl.health import distribution
from shardctl.health.archiving import (
    ArchiveState,
    RepositoryReader,
    RepositoryTimes,
    archive_states,
)
from shardctl.health.defaults import ROWS_INTERVAL as ROWS_INTERVAL
from shardctl.health.defaults import TIMEOUT as TIMEOUT
from shardctl.health.facts import (
    ClusterFacts,
    ContainerState,
    NodeFacts,
    NodeObservation,
    engine_container_states,
    read_facts,
)
from shardctl.state import catalog, inflight
from shardctl.state.catalog import RingRecord
from shardctl.state.inflight import Operation
from shardctl.util import fanout
from shardctl.util.text import first_line

HEALTH = "health"
CATALOG = "catalog"
POOLERS = "poolers"
OPERATIONS = "operations"
ROWS = "rows"
BACKUP = "backup"
COLLECTORS = (HEALTH, CATALOG, POOLERS, OPERATIONS, ROWS, BACKUP)
"""Parts of a scrape, each reported by ``shardctl_scrape_collector_success``."""


# ------------------------------------------------------------------ what one scrape learns


@dataclass(frozen=True)
class Archiver:
    """A primary's ``pg_stat_archiver``, its ``archive_mode`` and WAL files waiting to go."""

    enabled: bool
    archived: int
    failed: int
    last_archived: float | None
    last_failed: float | None
    pending: int | None
    """``.ready`` files in ``archive_status``: WAL segments not archived yet."""


@dataclass(frozen=True)
class CatalogEntry:
    """One epoch of ``shardctl.ring`` as its history: who wrote it, when, whom it fenced."""

    epoch: int
    created_by: str
    created_at: float | None
    rejoin: tuple[str, ...]


@dataclass(frozen=True)
class RoleChanges:
    """When a shard's primary last changed (switchover or failover), and last failed over."""

    last_change: float | None = None
    last_failover: float | None = None


@dataclass(frozen=True)
class NodeAnswer:
    """What one node said over its one connection."""

    facts: NodeFacts
    record: RingRecord | None
    archiver: Archiver | None = None
    history: tuple[CatalogEntry, ...] = ()
    seconds: float = 0.0


@dataclass(frozen=True)
class RowsView:
    """The last background count of rows (None before the first succeeds), and its age."""

    counted: distribution.Distribution | None
    age_seconds: float | None
    duration_seconds: float | None
    ok: bool
    """Whether the last attempt succeeded."""
    error: str | None = None


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape learned: the facts ``status`` judges, and shardctl's own."""

    topology: Topology
    """With the acting roles, when the catalog was read."""
    facts: ClusterFacts
    record: RingRecord | None
    operations: tuple[Operation, ...] | None
    """None: not read (no primary answered in time)."""
    archivers: Mapping[str, Archiver] = field(default_factory=dict)
    """Per primary node name."""
    role_changes: Mapping[str, RoleChanges] = field(default_factory=dict)
    """Per shard."""
    rows: RowsView | None = None
    archives: Mapping[str, ArchiveState] = field(default_factory=dict)
    """Per shard, its WAL archiving (with ``backup:``): :func:`~shardctl.health.archiving.\
archive_states` of these facts and the repository's times."""
    last_backup: Mapping[str, float] = field(default_factory=dict)
    """Per shard, when its newest complete base backup finished (Unix time)."""
    repository_free: int | None = None
    """Room left on the backup repository's file system, when the repository was read."""
    collectors: Mapping[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    timeout: float = TIMEOUT


# ------------------------------------------------------------------ pure logic


def role_changes(entries: Iterable[CatalogEntry]) -> dict[str, RoleChanges]:
    """Per shard, the last epoch a role change wrote, and the last that was a failover.

    Switchover and failover both write ``role change: <shard> -> <node>``; a failover also
    adds the fenced former primary to ``rejoin`` (a switchover re-joins it itself).
    """
    found: dict[str, RoleChanges] = {}
    before: set[str] = set()
    marker = "role change: "
    for entry in sorted({e.epoch: e for e in entries}.values(), key=lambda e: e.epoch):
        fenced = set(entry.rejoin)
        if entry.created_by.startswith(marker) and entry.created_at is not None:
            shard = entry.created_by.removeprefix(marker).split(" -> ", 1)[0]
            known = found.get(shard, RoleChanges())
            failover = entry.created_at if fenced - before else known.last_failover
            found[shard] = RoleChanges(entry.created_at, failover)
        before = fenced
    return found


def exposure_problem(address: str, topology: Topology, *, tls: bool) -> str | None:
    """Why the metrics listener may not bind ``address`` (None: it may).

    The topology's exposure rule: loopback always; beyond it only over HTTPS (``tls``, the
    listener's own certificate) when the cluster uses ``tls: required``, or in clear when the
    topology opts out with ``allow_plaintext: true``."""
    host = address.strip("[]")
    if host == "localhost" or is_loopback(host):
        return None
    if topology.tls is not None and not tls:
        return (
            f"--listen {address} is beyond this machine and the cluster says tls: required: "
            "give --tls-cert and --tls-key (or listen on 127.0.0.1)"
        )
    if topology.tls is None and not topology.spec.allow_plaintext and not tls:
        return (
            f"--listen {address} would serve metrics beyond this machine in clear: listen on "
            "127.0.0.1, give --tls-cert and --tls-key, or set allow_plaintext: true"
        )
    return None


# ------------------------------------------------------------------ reading the cluster


_ARCHIVER = """
SELECT pg_catalog.current_setting('archive_mode') <> 'off' AS enabled,
       a.archived_count, a.failed_count,
       extract(epoch FROM a.last_archived_time)::float8 AS last_archived,
       extract(epoch FROM a.last_failed_time)::float8 AS last_failed,
       (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() s
         WHERE s.name LIKE '%%.ready') AS pending
  FROM pg_catalog.pg_stat_archiver a
"""
_HISTORY = (
    "SELECT epoch, created_by, extract(epoch FROM created_at)::float8, rejoin "
    "FROM shardctl.ring WHERE created_by LIKE 'role change: %%' OR rejoin <> '[]'::jsonb "
    "ORDER BY epoch"
)


def read_archiver(conn: psycopg.Connection[Any]) -> Archiver:
    """The primary's archiver statistics."""
    row = conn.execute(_ARCHIVER).fetchone()
    assert row is not None
    enabled, archived, failed, last_ok, last_failed, pending = row
    return Archiver(bool(enabled), int(archived), int(failed), last_ok, last_failed, int(pending))


def read_history(conn: psycopg.Connection[Any]) -> tuple[CatalogEntry, ...]:
    """The catalog epochs a role change wrote or that fence former primaries."""
    exists = conn.execute("SELECT pg_catalog.to_regclass('shardctl.ring') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return ()
    return tuple(
        CatalogEntry(int(epoch), str(by), at, tuple(str(n) for n in rejoin or ()))
        for epoch, by, at, rejoin in conn.execute(_HISTORY).fetchall()
    )


class _Open:
    """The connections of one scrape still in use, so that the deadline can cut them."""

    def __init__(self) -> None:
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def add(self, name: str, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._conns[name] = conn
            if self._closed:  # connected after the deadline: cut at once
                interrupt(conn)

    def done(self, name: str) -> None:
        with self._lock:
            self._conns.pop(name, None)

    def cut(self) -> int:
        """Interrupt every connection still in use; how many."""
        with self._lock:
            self._closed = True
            late = list(self._conns.values())
            self._conns.clear()
        for conn in late:
            interrupt(conn)
        return len(late)


class Scraper:
    """Reads the cluster for a scrape, within ``timeout`` seconds, keeping the acting roles
    it found for the next one."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Callable[[], Credentials],
        *,
        timeout: float = TIMEOUT,
        rows: RowsCache | None = None,
        repository: RepositoryReader | None = None,
    ) -> None:
        self.topology = topology
        self.repository = repository
        """Reads the backup repository's times (with ``backup:``), in the scrape's deadline."""
        self.engines = engines
        self.credentials = credentials
        self.timeout = timeout
        self.rows = rows
        self.acting = topology
        """The acting roles the last scrape found (the catalog's), used for the next one."""

    def snapshot(self) -> Snapshot:
        """Read the cluster once, all nodes at once, within the timeout."""
        started = time.monotonic()
        deadline = started + self.timeout
        topology = self.topology
        collectors: dict[str, bool] = {}
        # Connections must give up before the deadline on their own too (libpq's
        # connect_timeout), so that a node frozen mid-handshake leaves no thread behind long.
        connect = max(1.0, self.timeout / 2)

        def remaining() -> float:
            return max(0.0, deadline - time.monotonic())

        states: dict[str, ContainerState] = {}
        undeclared: tuple[str, ...] = ()
        unreachable: dict[str, str] = {}
        docker = fanout.gather(
            {"docker": lambda: engine_container_states(topology, self.engines)},
            timeout=remaining(),
        )["docker"]
        if isinstance(docker, BaseException):
            why = pg.failure_reason(docker)
            states = {n.name: ContainerState.UNREACHABLE for n in topology.nodes}
            unreachable = {n.name: why for n in topology.nodes}
        else:
            states, undeclared, unreachable = docker
        running = [n for n in topology.nodes if states[n.name] is ContainerState.RUNNING]
        login: Credentials | None = None
        login_error: str | None = None
        if running:
            try:
                login = self.credentials()
            except ShardctlError as exc:
                login_error = str(exc)
        opened = _Open()

        def ask(node: Node) -> Callable[[], NodeAnswer]:
            def run() -> NodeAnswer:
                began = time.monotonic()
                assert login is not None
                database = topology.spec.database
                # Each round trip within what is left; at the deadline _Open cuts it.
                until = max(0.5, remaining())
                with pg.connect(node, login, database, timeout=connect, deadline=until) as conn:
                    opened.add(node.name, conn)
                    try:
                        facts = read_facts(conn)
                        seconds = time.monotonic() - began
                        record = catalog.read_current(conn)
                        if facts.in_recovery:
                            return NodeAnswer(facts, record, seconds=seconds)
                        return NodeAnswer(
                            facts, record, read_archiver(conn), read_history(conn), seconds
                        )
                    finally:
                        opened.done(node.name)

            return run

        tasks: dict[str, Callable[[], object]] = {}
        if login is not None:
            tasks = {f"node:{n.name}": ask(n) for n in running}
            tasks[OPERATIONS] = self._in_flight(self.acting, login)
            tasks |= self._pooler_tasks(login, states, connect)
        if self.repository is not None and topology.spec.backup is not None:
            tasks[BACKUP] = functools.partial(self.repository, topology)
        answers = fanout.gather(tasks, timeout=remaining())
        opened.cut()
        nodes = {n.name: answers.get(f"node:{n.name}") for n in topology.nodes}
        found = {k: v for k, v in nodes.items() if isinstance(v, NodeAnswer)}
        collectors[HEALTH] = login_error is None and all(
            not isinstance(nodes[n.name], TimeoutError) for n in running
        )
        # The acting roles: the highest epoch any node holds (replicas keep a copy).
        records = [a.record for a in found.values() if a.record is not None]
        record = max(records, key=lambda r: r.epoch, default=None)
        collectors[CATALOG] = record is not None
        if record is not None:
            self.acting = topology.with_acting(dict(record.primaries))
        acting = self.acting
        observations = []
        for node in acting.nodes:
            state, answer = states[node.name], nodes[node.name]
            if isinstance(answer, NodeAnswer):
                observations.append(
                    NodeObservation(node, state, answer.facts, None, answer.seconds)
                )
            elif isinstance(answer, BaseException):
                why = pg.failure_reason(answer)
                observations.append(NodeObservation(node, state, None, why, self.timeout))
            else:
                why = login_error or unreachable.get(node.name, f"container {state.value}")
                observations.append(NodeObservation(node, state, None, why, 0.0))
        pooled = self._pooler_observations(acting, states, answers)
        if acting.pooled_nodes():
            collectors[POOLERS] = not any(
                isinstance(answers.get(f"console:{n.name}"), TimeoutError)
                for n in acting.pooled_nodes()
            )
        facts = ClusterFacts(acting, tuple(observations), undeclared, pooled)
        operations = answers.get(OPERATIONS)
        collectors[OPERATIONS] = isinstance(operations, tuple)
        archivers = {
            name: a.archiver
            for name, a in found.items()
            if a.archiver is not None and acting.node(name).role is Role.PRIMARY
        }
        rows = self.rows.view() if self.rows is not None else None
        if rows is not None:
            collectors[ROWS] = rows.ok
        times = answers.get(BACKUP)
        if BACKUP in tasks:
            collectors[BACKUP] = isinstance(times, RepositoryTimes)
        if not isinstance(times, RepositoryTimes):
            times = None
        return Snapshot(
            topology=acting,
            facts=facts,
            record=record,
            operations=operations if isinstance(operations, tuple) else None,
            archivers=archivers,
            role_changes=role_changes(e for a in found.values() for e in a.history),
            rows=rows,
            archives=archive_states(
                facts,
                acting.spec.health,
                times.newest_wal if times is not None else None,
                free_space=(lambda: times.free_bytes) if times is not None else None,
            ),
            repository_free=times.free_bytes if times is not None else None,
            last_backup=times.last_backup if times is not None else {},
            collectors=collectors,
            seconds=time.monotonic() - started,
            timeout=self.timeout,
        )

    @staticmethod
    def _in_flight(acting: Topology, login: Credentials) -> Callable[[], tuple[Operation, ...]]:
        """What is in flight, read from the primaries of the last scrape's acting roles."""
        return lambda: tuple(inflight.in_flight(acting, login))

    def _pooler_tasks(
        self, login: Credentials, states: Mapping[str, ContainerState], connect: float
    ) -> dict[str, Callable[[], object]]:
        """Per running pooler: its admin console, and the server reached through it (which
        waits when the pool is full: then the console still says how many clients wait)."""
        database = self.topology.spec.database
        tasks: dict[str, Callable[[], object]] = {}
        for node in self.topology.pooled_nodes():
            if states.get(node.pooler_container) is not ContainerState.RUNNING:
                continue
            tasks[f"console:{node.name}"] = functools.partial(
                poolers.read_console, node, login, database, timeout=connect
            )
            tasks[f"server:{node.name}"] = functools.partial(
                poolers.server_in_recovery, node, login, database, timeout=connect
            )
        return tasks

    def _pooler_observations(
        self,
        acting: Topology,
        states: Mapping[str, ContainerState],
        answers: Mapping[str, object],
    ) -> tuple[poolers.PoolerObservation, ...]:
        """Each pooler's observation, with the acting node."""
        found = []
        for node in acting.pooled_nodes():
            state = states.get(node.pooler_container, ContainerState.MISSING).value
            console = answers.get(f"console:{node.name}")
            server = answers.get(f"server:{node.name}")
            if console is None:
                found.append(poolers.PoolerObservation(node, state, None, f"container {state}"))
            elif isinstance(console, BaseException):
                why = pg.failure_reason(console)
                found.append(poolers.PoolerObservation(node, state, None, why))
            else:
                assert isinstance(console, poolers.PoolerFacts)
                in_recovery, error = (None, "not asked")
                if isinstance(server, tuple):
                    in_recovery, error = server
                elif isinstance(server, BaseException):
                    error = pg.failure_reason(server)
                facts = dataclasses.replace(
                    console, server_in_recovery=in_recovery, server_error=error
                )
                found.append(poolers.PoolerObservation(node, state, facts, None))
        return tuple(found)


class RowsCache:
    """Rows per shard and table, counted in a background thread every ``interval`` seconds
    (a scan of every sharded table on every primary: never on a scrape)."""

    def __init__(
        self,
        collector_topology: Callable[[], Topology],
        credentials: Callable[[], Credentials],
        *,
        interval: float = ROWS_INTERVAL,
        timeout: float = 60.0,
    ) -> None:
        self._topology = collector_topology
        self._credentials = credentials
        self.interval = interval
        self.timeout = timeout
        self._counted: distribution.Distribution | None = None
        self._at: float | None = None
        self._took: float | None = None
        self._ok = False
        self._error: str | None = "not counted yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Count now (in the calling thread)."""
        started = time.monotonic()
        try:
            login = self._credentials()
            acting = catalog.acting(self._topology(), login)
            counted = distribution.measure(acting, login, timeout=self.timeout)
        except Exception as exc:  # reported (rows_count_success 0); the next round tries again
            self._ok, self._error = False, first_line(exc)
            return
        self._counted, self._at = counted, time.monotonic()
        self._took, self._ok, self._error = self._at - started, True, None

    def start(self) -> None:
        """Count now and then every ``interval`` seconds, in a daemon thread."""

        def loop() -> None:
            while True:
                self.refresh()
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=loop, name="shardctl-rows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop counting after the count in progress."""
        self._stop.set()

    def view(self) -> RowsView:
        """The last count and its age."""
        age = None if self._at is None else time.monotonic() - self._at
        return RowsView(self._counted, age, self._took, self._ok, self._error)
