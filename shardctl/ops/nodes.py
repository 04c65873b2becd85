"""What every step that makes or changes nodes shares: a node's container as its spec says,
connections as the superuser, and waiting (with a deadline) for a node to be ready.

:class:`NodeWork` is the base of :class:`shardctl.ops.up.Provisioner` (converging),
:class:`shardctl.ops.rejoin.RoleSteps` (the role-change steps) and
:class:`shardctl.ops.rolling.Roller` (rolling restarts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

import psycopg

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import admin, pg, poolers
from shardctl.docker.clients import Endpoint
from shardctl.docker.engine import Engines
from shardctl.docker.records import config_digest
from shardctl.docker.specs import TLS_FILES, container_spec, data_mount
from shardctl.errors import DatabaseUnavailable, ProvisioningError
from shardctl.ops.reporting import Reporter, quiet_reporter
from shardctl.util.text import lsn_text
from shardctl.util.waiting import NotYet, wait_for

if TYPE_CHECKING:
    from shardctl.docker.records import Container, ContainerSpec

T = TypeVar("T")


class Action(StrEnum):
    """What ``up`` did to a node."""

    CREATED = "created"
    RECREATED = "recreated"
    STARTED = "started"
    RESTARTED = "restarted"
    RELOADED = "reloaded"
    UNCHANGED = "unchanged"
    REMOVED = "removed"
    """A pooler the topology no longer declares."""


class Stopped(Exception):
    """``up`` was interrupted: raised in a shard's thread at its next step."""


class NodeWork:
    """Containers, connections and waits for one cluster's nodes."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials | None = None,
        reporter: Reporter = quiet_reporter,
    ) -> None:
        self.topology = topology
        self.engines = engines
        self.credentials = credentials
        self.report = reporter
        self._mounts: dict[Endpoint, str] = {}
        self._stop = threading.Event()
        """Set on Ctrl-C: each shard finishes the step in progress and starts no other."""

    # ----------------------------------------------------------- containers

    def mount(self, endpoint: Endpoint) -> str:
        """Where the data volume goes on ``endpoint``'s copy of the image."""
        if endpoint not in self._mounts:
            volumes = self.engines.image_volumes(self.topology.spec.image, endpoint)
            if volumes is None:
                raise ProvisioningError(
                    f"image {self.topology.spec.image} is not on {endpoint or 'the engine'}: "
                    "run `shardctl up`"
                )
            self._mounts[endpoint] = data_mount(volumes)
        return self._mounts[endpoint]

    def spec(self, node: Node) -> ContainerSpec:
        """The container ``up`` makes for ``node`` (on the volume mount its image asks for)."""
        return container_spec(self.topology, node, self.mount(node.placement))

    def _made(
        self,
        node: Node,
        name: str,
        spec: ContainerSpec,
        container: Container | None,
        action: Action,
        *,
        stop_timeout: int,
        replace: bool = True,
    ) -> tuple[Container, Action]:
        """``container`` (of ``node`` or its pooler, reported as ``name``) as ``spec`` says:
        recreated when its configuration changed (unless ``replace`` is false: a rolling
        change does it later), created when missing."""
        if replace and container is not None and container.config != config_digest(spec):
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
            raise AssertionError("provisioning needs credentials")
        return self.credentials

    def _connect(
        self, node: Node, dbname: str = "postgres", deadline: float = pg.DEADLINE
    ) -> psycopg.Connection[tuple[object, ...]]:
        return pg.connect(node, self._creds(), dbname, local_commit=True, deadline=deadline)

    # -------------------------------------------------------------- waiting

    def wait_ready(self, node: Node, deadline: float) -> None:
        """Until ``node`` accepts writes."""
        self.report(node.name, "waiting to accept writes")

        def probe() -> None:
            self._fail_if_dead(node)
            try:
                with self._connect(node) as conn:
                    recovering = admin.in_recovery(conn)
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None
            if recovering:
                raise NotYet("still in recovery")

        self._wait(node, probe, "it to accept writes", deadline)

    def wait_streaming(self, node: Node, deadline: float) -> None:
        """Until ``node`` streams from its upstream."""
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

    def wait_replayed(self, node: Node, lsn: int, deadline: float) -> None:
        """Until ``node`` has replayed its upstream's WAL up to ``lsn`` (bytes)."""
        self.report(node.name, f"waiting to replay up to {lsn_text(lsn)}")

        def probe() -> None:
            self._fail_if_dead(node)
            try:
                with self._connect(node) as conn:
                    row = conn.execute(
                        "SELECT pg_catalog.pg_wal_lsn_diff("
                        "pg_catalog.pg_last_wal_replay_lsn(), '0/0') >= %s",
                        (lsn,),
                    ).fetchone()
            except DatabaseUnavailable as exc:
                raise NotYet(str(exc)) from None
            if row is None or row[0] is not True:
                raise NotYet(f"not replayed up to {lsn_text(lsn)} yet")

        self._wait(node, probe, f"it to replay up to {lsn_text(lsn)}", deadline)

    def wait_pooler(self, node: Node, deadline: float) -> None:
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
