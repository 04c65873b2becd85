"""The node steps of a role change: stop a primary cleanly, fence it on disk, re-join it as a
replica, point a replica at its shard's acting primary.

:mod:`shardctl.ops.rolechange` decides when (switchover, failover); ``up`` re-points replicas
with :meth:`RoleSteps.follow` too.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shardctl.config.topology import Node
from shardctl.db import admin
from shardctl.docker.specs import upstream_conninfo
from shardctl.errors import CheckFailed, DatabaseUnavailable, DockerUnavailable, ProvisioningError
from shardctl.ops.nodes import NodeWork
from shardctl.util.waiting import NotYet


class RoleSteps(NodeWork):
    """Stop, fence, re-join and re-point nodes of one cluster (the acting roles)."""

    def follow(self, replica: Node, deadline: float) -> None:
        """Point a running replica at its shard's acting primary (no restart: a reload).

        A node the catalog calls a replica that is not in recovery is a second writable
        primary: refused, never touched.
        """
        conninfo = upstream_conninfo(self.topology, replica)

        def probe() -> psycopg.Connection[tuple[object, ...]]:
            self._fail_if_dead(replica)
            try:
                return self._connect(replica)
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None

        with self._wait(replica, probe, "it to answer", deadline) as conn:
            in_recovery, current, slot = admin.upstream(conn)
            if not in_recovery:
                raise CheckFailed(
                    f"{replica.shard}: {replica.name} accepts writes although the catalog says "
                    f"{replica.primary_name} is the primary (split brain); it was not changed"
                )
            if current == conninfo_to_dict(conninfo) and slot == replica.slot:
                return
            self.report(replica.name, f"following {replica.primary_name}")
            admin.set_upstream(conn, conninfo, replica.slot)

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
            admin.create_slot(conn, node)
        self.demote_on_disk(node)
        container = self.engines.container(node)
        if container is None:
            raise ProvisioningError(f"{node.name}: no container to re-join")
        self.report(node.name, f"re-joining as a replica of {primary.name}")
        self.engines.start(container)
        self.follow(node, deadline)
