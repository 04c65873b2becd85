"""What crosses the Docker seam, as shardctl's own frozen records: the labels stamped on every
resource, a container's spec (what it is made from) and :class:`Container` (what the engine
says of one). No Docker SDK object ever leaves :mod:`shardctl.docker.engine`.

Every resource shardctl creates carries ``shardctl.cluster=<name>``; every query for existing
resources filters on it, so shardctl never touches what it did not make.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardctl.config.topology import Node
from shardctl.docker.clients import Endpoint

LABEL_CLUSTER = "shardctl.cluster"
LABEL_SHARD = "shardctl.shard"
LABEL_NODE = "shardctl.node"
LABEL_ROLE = "shardctl.role"
LABEL_CONFIG = "shardctl.config"
LABEL_POOLER = "shardctl.pooler"
"""On a PgBouncer container: the name of the node it fronts."""
LABEL_SPEC = "shardctl.spec"
"""What a container was made from (:func:`spec_record`), so that a change can be named."""
LABEL_PROBE = "shardctl.probe"
"""On a throw-away container that asks an image's server something (removed when done)."""


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
    host_paths: bool = False
    """Its ``bind`` mounts may be made by ``up`` too (the backup repository), not only written
    into a compose file."""
    log_max_size: str = "10m"
    log_max_files: int = 3
    """Log rotation (json-file): left out of the config digest, so a node made before is not
    recreated for it; it applies to containers made from then on."""
    dns_options: tuple[str, ...] = ("timeout:1", "attempts:1")
    """The resolver's options in the container (``/etc/resolv.conf``). A stopped container's
    name vanishes from Docker's DNS, which then asks the host's resolvers: where those are
    slow or unreachable, a replica's WAL receiver sat up to 20 s in a name lookup that nothing
    can interrupt, and a promotion waits for it (docs/failover.md). One second, one try.
    Left out of the config digest, like the log rotation."""


def create_arguments(spec: ContainerSpec) -> dict[str, object]:
    """The SDK's ``containers.create`` arguments, labels excepted (they carry the digest).

    Host paths are for compose files only, unless the spec says ``host_paths`` (the backup
    repository): another spec with one here is a bug (AssertionError).
    """
    if not spec.host_paths and any(mount.bind for mount in spec.mounts):
        raise AssertionError(f"{spec.name}: host paths are for compose files only")
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
        "log_config": {
            "Type": "json-file",
            "Config": {"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
        },
        "dns_opt": list(spec.dns_options),
    }


def config_digest(spec: ContainerSpec) -> str:
    """A short hash of the container's declared configuration (its ``shardctl.config`` label).

    It hashes exactly what is sent to Docker, so containers made by an earlier shardctl with the
    same configuration keep their digest and are not recreated.
    """
    arguments = create_arguments(spec)
    del arguments["log_config"], arguments["dns_opt"]
    environment = {k: v for k, v in spec.environment.items() if k not in spec.first_start_only}
    text = json.dumps(arguments | {"environment": environment}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def spec_record(spec: ContainerSpec) -> str:
    """What the container is made from, as JSON (its ``shardctl.spec`` label): image, ports,
    mounts, server arguments and environment; the bootstrap script by its hash."""
    arguments = create_arguments(spec)
    del arguments["log_config"], arguments["dns_opt"]
    entrypoint = json.dumps(arguments.pop("entrypoint"))
    environment = {k: v for k, v in spec.environment.items() if k not in spec.first_start_only}
    record = arguments | {
        "environment": environment,
        "entrypoint": hashlib.sha256(entrypoint.encode()).hexdigest()[:16],
    }
    return json.dumps(record, sort_keys=True)


@dataclass(frozen=True)
class Container:
    """A container as its engine described it when it was looked up (or made)."""

    id: str
    name: str
    state: str
    """created, running, paused, restarting, exited, dead, ..."""
    exit_code: int
    """Its last exit code (0 while it never ran)."""
    labels: Mapping[str, str] = field(compare=False)
    environment: Mapping[str, str] = field(compare=False)
    """Its environment as it was created."""
    endpoint: Endpoint = field(compare=False)
    """The engine it lives on."""
    image: str = field(default="", compare=False)
    """The image reference it was made from."""

    @property
    def config(self) -> str | None:
        """The config digest it was made with (:func:`config_digest`; None: not by shardctl)."""
        return self.labels.get(LABEL_CONFIG)
