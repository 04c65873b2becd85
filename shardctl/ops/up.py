"""Make the declared cluster real in Docker: ``up``'s convergence.

``up`` converges: per shard (shards in parallel) it makes the primary's volume and container,
waits until it accepts writes, configures it (replication role, database, schema, one physical
slot per replica), then makes each replica, which clones the primary with
``pg_basebackup -X stream -S <slot>`` on its first start. What already matches is left
alone. A running container whose declared configuration changed is left to the rolling change
(:mod:`shardctl.ops.rolling`), which recreates it without taking its shard down; a stopped one
is recreated here on its volume.

Roles are the *acting* ones (the catalog's, see :mod:`shardctl.ops.rolechange`): a replica whose
upstream is not its shard's acting primary is re-pointed; a former primary fenced by a failover
(``rejoin``) is re-cloned from the new one; and a shard whose primary lost its volume while a
replica holds the data is refused -- ``up`` never creates an empty primary over real data.

What a node's container is comes from :func:`shardctl.docker.specs.container_spec`; every Docker
call goes through :mod:`shardctl.docker.engine`; the SQL through :mod:`shardctl.db.admin`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

from shardctl.config.credentials import Credentials
from shardctl.config.rules import MANAGED_SETTINGS
from shardctl.config.schema import Role
from shardctl.config.settings import value_text
from shardctl.config.topology import Node, Topology
from shardctl.db import admin
from shardctl.docker.clients import Endpoint
from shardctl.docker.engine import Engines
from shardctl.docker.records import LABEL_POOLER, cluster_labels
from shardctl.docker.specs import data_mount, pooler_spec
from shardctl.errors import CheckFailed, DatabaseUnavailable, ShardctlError
from shardctl.health import durability
from shardctl.ops.nodes import Action
from shardctl.ops.rejoin import RoleSteps
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.util import fanout


@dataclass
class UpReport:
    """What ``up`` did, per node, and how long it took."""

    actions: dict[str, Action] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    """Things found that ``up`` reports but does not change (e.g. topology vs ring catalog)."""
    shards: dict[str, str] = field(default_factory=dict)
    """Per shard changed by a rolling change: what was done, and the write pause."""
    notes: list[str] = field(default_factory=list)
    """What a command built on ``up`` has to say besides (add-shard: its base backup)."""


class Provisioner(RoleSteps):
    """Creates and repairs one cluster's nodes, their containers and poolers."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials | None = None,
        reporter: Reporter = quiet_reporter,
        *,
        rejoin: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> None:
        super().__init__(topology, engines, credentials, reporter)
        self.rejoin = frozenset(rejoin)
        """Nodes fenced by a failover: re-cloned from their shard's acting primary."""
        self.keep = frozenset(keep)
        """Running nodes whose outdated container the rolling change replaces, not ``up``."""
        self._cloned: set[str] = set()
        """Replicas whose volume this ``up`` made: cloned with today's ``primary_conninfo``."""
        self._prepared = False

    def up(self, *, wait: bool = True, timeout: float = 180.0) -> UpReport:
        """Create what is missing, start what is stopped; with ``wait``, until all stream."""
        started = time.monotonic()
        report = UpReport()
        self.prepare()
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

    def up_shard(self, shard: str, *, timeout: float = 120.0) -> UpReport:
        """``up`` of one shard only (the monitor re-joining a fenced former primary)."""
        report = UpReport()
        deadline = time.monotonic() + timeout
        self.prepare()
        self._up_shard(shard, report, True, deadline)
        return report

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
        self.wait_ready(primary, deadline)
        self._configure_primary(primary, replicas)
        self._settings(primary, report, deadline)
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
                self.wait_streaming(replica, deadline)
                self._settings(replica, report, deadline)
        with self._connect(primary) as conn:  # once its replicas are there
            wanted = durability.standby_names(self.topology, primary)
            admin.commit_waits_for_replicas(conn, wanted)
        for node in (primary, *replicas):
            if node.pooler_port is not None:
                self._check_stop()
                report.actions[f"{node.name}-pooler"] = self.ensure_pooler(node)
                if wait and report.actions[f"{node.name}-pooler"] is not Action.UNCHANGED:
                    self.wait_pooler(node, deadline)
        for node in (primary, *replicas):
            self.report(node.name, "ready" if wait or node is primary else "started")

    def _settings(self, node: Node, report: UpReport, deadline: float) -> None:
        """The topology's ``postgres:`` settings on ``node`` by ``ALTER SYSTEM`` and a reload.
        A primary made just now is restarted at once for those only a restart applies (nothing
        is connected to it yet); any other node with a restart pending is left to the rolling
        change."""
        wanted = {name: value_text(value) for name, value in self.topology.spec.postgres.items()}
        with self._connect(node) as conn:
            changed = admin.apply_settings(conn, wanted, MANAGED_SETTINGS)
            pending = admin.pending_restart(conn) if changed else []
        if not changed:
            return
        action = report.actions.get(node.name, Action.UNCHANGED)
        if pending and action in (Action.CREATED, Action.RECREATED) and node.role is Role.PRIMARY:
            self.report(node.name, f"restarting for {', '.join(pending)} (new, no clients yet)")
            container = self.engines.container(node)
            if container is not None:
                self.engines.restart(container, timeout=30)
            self.wait_ready(node, deadline)
        elif action is Action.UNCHANGED:
            self.report(node.name, f"reloaded: {', '.join(changed)}")
            report.actions[node.name] = Action.RELOADED

    def start_existing(self) -> int:
        """Start the cluster's stopped containers as they are; how many there are in all."""
        containers = self.engines.cluster_containers(self.topology)
        for container in containers:
            if self.engines.status(container) != "running":
                self.report(str(container.name), "starting")
                self.engines.start(container)
        return len(containers)

    def prepare(self) -> None:
        """Image and network on every engine, all engines at once (each host works alone)."""
        if self._prepared:
            return
        endpoints = self.engines.endpoints(self.topology)

        def prepare(endpoint: Endpoint) -> None:
            self._ensure_image(endpoint)
            self._ensure_network(endpoint)

        fanout.each({e: partial(prepare, e) for e in endpoints}, prefix="engine")
        self._prepared = True

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

    def _refuse_a_second_primary(self, primary: Node, replicas: list[Node]) -> None:
        """Starting a stopped primary while one of its replicas was promoted (a role change
        interrupted between promote and publish, or a promotion by hand) makes two."""
        container = self.engines.container(primary)
        if container is not None and self.engines.status(container) == "running":
            return
        for replica in replicas:
            try:
                with self._connect(replica) as conn:
                    recovering = admin.in_recovery(conn)
            except DatabaseUnavailable:
                continue
            if not recovering:
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
            with self._connect(primary) as conn:
                admin.reset_slot(conn, node)
        spec = self.spec(node)
        container = self.engines.container(node)
        action = Action.UNCHANGED
        if container is not None and fresh_volume:
            # Its first-start settings (initdb or clone, from where) may predate a role change.
            self.report(node.name, "recreating (its volume is new)")
            self.engines.remove_container(container, stop_timeout=10)
            container, action = None, Action.RECREATED
        running = container is not None and self.engines.status(container) == "running"
        container, action = self._made(
            node,
            node.name,
            spec,
            container,
            action,
            stop_timeout=30,
            replace=not (running and node.name in self.keep),
        )
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

    def _configure_primary(self, primary: Node, replicas: Iterable[Node]) -> None:
        """Replication and application roles, database, schema and slots; each step a no-op
        when already done. The application role's grants come with the fence (``ddl.ensure``),
        once the catalog and fence objects exist."""
        self.report(primary.name, "configuring")
        creds = self._creds()
        with self._connect(primary) as conn:
            admin.ensure_role(
                conn, creds.replication_user, creds.replication_password, admin.REPLICATION_ROLE
            )
            if creds.app_password is not None:
                admin.ensure_role(conn, creds.app_user, creds.app_password, admin.APP_ROLE)
            admin.ensure_database(conn, self.topology.spec.database)
            for replica in replicas:
                admin.create_slot(conn, replica)
        self.apply_schema(primary)

    def apply_schema(self, primary: Node) -> None:
        """Run the topology's schema file on a primary (it must be idempotent)."""
        path = self.topology.schema_path
        if path is None:
            return
        # A user's file: a big index may take minutes.
        with self._connect(primary, self.topology.spec.database, SCHEMA_DEADLINE) as conn:
            admin.apply_schema(conn, path, primary.name)


SCHEMA_DEADLINE = 600.0
"""Seconds the topology's schema file may take on one primary."""
