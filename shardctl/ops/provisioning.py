"""Make the declared cluster real in Docker, and take it away again.

``up`` converges: per shard (shards in parallel) it makes the primary's volume and container,
waits until it accepts writes, configures it (replication role, database, schema, one physical
slot per replica), then makes each replica, which clones the primary with
``pg_basebackup -X stream -S <slot>`` on its first start. What already matches is left
alone; a container whose declared configuration changed is recreated on its volume.

Roles are the *acting* ones (the catalog's, see :mod:`shardctl.ops.rolechange`): a replica whose
upstream is not its shard's acting primary is re-pointed; a former primary fenced by a failover
(``rejoin``) is re-cloned from the new one; and a shard whose primary lost its volume while a
replica holds the data is refused -- ``up`` never creates an empty primary over real data.

What a node's container is comes from :func:`shardctl.docker.specs.container_spec`; every Docker
call goes through :mod:`shardctl.docker.engine`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from shardctl.config.credentials import Credentials
from shardctl.config.schema import Role
from shardctl.config.topology import Node, Topology
from shardctl.db import pg, poolers
from shardctl.docker.clients import Endpoint
from shardctl.docker.engine import Engines
from shardctl.docker.records import LABEL_POOLER, cluster_labels, config_digest
from shardctl.docker.specs import (
    TLS_FILES,
    container_spec,
    data_mount,
    pooler_spec,
    upstream_conninfo,
)
from shardctl.errors import (
    CheckFailed,
    DatabaseUnavailable,
    DockerUnavailable,
    ProvisioningError,
    ShardctlError,
)
from shardctl.health import durability
from shardctl.util import fanout
from shardctl.util.waiting import NotYet, wait_for

if TYPE_CHECKING:
    from shardctl.docker.records import Container, ContainerSpec

T = TypeVar("T")


class Action(StrEnum):
    """What ``up`` did to a node."""

    CREATED = "created"
    RECREATED = "recreated"
    STARTED = "started"
    UNCHANGED = "unchanged"
    REMOVED = "removed"
    """A pooler the topology no longer declares."""


@dataclass
class UpReport:
    """What ``up`` did, per node, and how long it took."""

    actions: dict[str, Action] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    """Things found that ``up`` reports but does not change (e.g. topology vs ring catalog)."""


@dataclass
class DownReport:
    """What ``down`` removed."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)


Reporter = Callable[[str, str], None]
"""Called with (node name, what is happening now) while provisioning works."""


def quiet_reporter(node: str, step: str) -> None:
    """A reporter that reports nothing (the library default; the CLI shows progress)."""


class Stopped(Exception):
    """``up`` was interrupted: raised in a shard's thread at its next step."""


