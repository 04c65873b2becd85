"""The one place that talks to the Docker SDK: clients per endpoint, labels, error mapping.

Every resource shardctl creates carries ``shardctl.cluster=<name>``; every query for existing
resources filters on it, so shardctl never touches what it did not make.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from shardctl.errors import DockerUnavailable, ProvisioningError
from shardctl.topology import Node, Topology

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

# The Docker SDK (and requests under it) is imported on first use, not with shardctl: an
# application that only routes queries, and every command that never touches Docker, start
# a third of a second sooner.

LABEL_CLUSTER = "shardctl.cluster"
LABEL_SHARD = "shardctl.shard"
LABEL_NODE = "shardctl.node"
LABEL_ROLE = "shardctl.role"
LABEL_CONFIG = "shardctl.config"


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
        raise DockerUnavailable(
            f"{doing}: cannot reach the Docker engine ({_short(exc)}); "
            "start one (scripts/engine.sh) or set DOCKER_HOST"
        ) from None


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


class Engines:
    """Docker clients for the endpoints a topology uses, opened on first use."""

    def __init__(self) -> None:
        self._clients: dict[str | None, docker.DockerClient] = {}
        self._lock = threading.Lock()

    def client(self, endpoint: str | None = None) -> docker.DockerClient:
        """A client for ``endpoint`` (None: DOCKER_HOST or the default socket), pinged once."""
        import docker

        with self._lock:
            if endpoint not in self._clients:
                where = endpoint or os.environ.get("DOCKER_HOST") or "the default socket"
                with docker_errors(f"connecting to Docker at {where}"):
                    client = (
                        docker.DockerClient(base_url=endpoint, timeout=60)
                        if endpoint
                        else docker.from_env(timeout=60)
                    )
                    client.ping()
                self._clients[endpoint] = client
            return self._clients[endpoint]

    def for_node(self, node: Node) -> docker.DockerClient:
        """The client of the engine a node runs on."""
        return self.client(node.engine)

    def endpoints(self, topology: Topology) -> list[str | None]:
        """Every distinct engine endpoint the topology names."""
        return list(dict.fromkeys(node.engine for node in topology.nodes))

    def container(self, node: Node) -> Container | None:
        """The node's container, if it exists."""
        import docker.errors

        with docker_errors(f"looking up container {node.container}"):
            try:
                found: Container = self.for_node(node).containers.get(node.container)
            except docker.errors.NotFound:
                return None
        if found.labels.get(LABEL_CLUSTER) != node.cluster:
            raise ProvisioningError(
                f"a container named {node.container} exists but does not belong to cluster "
                f"{node.cluster!r}; remove or rename it"
            )
        return found

    def cluster_containers(self, topology: Topology) -> list[Container]:
        """Every container labelled with the cluster, on every engine, declared or not."""
        found: list[Container] = []
        for endpoint in self.endpoints(topology):
            with docker_errors("listing containers"):
                found += self.client(endpoint).containers.list(
                    all=True, filters={"label": f"{LABEL_CLUSTER}={topology.cluster}"}
                )
        return found

    def cluster_container_states(self, topology: Topology) -> dict[str, str]:
        """Name → state of every container labelled with the cluster, one list call per engine.

        Unlike :meth:`cluster_containers` it inspects no container, so probes stay cheap.
        """
        found: dict[str, str] = {}
        for endpoint in self.endpoints(topology):
            with docker_errors("listing containers"):
                rows: list[dict[str, Any]] = self.client(endpoint).api.containers(
                    all=True, filters={"label": f"{LABEL_CLUSTER}={topology.cluster}"}
                )
            for row in rows:
                names = row.get("Names") or []
                if names:
                    found[str(names[0]).lstrip("/")] = str(row.get("State") or "unknown")
        return found

    def close(self) -> None:
        """Close every client."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()


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
