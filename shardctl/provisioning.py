"""Make the declared cluster real in Docker, and take it away again.

``up`` converges: per shard (shards in parallel) it makes the primary's volume and container,
waits until it accepts writes, configures it (replication role, database, schema, one physical
slot per replica), then makes each replica, which clones the primary with
``pg_basebackup -R -X stream -S <slot>`` on its first start. What already matches is left
alone; a container whose declared configuration changed is recreated on its volume.

Containers do not depend on an image's entrypoint: shardctl runs its own small bootstrap
script as the ``postgres`` user, so any image with the server binaries on PATH and a
``postgres`` user works (the official images, the locally built test image).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from shardctl import pg
from shardctl.credentials import Credentials
from shardctl.engine import (
    LABEL_CLUSTER,
    LABEL_CONFIG,
    Engines,
    cluster_labels,
    docker_errors,
    log_tail,
    node_labels,
)
from shardctl.errors import DatabaseUnavailable, ProvisioningError, ShardctlError
from shardctl.topology import Node, Role, Topology
from shardctl.waiting import NotYet, wait_for

if TYPE_CHECKING:
    from docker.models.containers import Container

SECRETS_DIR = "/tmp/shardctl"
DEFAULT_MOUNT = "/var/lib/postgresql"
"""Where the data volume goes in an image that declares no volume (owned by postgres there)."""
OFFICIAL_IMAGE_MOUNT = "/var/lib/postgresql/data"
"""The volume the official postgres images (up to 17) declare."""

# The container's whole life, as the postgres user. Values arrive as environment variables and
# the server's settings as arguments ("$@"): nothing is ever spliced into this text.
BOOTSTRAP = r"""set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    rm -rf "$PGDATA"
    if [ "$SHARDCTL_ROLE" = primary ]; then
        initdb -D "$PGDATA" -U "$SHARDCTL_SUPERUSER" --pwfile="$SHARDCTL_SECRETS/superuser" \
            --auth=scram-sha-256 --encoding=UTF8 --no-instructions
        {
            printf 'host replication %s all scram-sha-256\n' "$SHARDCTL_REPLICATION_USER"
            printf 'host all all all scram-sha-256\n'
        } >> "$PGDATA/pg_hba.conf"
        PGPASSWORD="$(cat "$SHARDCTL_SECRETS/superuser")"
        export PGPASSWORD
        pg_ctl -D "$PGDATA" -w -o "-c listen_addresses= -c unix_socket_directories=/tmp" start
        psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d postgres -q -v ON_ERROR_STOP=1 \
            -v role="$SHARDCTL_REPLICATION_USER" -v pw="$(cat "$SHARDCTL_SECRETS/replication")" \
            -v db="$SHARDCTL_DATABASE" <<'SQL'
CREATE ROLE :"role" WITH LOGIN REPLICATION PASSWORD :'pw';
CREATE DATABASE :"db";
SQL
        if [ -n "${SHARDCTL_SCHEMA:-}" ] && [ -s "$SHARDCTL_SCHEMA" ]; then
            psql -h /tmp -U "$SHARDCTL_SUPERUSER" -d "$SHARDCTL_DATABASE" -q -v ON_ERROR_STOP=1 \
                -f "$SHARDCTL_SCHEMA"
        fi
        pg_ctl -D "$PGDATA" -w -m fast stop
        unset PGPASSWORD
    else
        PGPASSWORD="$(cat "$SHARDCTL_SECRETS/replication")"
        export PGPASSWORD
        # The slot is normally made by shardctl; -C makes it when running without shardctl.
        until pg_basebackup -h "$SHARDCTL_PRIMARY_HOST" -p 5432 -U "$SHARDCTL_REPLICATION_USER" \
                -D "$PGDATA" -R -X stream -S "$SHARDCTL_SLOT" --checkpoint=fast \
              || { rm -rf "$PGDATA"; pg_basebackup -h "$SHARDCTL_PRIMARY_HOST" -p 5432 \
                -U "$SHARDCTL_REPLICATION_USER" -D "$PGDATA" -R -X stream -C -S "$SHARDCTL_SLOT" \
                --checkpoint=fast; }; do
            echo "shardctl: cloning from $SHARDCTL_PRIMARY_HOST failed; retrying" >&2
            rm -rf "$PGDATA"
            sleep 2
        done
        unset PGPASSWORD
    fi