class Provisioner:
    """Creates, repairs and removes one cluster's Docker resources."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials | None = None,
        reporter: Reporter = quiet_reporter,
        *,
        rejoin: Iterable[str] = (),
    ) -> None:
        self.topology = topology
        self.engines = engines
        self.credentials = credentials
        self.report = reporter
        self.rejoin = frozenset(rejoin)
        """Nodes fenced by a failover: re-cloned from their shard's acting primary."""
        self._mounts: dict[Endpoint, str] = {}
        self._stop = threading.Event()
        """Set on Ctrl-C: each shard finishes the step in progress and starts no other."""
        self._cloned: set[str] = set()
        """Replicas whose volume this ``up`` made: cloned with today's ``primary_conninfo``."""

    # ----------------------------------------------------------------- up

    def up(self, *, wait: bool = True, timeout: float = 180.0) -> UpReport:
        """Create what is missing, start what is stopped; with ``wait``, until all stream."""
        started = time.monotonic()
        report = UpReport()
        self._prepare_engines()
        deadline = started + timeout
        shards = self.topology.spec.shards
        # On Ctrl-C: stop creating at once; the containers being created are finished (a half
        # made one would be repaired by the next `up` anyway), then the interrupt goes on.
        done = fanout.gather(
            {s.name: partial(self._up_shard, s.name, report, wait, deadline) for s in shards},
            interrupted=self._stop.set,
            prefix="up",
        )
        failures = [e for e in done.values() if isinstance(e, BaseException)]
        if failures:
            first = failures[0]
            if not isinstance(first, ShardctlError):
                raise first
            if len(failures) > 1:
                raise type(first)(f"{first}\n({len(failures) - 1} more shard(s) also failed)")
            raise first
        self._remove_undeclared_poolers(report)
        report.seconds = time.monotonic() - started
        return report

    def _remove_undeclared_poolers(self, report: UpReport) -> None:
        """Poolers of this cluster the topology no longer declares (``pooler:`` removed or
        narrowed): they hold no data, so ``up`` removes them like it creates them."""
        declared = {node.pooler_container for node in self.topology.pooled_nodes()}
        for container in self.engines.cluster_containers(self.topology):
            if LABEL_POOLER in container.labels and container.name not in declared:
                self.report(str(container.name), "removing (no longer declared)")
                self.engines.remove_container(container, stop_timeout=5)
                report.actions[str(container.name)] = Action.REMOVED

    def _up_shard(self, shard: str, report: UpReport, wait: bool, deadline: float) -> None:
        primary, *replicas = self.topology.shard_nodes(shard)
        self._refuse_empty_primary(primary, replicas)
        self._refuse_a_second_primary(primary, replicas)
        for node in replicas:
            if node.name in self.rejoin:
                self.report(node.name, "re-cloning (fenced by a failover)")
                self.engines.remove_node(node)
        self._check_stop()
        report.actions[primary.name] = self._ensure_node(primary)
        self._wait_ready(primary, deadline)
        self._configure_primary(primary, replicas)
        for replica in replicas:
            self._check_stop()
            report.actions[replica.name] = self._ensure_node(replica, primary)
        for replica in replicas:
            # A container made again on a kept volume keeps the conninfo it was cloned with
            # (before tls: required, say): re-pointed like any replica that was there.
            if (
                report.actions[replica.name] is not Action.CREATED
                or replica.name not in self._cloned
            ):
                self.follow(replica, deadline)
        if wait:
            for replica in replicas:
                self._wait_streaming(replica, deadline)
        with self._connect(primary) as conn:  # once its replicas are there
            commit_waits_for_replicas(conn, self.topology, primary)
        for node in (primary, *replicas):
            if node.pooler_port is not None:
                self._check_stop()
                report.actions[f"{node.name}-pooler"] = self.ensure_pooler(node)
                if wait and report.actions[f"{node.name}-pooler"] is not Action.UNCHANGED:
                    self._wait_pooler(node, deadline)
        for node in (primary, *replicas):
            self.report(node.name, "ready" if wait or node is primary else "started")

    def start_existing(self) -> int:
        """Start the cluster's stopped containers as they are; how many there are in all."""
        containers = self.engines.cluster_containers(self.topology)
        for container in containers:
            if self.engines.status(container) != "running":
                self.report(str(container.name), "starting")
                self.engines.start(container)
        return len(containers)

    def _prepare_engines(self) -> None:
        """Image and network on every engine, all engines at once (each host works alone)."""
        endpoints = self.engines.endpoints(self.topology)

        def prepare(endpoint: Endpoint) -> None:
            self._ensure_image(endpoint)
            self._ensure_network(endpoint)

        fanout.each({e: partial(prepare, e) for e in endpoints}, prefix="engine")

    def _ensure_image(self, endpoint: Endpoint) -> None:
        image = self.topology.spec.image
        volumes = self.engines.image_volumes(image, endpoint)
        if volumes is None:
            self.report("image", f"pulling {image}")
            volumes = self.engines.pull(image, endpoint)
        self._mounts[endpoint] = data_mount(volumes)
        poolers = {
            self.topology.pooler_image(node.shard)
            for node in self.topology.pooled_nodes()
            if node.placement == endpoint
        }
        for image in sorted(poolers):
            if self.engines.image_volumes(image, endpoint) is None:
                self.report("image", f"pulling {image}")
                self.engines.pull(image, endpoint)

    def _ensure_network(self, endpoint: Endpoint) -> None:
        self.engines.ensure_network(
            self.topology.network, cluster_labels(self.topology.cluster), endpoint
        )

    def spec(self, node: Node) -> ContainerSpec:
        """The container ``up`` makes for ``node`` (on the volume mount its image asks for)."""
        return container_spec(self.topology, node, self._mounts[node.placement])

    def _refuse_a_second_primary(self, primary: Node, replicas: list[Node]) -> None:
        """Starting a stopped primary while one of its replicas was promoted (a role change
        interrupted between promote and publish, or a promotion by hand) makes two."""
        container = self.engines.container(primary)
        if container is not None and self.engines.status(container) == "running":
            return
        for replica in replicas:
            try:
                with self._connect(replica) as conn:
                    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            except DatabaseUnavailable:
                continue
            if row is not None and not row[0]:
                raise CheckFailed(
                    f"{primary.shard}: {replica.name} accepts writes while the primary "
                    f"{primary.name} is stopped (an interrupted switchover?); `up` will not start "
                    f"a second primary: run `shardctl failover {primary.shard}` to keep "
                    f"{replica.name}"
                )

    def _refuse_empty_primary(self, primary: Node, replicas: list[Node]) -> None:
        """A primary without a volume over replicas with data would be a new, empty primary."""
        if primary.name in self.rejoin or self.engines.has_volume(primary):
            return
        holding = [
            r.name for r in replicas if r.name not in self.rejoin and self.engines.has_volume(r)
        ]
        if holding:
            raise CheckFailed(
                f"{primary.shard}: the primary {primary.name} has no data volume, but "
                f"{', '.join(holding)} holds the shard's data: `up` will not create an empty "
                f"primary over it; run `shardctl failover {primary.shard}` first"
            )

    def _ensure_node(self, node: Node, primary: Node | None = None) -> Action:
        fresh_volume = self.engines.ensure_volume(node)
        if fresh_volume:
            self._cloned.add(node.name)
        if primary is not None and fresh_volume:
            self._reset_slot(primary, node)
        spec = self.spec(node)
        container = self.engines.container(node)
        action = Action.UNCHANGED
        if container is not None and fresh_volume:
            # Its first-start settings (initdb or clone, from where) may predate a role change.
            self.report(node.name, "recreating (its volume is new)")
            self.engines.remove_container(container, stop_timeout=10)
            container, action = None, Action.RECREATED
        container, action = self._made(node, node.name, spec, container, action, stop_timeout=30)
        status = self.engines.status(container)
        if status != "running":
            if node.role is Role.REPLICA and not fresh_volume:
                # Whatever it was before (a primary a role change left stopped), the catalog
                # says replica: it must come up read-only, never as a second writable primary.
                self.engines.put_file(container, spec.environment["PGDATA"], "standby.signal", "")
            if status != "paused":
                self.report(node.name, "starting")
            self.engines.start(container)
            action = action if action is not Action.UNCHANGED else Action.STARTED
        return action

    def ensure_pooler(self, node: Node) -> Action:
        """The PgBouncer in front of ``node``: created, recreated when its configuration
        changed, started when stopped; it points at ``node`` whatever the node's role."""
        spec = pooler_spec(self.topology, node)
        container = self.engines.container(node, pooler=True)
        container, action = self._made(
            node, spec.name, spec, container, Action.UNCHANGED, stop_timeout=5
        )
        if self.engines.status(container) != "running":
            self.report(spec.name, "starting")
            self.engines.start(container)
            action = action if action is not Action.UNCHANGED else Action.STARTED
        return action

    def _made(
        self,
        node: Node,
        name: str,
        spec: ContainerSpec,
        container: Container | None,
        action: Action,
        *,
        stop_timeout: int,
    ) -> tuple[Container, Action]:
        """``container`` (of ``node`` or its pooler, reported as ``name``) as ``spec`` says:
        recreated when its configuration changed, created when missing."""
        if container is not None and container.config != config_digest(spec):
            self.report(name, "recreating (configuration changed)")
            self.engines.remove_container(container, stop_timeout=stop_timeout)
            container, action = None, Action.RECREATED
        if container is None:
            self.report(name, "creating container")
            container = self.engines.create_container(
                spec, self._secrets(spec, node), node.placement
            )
            action = action if action is Action.RECREATED else Action.CREATED
        return container, action

    def _secrets(self, spec: ContainerSpec, node: Node) -> dict[str, str]:
        """The password files the bootstrap script of ``spec`` reads (a replica: only the
        replication password), and with TLS the node's certificate files; never on the
        command line."""
        creds = self._creds()
        known: dict[str, str | None] = {
            "superuser": creds.superuser_password,
            "replication": creds.replication_password,
            "app": creds.app_password,
            "pooler": creds.pooler_password,
        }
        if TLS_FILES[0] in spec.secrets:
            known |= creds.server_files(node)
        missing = [name for name in spec.secrets if known[name] is None]
        if missing:
            raise ProvisioningError(
                f"{spec.name}: no {' or '.join(missing)} password yet (run `shardctl up`)"
            )
        return {name: str(known[name]) for name in spec.secrets}

    def _creds(self) -> Credentials:
        if self.credentials is None:
            raise ProvisioningError("internal: provisioning needs credentials")
        return self.credentials

    # ------------------------------------------------------- PostgreSQL side

    def _connect(
        self, node: Node, dbname: str = "postgres", deadline: float = pg.DEADLINE
    ) -> psycopg.Connection[tuple[object, ...]]:
        return pg.connect(node, self._creds(), dbname, local_commit=True, deadline=deadline)

    def _configure_primary(self, primary: Node, replicas: Iterable[Node]) -> None:
        """Replication and application roles, database, schema and slots; each step a no-op
        when already done. The application role's grants come with the fence (``ddl.ensure``),
        once the catalog and fence objects exist."""
        self.report(primary.name, "configuring")
        spec = self.topology.spec
        creds = self._creds()
        with self._connect(primary) as conn:
            ensure_role(conn, creds.replication_user, creds.replication_password, REPLICATION_ROLE)
            if creds.app_password is not None:
                ensure_role(conn, creds.app_user, creds.app_password, APP_ROLE)
            if not conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (spec.database,)
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(spec.database)))
            for replica in replicas:
                create_slot(conn, replica)
        self.apply_schema(primary)

    def apply_schema(self, primary: Node) -> None:
        """Run the topology's schema file on a primary (it must be idempotent)."""
        path = self.topology.schema_path
        if path is None:
            return
        text = path.read_text(encoding="utf-8")
        # A user's file: a big index may take minutes.
        with self._connect(primary, self.topology.spec.database, SCHEMA_DEADLINE) as conn:
            try:
                conn.execute(text.encode())
            except psycopg.Error as exc:
                raise ProvisioningError(
                    f"{path}: applying the schema on {primary.name} failed: {pg.first_line(exc)}"
                ) from None

    def _reset_slot(self, primary: Node, replica: Node) -> None:
        """A replica cloned afresh gets a fresh slot, so no stale WAL is held for it."""
        with self._connect(primary) as conn:
            conn.execute(
                "SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
                "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND NOT active",
                (replica.slot,),
            )
            create_slot(conn, replica)

    # ------------------------------------------------------------ role changes

    def follow(self, replica: Node, deadline: float) -> None:
        """Point a running replica at its shard's acting primary (no restart: a reload).

        A node the catalog calls a replica that is not in recovery is a second writable
        primary: refused, never touched.
        """
        wanted = conninfo_to_dict(upstream_conninfo(self.topology, replica))

        def probe() -> psycopg.Connection[tuple[object, ...]]:
            self._fail_if_dead(replica)
            try:
                return self._connect(replica)
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None

        with self._wait(replica, probe, "it to answer", deadline) as conn:
            row = conn.execute(
                "SELECT pg_catalog.pg_is_in_recovery(), "
                "pg_catalog.current_setting('primary_conninfo'), "
                "pg_catalog.current_setting('primary_slot_name')"
            ).fetchone()
            assert row is not None
            in_recovery, current, slot = bool(row[0]), str(row[1]), str(row[2])
            if not in_recovery:
                raise CheckFailed(
                    f"{replica.shard}: {replica.name} accepts writes although the catalog says "
                    f"{replica.primary_name} is the primary (split brain); it was not changed"
                )
            if conninfo_to_dict(current) == wanted and slot == replica.slot:
                return
            self.report(replica.name, f"following {replica.primary_name}")
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                    sql.Literal(upstream_conninfo(self.topology, replica))
                )
            )
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_slot_name = {}").format(sql.Literal(replica.slot))
            )
            conn.execute("SELECT pg_catalog.pg_reload_conf()")

    def stop(self, node: Node) -> None:
        """Stop a node cleanly: its last WAL reaches its streaming replicas first."""
        container = self.engines.container(node)
        if container is not None:
            self.report(node.name, "stopping")
            self.engines.stop(container, timeout=60)

    def demote_on_disk(self, node: Node) -> bool:
        """Stop a node and leave ``standby.signal`` in its data directory, so that however it
        is started again (``docker start`` by hand included) it is a read-only standby.

        False when its engine cannot be reached; True when done or there is no container.
        """
        try:
            container = self.engines.container(node)
            if container is None:
                return True
            self.engines.stop(container, timeout=10)
            pgdata = container.environment.get("PGDATA")
            if not pgdata:
                raise ProvisioningError(f"{node.name}: its container has no PGDATA")
            self.engines.put_file(container, pgdata, "standby.signal", "")
        except DockerUnavailable:
            return False
        return True

    def rejoin_as_replica(self, node: Node, deadline: float) -> None:
        """A cleanly stopped former primary becomes a replica of its shard's acting primary."""
        primary = self.topology.node(node.primary_name)
        with self._connect(primary) as conn:
            create_slot(conn, node)
        self.demote_on_disk(node)
        container = self.engines.container(node)
        if container is None:
            raise ProvisioningError(f"{node.name}: no container to re-join")
        self.report(node.name, f"re-joining as a replica of {primary.name}")
        self.engines.start(container)
        self.follow(node, deadline)

    # -------------------------------------------------------------- waiting

    def _wait_ready(self, node: Node, deadline: float) -> None:
        self.report(node.name, "waiting to accept writes")

        def probe() -> None:
            self._fail_if_dead(node)
            try:
                with self._connect(node) as conn:
                    row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None
            if row is None or row[0]:
                raise NotYet("still in recovery")

        self._wait(node, probe, "it to accept writes", deadline)

    def _wait_streaming(self, node: Node, deadline: float) -> None:
        self.report(node.name, "waiting to stream")

        def probe() -> None:
            self._fail_if_dead(node)
            try:
                with self._connect(node) as conn:
                    row = conn.execute(
                        "SELECT status FROM pg_catalog.pg_stat_wal_receiver"
                    ).fetchone()
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None
            if row is None or row[0] != "streaming":
                raise NotYet(f"wal receiver {row[0] if row else 'not running'}")

        self._wait(node, probe, "it to stream from its primary", deadline)

    def _wait_pooler(self, node: Node, deadline: float) -> None:
        """Until the node's pooler answers on its admin console."""
        name = node.pooler_container
        self.report(name, "waiting to answer")

        def probe() -> None:
            container = self.engines.container(node, pooler=True)
            if container is None or self.engines.status(container) in ("exited", "dead"):
                state = container.state if container else "missing"
                raise ProvisioningError(
                    f"{name}: container {state} while waiting for it\n"
                    f"{self.engines.log_tail(container)}"
                )
            try:
                with poolers.admin_connect(node, self._creds(), timeout=2.0) as conn:
                    conn.execute("SHOW VERSION")
            except psycopg.Error as exc:
                raise NotYet(pg.first_line(exc)) from None

        def timed_out(detail: str) -> Exception:
            container = self.engines.container(node, pooler=True)
            return ProvisioningError(f"{name}: {detail}\n{self.engines.log_tail(container)}")

        wait_for(
            probe,
            timeout=max(1.0, deadline - time.monotonic()),
            what="its admin console to answer",
            on_timeout=timed_out,
            max_interval=0.5,
        )

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped()

    def _wait(self, node: Node, probe: Callable[[], T], what: str, deadline: float) -> T:
        def stoppable() -> T:
            self._check_stop()  # not NotYet: an interrupted wait ends at once
            return probe()

        def timed_out(detail: str) -> Exception:
            return ProvisioningError(
                f"{node.name}: {detail}\n{self.engines.log_tail(self.engines.container(node))}"
            )

        # Polled at least every half second: a node comes up within seconds, and backing off
        # to 2 s made `up` wait up to 2 s longer than the node did (measured: a replica on
        # another host, whose clone takes a little longer, often lost a whole step).
        return wait_for(
            stoppable,
            timeout=max(1.0, deadline - time.monotonic()),
            what=what,
            on_timeout=timed_out,
            max_interval=0.5,
        )

    def _fail_if_dead(self, node: Node) -> None:
        container = self.engines.container(node)
        if container is None or container.state in ("exited", "dead"):
            state = container.state if container else "missing"
            raise ProvisioningError(
                f"{node.name}: container {state} while waiting for it\n"
                f"{self.engines.log_tail(container)}"
            )

    # ---------------------------------------------------------------- down

    def down(self, *, volumes: bool = False) -> DownReport:
        """Remove the cluster's containers, then its networks; volumes only when asked."""
        report = DownReport()
        containers = self.engines.cluster_containers(self.topology)

        def remove(container: Container) -> str:
            self.engines.remove_container(container, stop_timeout=20)
            return container.name

        removed = fanout.each({c.id: partial(remove, c) for c in containers})
        report.containers = sorted(removed.values())
        report.networks = self.engines.remove_networks(self.topology)
        if volumes:
            report.volumes = self.engines.remove_volumes(self.topology)
        return report


