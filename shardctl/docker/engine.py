"""The one place that talks to the Docker SDK: clients per endpoint, labels, error mapping.

Every resource shardctl creates carries ``shardctl.cluster=<name>``; every query for existing
resources filters on it, so shardctl never touches what it did not make. Other modules describe
a container as a :class:`ContainerSpec` and call the small methods of :class:`Engines`; only
this module imports ``docker``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import tarfile
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardctl.config.topology import EngineTLS, Node, Placement, Topology
from shardctl.errors import DockerUnavailable, ProvisioningError

if TYPE_CHECKING:
    import docker
    import docker.tls

    # Re-exported so that callers can name the type without importing docker.
    from docker.models.containers import Container as Container

# The Docker SDK (and requests under it) is imported on first use, not with shardctl: an
# application that only routes queries, and every command that never touches Docker, start
# a third of a second sooner.

LABEL_CLUSTER = "shardctl.cluster"
LABEL_SHARD = "shardctl.shard"
LABEL_NODE = "shardctl.node"
LABEL_ROLE = "shardctl.role"
LABEL_CONFIG = "shardctl.config"
LABEL_POOLER = "shardctl.pooler"
"""On a PgBouncer container: the name of the node it fronts."""


def cluster_labels(cluster: str) -> dict[str, str]:
    """Labels every resource of a cluster carries."""
    return {LABEL_CLUSTER: cluster}


def node_labels(node: Node) -> dict[str, str]:
    """Labels of a node's container and volume."""
    return {
        LABEL_CLUSTER: node.cluster,
        LABEL_SHARD: node.shard,
        LABEL_NODE: node.name,
        LABEL_ROLE: node.role.value,
    }


def pooler_labels(node: Node) -> dict[str, str]:
    """Labels of the PgBouncer container in front of ``node`` (no node label: it is no node)."""
    return {LABEL_CLUSTER: node.cluster, LABEL_SHARD: node.shard, LABEL_POOLER: node.name}


@dataclass(frozen=True)
class Mount:
    """A named volume, or (``bind``) a host path, mounted into a container."""

    source: str
    target: str
    read_only: bool = False
    bind: bool = False


@dataclass(frozen=True)
class Port:
    """A container port published on a host address."""

    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class ContainerSpec:
    """Everything a container is made from; of its secrets only the file names."""

    name: str
    hostname: str
    image: str
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    user: str
    environment: Mapping[str, str]
    labels: Mapping[str, str]
    mounts: tuple[Mount, ...]
    ports: tuple[Port, ...]
    network: str
    secrets_dir: str
    """The folder the secret files are written to, before the container first starts."""
    secrets: tuple[str, ...]
    stop_signal: str = "SIGINT"
    restart: str = "unless-stopped"
    first_start_only: frozenset[str] = frozenset()
    """Environment names the container reads only on its first start (an empty volume): left
    out of the config digest, so changing them never recreates a running node."""


def _create_arguments(spec: ContainerSpec) -> dict[str, object]:
    """The SDK's ``containers.create`` arguments, labels excepted (they carry the digest)."""
    if any(mount.bind for mount in spec.mounts):
        raise ProvisioningError(f"internal: {spec.name}: host paths are for compose files only")
    return {
        "image": spec.image,
        "name": spec.name,
        "hostname": spec.hostname,
        "entrypoint": list(spec.entrypoint),
        "command": list(spec.command),
        "user": spec.user,
        "environment": dict(spec.environment),
        "ports": {f"{p.container_port}/tcp": (p.host_ip, p.host_port) for p in spec.ports},
        "volumes": {
            m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts
        },
        "network": spec.network,
        "stop_signal": spec.stop_signal,
        "restart_policy": {"Name": spec.restart},
    }