fi
exec postgres -D "$PGDATA" "$@"
"""


class Action(StrEnum):
    """What ``up`` did to a node."""

    CREATED = "created"
    RECREATED = "recreated"
    STARTED = "started"
    UNCHANGED = "unchanged"


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


def _quiet(node: str, step: str) -> None:
    pass


def server_settings(topology: Topology) -> list[str]:
    """``-c name=value`` arguments every node's postgres runs with."""
    settings: dict[str, object] = {
        "listen_addresses": "*",
        "port": pg.CONTAINER_PORT,
        "unix_socket_directories": "/tmp",
        "password_encryption": "scram-sha-256",
        "wal_level": "logical",
        "max_wal_senders": 20,
        "max_replication_slots": 20,
        "wal_keep_size": "256MB",
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "track_commit_timestamp": "on",
    }
    settings.update(topology.spec.postgres)
    args: list[str] = []
    for name, value in settings.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value)
        args += ["-c", f"{name}={text}"]
    return args


class Provisioner:
    """Creates, repairs and removes one cluster's Docker resources."""

    def __init__(
        self,
        topology: Topology,
        engines: Engines,
        credentials: Credentials | None = None,
        reporter: Reporter = _quiet,
    ) -> None:
        self.topology = topology
        self.engines = engines
        self.credentials = credentials
        self.report = reporter
        self._mounts: dict[str | None, str] = {}

    # ----------------------------------------------------------------- up

    def up(self, *, wait: bool = True, timeout: float = 180.0) -> UpReport:
        """Create what is missing, start what is stopped; with ``wait``, until all stream."""
        started = time.monotonic()
        report = UpReport()
        for endpoint in self.engines.endpoints(self.topology):
            self._ensure_image(endpoint)
            self._ensure_network(endpoint)
        deadline = started + timeout
        shards = self.topology.spec.shards
        with ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="up") as pool:
            futures = [
                pool.submit(self._up_shard, shard.name, report, wait, deadline) for shard in shards
            ]
            errors = [f.exception() for f in futures]
        failures = [e for e in errors if e is not None]
        if failures:
            first = failures[0]
            if not isinstance(first, ShardctlError):
                raise first
            if len(failures) > 1:
                raise type(first)(f"{first}\n({len(failures) - 1} more shard(s) also failed)")
            raise first
        report.seconds = time.monotonic() - started
        return report

    def _up_shard(self, shard: str, report: UpReport, wait: bool, deadline: float) -> None:
        primary, *replicas = self.topology.shard_nodes(shard)
        report.actions[primary.name] = self._ensure_node(primary)
        self._wait_ready(primary, deadline)
        self._configure_primary(primary, replicas)
        for replica in replicas:
            report.actions[replica.name] = self._ensure_node(replica, primary)
        if wait:
            for replica in replicas:
                self._wait_streaming(replica, deadline)
        for node in (primary, *replicas):
            self.report(node.name, "ready" if wait or node is primary else "started")

    def _ensure_image(self, endpoint: str | None) -> None:
        import docker.errors

        image = self.topology.spec.image
        client = self.engines.client(endpoint)
        with docker_errors(f"inspecting image {image}"):
            try:
                found = client.images.get(image)
            except docker.errors.ImageNotFound:
                found = None
        if found is None:
            self.report("image", f"pulling {image}")
            try:
                found = client.images.pull(image)
            except docker.errors.DockerException as exc:
                raise ProvisioningError(
                    f"image {image} is not present and could not be pulled ({pg.first_line(exc)}); "
                    "without a registry, build one offline with `scripts/engine.sh` and set "
                    "`image: shardctl-test/postgres:15` in the topology"
                ) from None
        volumes = found.attrs.get("Config", {}).get("Volumes") or {}
        # Mounting on the image's own declared volume keeps Docker from adding an anonymous one.
        self._mounts[endpoint] = next(iter(sorted(volumes)), DEFAULT_MOUNT)

    def _ensure_network(self, endpoint: str | None) -> None:
        client = self.engines.client(endpoint)
        name = self.topology.network
        with docker_errors(f"creating network {name}"):
            existing = client.networks.list(names=[name])
            if not any(n.name == name for n in existing):
                client.networks.create(
                    name, driver="bridge", labels=cluster_labels(self.topology.cluster)
                )

    def _ensure_volume(self, node: Node) -> bool:
        """Make the node's volume; True when it was created now (the node starts empty)."""
        import docker.errors

        client = self.engines.for_node(node)
        with docker_errors(f"creating volume {node.volume}"):
            try:
                volume = client.volumes.get(node.volume)
            except docker.errors.NotFound:
                client.volumes.create(node.volume, labels=node_labels(node))
                return True
        if (volume.attrs.get("Labels") or {}).get(LABEL_CLUSTER) != node.cluster:
            raise ProvisioningError(
                f"a volume named {node.volume} exists but does not belong to cluster "
                f"{node.cluster!r}; remove or rename it"
            )
        return False

    def container_config(self, node: Node) -> dict[str, object]:
        """The keyword arguments that create ``node``'s container, config hash label included."""
        mount = self._mounts[node.engine]
        environment = {
            "PGDATA": f"{mount}/pgdata",
            "SHARDCTL_ROLE": node.role.value,
            "SHARDCTL_SECRETS": SECRETS_DIR,
            "SHARDCTL_SUPERUSER": self.topology.spec.credentials.superuser,
            "SHARDCTL_REPLICATION_USER": self.topology.spec.credentials.replication_user,
            "SHARDCTL_DATABASE": self.topology.spec.database,
        }
        if node.role is Role.REPLICA:
            environment |= {
                "SHARDCTL_PRIMARY_HOST": node.primary_container,
                "SHARDCTL_SLOT": node.slot,
            }
        config: dict[str, object] = {
            "image": self.topology.spec.image,
            "name": node.container,
            "hostname": node.name,
            "entrypoint": ["sh", "-c", BOOTSTRAP, "shardctl-node"],
            "command": server_settings(self.topology),
            "user": "postgres",
            "environment": environment,
            "ports": {f"{pg.CONTAINER_PORT}/tcp": (node.bind_address, node.host_port)},
            "volumes": {node.volume: {"bind": mount, "mode": "rw"}},
            "network": self.topology.network,
            "stop_signal": "SIGINT",
            "restart_policy": {"Name": "unless-stopped"},
        }
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        config["labels"] = node_labels(node) | {LABEL_CONFIG: digest}
        return config

    def _ensure_node(self, node: Node, primary: Node | None = None) -> Action:
        fresh_volume = self._ensure_volume(node)
        if primary is not None and fresh_volume:
            self._reset_slot(primary, node)
        config = self.container_config(node)
        labels = config["labels"]
        assert isinstance(labels, dict)
        container = self.engines.container(node)
        action = Action.UNCHANGED
        if container is not None and container.labels.get(LABEL_CONFIG) != labels[LABEL_CONFIG]:
            self.report(node.name, "recreating (configuration changed)")
            with docker_errors(f"removing outdated container {node.container}"):
                container.stop(timeout=30)
                container.remove()
            container, action = None, Action.RECREATED
        if container is None:
            self.report(node.name, "creating container")
            container = self._create(node, config)
            action = action if action is Action.RECREATED else Action.CREATED
        with docker_errors(f"starting {node.container}"):
            container.reload()
            if container.status == "paused":
                container.unpause()
                action = action if action is not Action.UNCHANGED else Action.STARTED
            elif container.status != "running":
                self.report(node.name, "starting")
                container.start()
                action = action if action is not Action.UNCHANGED else Action.STARTED
        return action

    def _create(self, node: Node, config: dict[str, object]) -> Container:
        client = self.engines.for_node(node)
        with docker_errors(f"creating container {node.container}"):
            container: Container = client.containers.create(**config)  # type: ignore[arg-type]
            container.put_archive("/tmp", self._secrets_archive())
        return container

    def _secrets_archive(self) -> bytes:
        """A tar of the password files the bootstrap script reads; never on the command line."""
        creds = self._creds()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            folder = tarfile.TarInfo("shardctl")
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            for name, secret in (
                ("superuser", creds.superuser_password),
                ("replication", creds.replication_password),
            ):
                data = secret.encode()
                info = tarfile.TarInfo(f"shardctl/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def _creds(self) -> Credentials:
        if self.credentials is None:
            raise ProvisioningError("internal: provisioning needs credentials")
        return self.credentials

    # ------------------------------------------------------- PostgreSQL side

    def _connect(
        self, node: Node, dbname: str = "postgres"
    ) -> psycopg.Connection[tuple[object, ...]]:
        return pg.connect(node, self._creds(), dbname)

    def _configure_primary(self, primary: Node, replicas: Iterable[Node]) -> None:
        """Replication role, database, schema and slots; each step a no-op when already done."""
        self.report(primary.name, "configuring")
        spec = self.topology.spec
        with self._connect(primary) as conn:
            role = sql.Identifier(spec.credentials.replication_user)
            password = sql.Literal(self._creds().replication_password)
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s",
                (spec.credentials.replication_user,),
            ).fetchone()
            verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
            conn.execute(
                sql.SQL("{} ROLE {} WITH LOGIN REPLICATION PASSWORD {}").format(
                    verb, role, password
                )
            )
            if not conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (spec.database,)
            ).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(spec.database)))
            for replica in replicas:
                conn.execute(
                    "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true) "
                    "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots "
                    "WHERE slot_name = %s)",
                    (replica.slot, replica.slot),
                )
        self.apply_schema(primary)

    def apply_schema(self, primary: Node) -> None:
        """Run the topology's schema file on a primary (it must be idempotent)."""
        path = self.topology.schema_path
        if path is None:
            return
        text = path.read_text(encoding="utf-8")
        with self._connect(primary, self.topology.spec.database) as conn:
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
            conn.execute(
                "SELECT pg_catalog.pg_create_physical_replication_slot(%s, true) "
                "WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots "
                "WHERE slot_name = %s)",
                (replica.slot, replica.slot),
            )

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

    def _wait(self, node: Node, probe: Callable[[], None], what: str, deadline: float) -> None:
        def timed_out(detail: str) -> Exception:
            return ProvisioningError(
                f"{node.name}: {detail}\n{log_tail(self.engines.container(node))}"
            )

        wait_for(
            probe, timeout=max(1.0, deadline - time.monotonic()), what=what, on_timeout=timed_out
        )

    def _fail_if_dead(self, node: Node) -> None:
        container = self.engines.container(node)
        if container is None or container.status in ("exited", "dead"):
            state = container.status if container else "missing"
            raise ProvisioningError(
                f"{node.name}: container {state} while waiting for it\n{log_tail(container)}"
            )

    # ---------------------------------------------------------------- down

    def down(self, *, volumes: bool = False) -> DownReport:
        """Remove the cluster's containers, then its networks; volumes only when asked."""
        report = DownReport()
        containers = self.engines.cluster_containers(self.topology)

        def remove(container: Container) -> str:
            with docker_errors(f"removing container {container.name}"):
                if container.status == "running":
                    container.stop(timeout=20)  # a clean shutdown, not a crash recovery later
                container.remove(force=True)
            return str(container.name)

        with ThreadPoolExecutor(max_workers=max(1, len(containers))) as pool:
            report.containers = sorted(pool.map(remove, containers))
        labelled = {"label": f"{LABEL_CLUSTER}={self.topology.cluster}"}
        for endpoint in self.engines.endpoints(self.topology):
            client = self.engines.client(endpoint)
            with docker_errors("removing networks"):
                for network in client.networks.list(filters=labelled):
                    network.remove()
                    report.networks.append(str(network.name))
            if volumes:
                with docker_errors("removing volumes"):
                    for volume in client.volumes.list(filters=labelled):
                        volume.remove(force=True)
                        report.volumes.append(str(volume.name))
        return report