SCHEMA_DEADLINE = 600.0
"""Seconds the topology's schema file may take on one primary."""

REPLICATION_ROLE = "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS"
"""The replication role: it streams WAL and nothing else."""
APP_ROLE = "LOGIN NOREPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT"
"""The application role: logs in; what it may touch is granted, object by object."""


def ensure_role(conn: psycopg.Connection[Any], name: str, password: str, options: str) -> None:
    """Create the role ``name`` with ``options`` (a constant above) and ``password``, or make an
    existing one match them."""
    exists = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (name,))
    verb = "ALTER" if exists.fetchone() else "CREATE"
    conn.execute(
        sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(name), sql.SQL(options), sql.Literal(password)
        )
    )


def create_slot(conn: psycopg.Connection[Any], replica: Node) -> None:
    """The replica's physical slot, reserving WAL from now; nothing when it exists."""
    conn.execute(
        "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true) "
        "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s)",
        (replica.slot, replica.slot),
    )


def synchronous_standby_names(topology: Topology, primary: Node) -> str:
    """The primary's ``synchronous_standby_names``: under ``replication: sync``, any one of
    the shard's other nodes (by their ``application_name``) must have a commit; else none."""
    return durability.standby_names(topology, primary)


def commit_waits_for_replicas(
    conn: psycopg.Connection[Any], topology: Topology, primary: Node
) -> None:
    """Make the primary ``conn`` reaches acknowledge commits as the shard's mode says (a reload,
    no restart); nothing when it already does."""
    wanted = synchronous_standby_names(topology, primary)
    row = conn.execute("SELECT pg_catalog.current_setting('synchronous_standby_names')").fetchone()
    if row is not None and row[0] == wanted:
        return
    conn.execute(
        sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(sql.Literal(wanted))
    )
    conn.execute("SELECT pg_catalog.pg_reload_conf()")