def config_digest(spec: ContainerSpec) -> str:
    """A short hash of the container's declared configuration (its ``shardctl.config`` label).

    It hashes exactly what is sent to Docker, so containers made by an earlier shardctl with the
    same configuration keep their digest and are not recreated.
    """
    arguments = _create_arguments(spec)
    environment = {k: v for k, v in spec.environment.items() if k not in spec.first_start_only}
    text = json.dumps(arguments | {"environment": environment}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _files_archive(folder: str, files: Mapping[str, str], owner: tuple[int, int]) -> bytes:
    """A tar of ``folder`` holding ``files`` (name → text), to unpack at the folder's parent:
    the folder mode 0700 and the files 0600, all owned by ``owner`` (uid, gid)."""
    buffer = io.BytesIO()
    base = posixpath.basename(folder.rstrip("/"))
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(base)
        info.type, info.mode = tarfile.DIRTYPE, 0o700
        info.uid, info.gid = owner
        tar.addfile(info)
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size, info.mode = len(data), 0o600
            info.uid, info.gid = owner
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def user_ids(passwd: str, user: str) -> tuple[int, int] | None:
    """The uid and gid of ``user`` (a name, ``uid`` or ``uid:gid``) in a passwd file's text."""
    uid, _, gid = user.partition(":")
    if uid.isdigit():
        return int(uid), int(gid) if gid.isdigit() else int(uid)
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[0] == uid and fields[2].isdigit() and fields[3].isdigit():
            return int(fields[2]), int(fields[3])
    return None


def _read_file(container: Container, path: str) -> str:
    """The text of one file in a (created or running) container."""
    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        extracted = tar.extractfile(member) if member is not None else None
        return extracted.read().decode("utf-8", "replace") if extracted is not None else ""


@contextlib.contextmanager
def docker_errors(doing: str) -> Iterator[None]:
    """Turn Docker SDK failures into shardctl errors that say what was being done."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except (requests.exceptions.ConnectionError, docker.errors.DockerException) as exc:
        if isinstance(exc, docker.errors.APIError):
            reason = exc.explanation or str(exc)
            raise ProvisioningError(f"{doing}: Docker refused: {reason}") from None
        error = DockerUnavailable(
            f"{doing}: the Docker engine does not answer; "
            "start one (scripts/engine.sh) or set DOCKER_HOST"
        )
        error.detail = _short(exc)
        raise error from None


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


Endpoint = Placement | str | None
"""An engine as the methods below take it: a node's placement, a bare DOCKER_HOST-style URL, or
None for $DOCKER_HOST (or the default socket)."""


def _url(engine: Endpoint) -> str | None:
    return engine.endpoint if isinstance(engine, Placement) else engine


def describe(engine: Endpoint) -> str:
    """An engine as error messages name it: its name and where it is."""
    url = _url(engine) or os.environ.get("DOCKER_HOST") or "the default socket"
    if isinstance(engine, Placement):
        return f"engine {engine.name} ({url}, host {engine.advertise})"
    return url


def tls_config(tls: EngineTLS) -> docker.tls.TLSConfig:
    """The Docker SDK's TLS settings for an engine; missing files come from $DOCKER_CERT_PATH
    (``ca.pem``, ``cert.pem``, ``key.pem``), as the docker CLI does."""
    import docker.tls

    folder = os.environ.get("DOCKER_CERT_PATH")

    def pick(given: Path | None, default: str) -> str | None:
        if given is not None:
            return str(given)
        return os.path.join(folder, default) if folder else None

    ca, cert, key = pick(tls.ca, "ca.pem"), pick(tls.cert, "cert.pem"), pick(tls.key, "key.pem")
    for what, path in (("ca", ca), ("cert", cert), ("key", key)):
        if path is not None and not os.path.isfile(path):
            raise ProvisioningError(f"TLS {what} file {path} does not exist")
    return docker.tls.TLSConfig(
        client_cert=(cert, key) if cert and key else None,
        ca_cert=ca if tls.verify else None,
        verify=(ca or True) if tls.verify else False,
    )


def make_client(engine: Endpoint, *, timeout: int = 60) -> docker.DockerClient:
    """A Docker client for ``engine``, not yet connected: TLS for tcp:// when the engine asks
    for it, the system ssh (its ~/.ssh/config) or paramiko for ssh://."""
    import docker

    url = _url(engine)
    if url is None:
        return docker.from_env(timeout=timeout)
    if isinstance(engine, Placement):
        tls = tls_config(engine.tls) if engine.tls is not None else False
        return docker.DockerClient(
            base_url=url,
            tls=tls,
            timeout=timeout,
            use_ssh_client=engine.ssh_client and url.startswith("ssh://"),
        )
    return docker.DockerClient(
        base_url=url, timeout=timeout, use_ssh_client=url.startswith("ssh://")
    )


class Engines:
    """Docker clients for the engines a topology uses, opened on first use."""

    def __init__(self) -> None:
        self._clients: dict[Endpoint, docker.DockerClient] = {}
        self._lock = threading.Lock()

    def client(self, endpoint: Endpoint = None) -> docker.DockerClient:
        """A client for ``endpoint`` (None: DOCKER_HOST or the default socket), pinged once."""
        with self._lock:
            if endpoint not in self._clients:
                with docker_errors(f"connecting to Docker at {describe(endpoint)}"):
                    client = make_client(endpoint)
                    client.ping()
                self._clients[endpoint] = client
            return self._clients[endpoint]

    def for_node(self, node: Node) -> docker.DockerClient:
        """The client of the engine a node runs on."""
        return self.client(node.placement if node.placement is not None else node.engine)

    def endpoints(self, topology: Topology) -> list[Endpoint]:
        """Every distinct engine the topology's nodes run on."""
        return list(dict.fromkeys(engine_of(node) for node in topology.nodes))

    def container(self, node: Node, *, pooler: bool = False) -> Container | None:
        """The node's container (``pooler``: its PgBouncer's), if it exists."""
        import docker.errors

        name = node.pooler_container if pooler else node.container
        with docker_errors(f"looking up container {name}"):
            try:
                found: Container = self.for_node(node).containers.get(name)
            except docker.errors.NotFound:
                return None
        if found.labels.get(LABEL_CLUSTER) != node.cluster:
            raise ProvisioningError(
                f"a container named {name} exists but does not belong to cluster "
                f"{node.cluster!r}; remove or rename it"
            )
        return found

    def cluster_containers(self, topology: Topology) -> list[Container]:
        """Every container labelled with the cluster, on every engine, declared or not."""
        found: list[Container] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("listing containers"):
                found += self.client(endpoint).containers.list(
                    all=True, filters=_labelled(topology.cluster)
                )
        return found

    def cluster_container_states(self, topology: Topology) -> dict[str, str]:
        """Name → state of every container labelled with the cluster, one list call per engine.

        Unlike :meth:`cluster_containers` it inspects no container, so probes stay cheap.
        DockerUnavailable when any engine does not answer.
        """
        found, lost = self.container_states_per_engine(topology)
        for error in lost.values():
            raise error
        return found

    def container_states_per_engine(
        self, topology: Topology
    ) -> tuple[dict[str, str], dict[Endpoint, DockerUnavailable]]:
        """Like :meth:`cluster_container_states`, every engine at once, and an engine that does
        not answer (a lost host) is returned with its error instead of failing the rest."""

        def listing(endpoint: Endpoint) -> list[dict[str, Any]]:
            with docker_errors(f"listing containers on {describe(endpoint)}"):
                rows: list[dict[str, Any]] = self.client(endpoint).api.containers(
                    all=True, filters=_labelled(topology.cluster)
                )
            return rows

        endpoints = self.endpoints(topology)
        with ThreadPoolExecutor(max_workers=max(1, len(endpoints))) as pool:
            futures = {e: pool.submit(listing, e) for e in endpoints}
        found: dict[str, str] = {}
        lost: dict[Endpoint, DockerUnavailable] = {}
        for endpoint, future in futures.items():
            error = future.exception()
            if isinstance(error, DockerUnavailable):
                lost[endpoint] = error
                continue
            for row in future.result():
                names = row.get("Names") or []
                if names:
                    found[str(names[0]).lstrip("/")] = str(row.get("State") or "unknown")
        return found, lost

    # ------------------------------------------------------------- images

    def image_volumes(self, image: str, endpoint: Endpoint = None) -> list[str] | None:
        """The volumes an image declares, sorted; None when the engine does not have it."""
        import docker.errors

        with docker_errors(f"inspecting image {image}"):
            try:
                found = self.client(endpoint).images.get(image)
            except docker.errors.ImageNotFound:
                return None
        return _declared_volumes(found.attrs)

    def pull(self, image: str, endpoint: Endpoint = None) -> list[str]:
        """Pull an image; the volumes it declares, sorted."""
        import docker.errors

        client = self.client(endpoint)
        try:
            found = client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise ProvisioningError(
                f"image {image} is not present and could not be pulled ({_short(exc)}); "
                "without a registry, build one offline with `scripts/engine.sh` and set "
                "`image: shardctl-test/postgres:15` in the topology"
            ) from None
        return _declared_volumes(found.attrs)

    # -------------------------------------------------- networks and volumes

    def ensure_network(self, name: str, labels: Mapping[str, str], endpoint: Endpoint) -> None:
        """Create a bridge network unless one of that name exists."""
        client = self.client(endpoint)
        with docker_errors(f"creating network {name}"):
            if not any(n.name == name for n in client.networks.list(names=[name])):
                client.networks.create(name, driver="bridge", labels=dict(labels))

    def ensure_volume(self, node: Node) -> bool:
        """Make the node's volume; True when it was created now (the node starts empty)."""
        import docker.errors

        client = self.for_node(node)
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

    def has_volume(self, node: Node) -> bool:
        """Whether the node's data volume exists (it may hold the shard's data)."""
        import docker.errors

        with docker_errors(f"inspecting volume {node.volume}"):
            try:
                self.for_node(node).volumes.get(node.volume)
            except docker.errors.NotFound:
                return False
        return True

    def remove_node(self, node: Node) -> None:
        """Remove a node's container and its data volume (a fenced node about to be re-cloned)."""
        import docker.errors

        container = self.container(node)
        if container is not None:
            self.remove_container(container, stop_timeout=10)
        with (
            docker_errors(f"removing volume {node.volume}"),
            contextlib.suppress(docker.errors.NotFound),
        ):
            self.for_node(node).volumes.get(node.volume).remove(force=True)

    def remove_networks(self, topology: Topology) -> list[str]:
        """Remove the cluster's networks on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("removing networks"):
                for network in self.client(endpoint).networks.list(
                    filters=_labelled(topology.cluster)
                ):
                    network.remove()
                    removed.append(str(network.name))
        return removed

    def shard_containers(self, topology: Topology, shard: str) -> list[Container]:
        """Every container of one shard of the cluster (by label), declared or not."""
        return [c for c in self.cluster_containers(topology) if c.labels.get(LABEL_SHARD) == shard]

    def shard_volumes(self, topology: Topology, shard: str) -> list[str]:
        """The names of one shard's data volumes (by label), on every engine."""
        found: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("listing volumes"):
                found += [
                    str(v.name)
                    for v in self.client(endpoint).volumes.list(
                        filters={"label": [f"{LABEL_CLUSTER}={topology.cluster}",
                                           f"{LABEL_SHARD}={shard}"]}
                    )
                ]  # fmt: skip
        return sorted(found)

    def remove_shard_volumes(self, topology: Topology, shard: str) -> list[str]:
        """Remove one shard's data volumes (its data) on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors(f"removing the volumes of {shard}"):
                for volume in self.client(endpoint).volumes.list(
                    filters={"label": [f"{LABEL_CLUSTER}={topology.cluster}",
                                       f"{LABEL_SHARD}={shard}"]}
                ):  # fmt: skip
                    volume.remove(force=True)
                    removed.append(str(volume.name))
        return sorted(removed)

    def remove_volumes(self, topology: Topology) -> list[str]:
        """Remove the cluster's volumes (its data) on every engine; their names."""
        removed: list[str] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("removing volumes"):
                for volume in self.client(endpoint).volumes.list(
                    filters=_labelled(topology.cluster)
                ):
                    volume.remove(force=True)
                    removed.append(str(volume.name))
        return removed

    # ---------------------------------------------------------- containers

    def create_container(
        self, spec: ContainerSpec, secrets: Mapping[str, str], endpoint: Endpoint
    ) -> Container:
        """Create (not start) a container, labelled with its config digest, secrets in place.

        The secret files are copied in before the first start, so they are never on a command
        line or in the container's environment; mode 0600, owned by the container's user.
        """
        if set(secrets) != set(spec.secrets):
            raise ProvisioningError(f"internal: {spec.name} needs secrets {spec.secrets}")
        arguments = _create_arguments(spec)
        labels = dict(spec.labels) | {LABEL_CONFIG: config_digest(spec)}
        with docker_errors(f"creating container {spec.name}"):
            container: Container = self.client(endpoint).containers.create(
                labels=labels,
                **arguments,  # type: ignore[arg-type]
            )
            # Owned by the server's user, readable by it alone: the image decides its uid.
            owner = user_ids(_read_file(container, "/etc/passwd"), spec.user)
            if owner is None:
                container.remove(force=True)
                raise ProvisioningError(
                    f"{spec.name}: the image {spec.image} has no user {spec.user!r}"
                )
            container.put_archive(
                posixpath.dirname(spec.secrets_dir.rstrip("/")) or "/",
                _files_archive(spec.secrets_dir, secrets, owner),
            )
        return container

    def status(self, container: Container) -> str:
        """The container's state as the engine sees it now (running, paused, exited…)."""
        with docker_errors(f"inspecting {container.name}"):
            container.reload()
        return str(container.status)

    def start(self, container: Container) -> None:
        """Start a stopped container, or unpause a paused one."""
        with docker_errors(f"starting {container.name}"):
            if container.status == "paused":
                container.unpause()
            else:
                container.start()

    def stop(self, container: Container, *, timeout: int) -> None:
        """Stop a container cleanly (SIGINT: PostgreSQL's fast shutdown), SIGKILL at ``timeout``."""
        with docker_errors(f"stopping {container.name}"):
            container.reload()
            if container.status in ("running", "paused", "restarting"):
                if container.status == "paused":
                    container.unpause()
                container.stop(timeout=timeout)

    def environment(self, container: Container) -> dict[str, str]:
        """The container's environment as it was created."""
        pairs = (container.attrs.get("Config") or {}).get("Env") or []
        return dict(str(pair).partition("=")[::2] for pair in pairs)

    def put_file(self, container: Container, folder: str, name: str, text: str) -> None:
        """Write one file into a container, running or stopped (volumes included), mode 0600."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
        with docker_errors(f"writing {name} into {container.name}"):
            container.put_archive(folder, buffer.getvalue())

    def remove_container(self, container: Container, *, stop_timeout: int) -> None:
        """Stop a running container cleanly (not a crash recovery later), then remove it."""
        with docker_errors(f"removing container {container.name}"):
            if container.status in ("running", "paused"):
                container.stop(timeout=stop_timeout)
            container.remove(force=True)

    def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


def engine_of(node: Node) -> Endpoint:
    """The engine a node runs on, as :class:`Engines` methods take it."""
    return node.placement if node.placement is not None else node.engine


def _labelled(cluster: str) -> dict[str, str | list[str] | bool]:
    """The list filter that selects a cluster's resources."""
    return {"label": f"{LABEL_CLUSTER}={cluster}"}


def _declared_volumes(attrs: dict[str, Any]) -> list[str]:
    return sorted((attrs.get("Config") or {}).get("Volumes") or {})


def log_tail(container: Container | None, lines: int = 12) -> str:
    """The last lines of a container's log, indented, for error messages."""
    import docker.errors

    if container is None:
        return "  (no container)"
    try:
        raw: Any = container.logs(tail=lines)
    except docker.errors.DockerException:
        return "  (log unavailable)"
    text = raw.decode("utf-8", "replace").rstrip() if isinstance(raw, bytes) else str(raw)
    return "\n".join(f"  | {line}" for line in text.splitlines()) or "  (empty log)"
