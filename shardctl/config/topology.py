"""Load and validate ``topology.yaml`` into frozen, typed models.

The file is parsed with PyYAML's composer so that every value keeps the line it came from;
the shape is checked in plain Python into the frozen models of :mod:`shardctl.config.schema`
(:mod:`shardctl.config.plain`), and by pydantic (:mod:`shardctl.config.shape`) only when that
check declines the file, to name the problem or take a value pydantic coerces; then
:func:`shardctl.config.rules.check_semantics` the rules that span several values (unique names,
port clashes, the schema file). Every problem becomes one :class:`~shardctl.errors.TopologyError`
line (:mod:`shardctl.config.messages`): ``topology.yaml:12: shards[1].replicas: ...``. The
runtime model is :class:`Topology` and its :class:`Node` records, each placed on one engine
(:class:`Placement`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlparse

from shardctl.config import plain, yamlsource
from shardctl.config.messages import Loc, compose, located, shown, yaml_error
from shardctl.config.rules import check_semantics
from shardctl.config.schema import (
    DEFAULT_POOLER_IMAGE,
    DEFAULT_TOPOLOGY,
    IMAGE_ENV,
    POOLER_IMAGE_ENV,
    PORT_STRIDE,
    TOPOLOGY_ENV,
    FailoverSpec,
    PoolerSpec,
    Replication,
    ReplicationSpec,
    Role,
    ShardSpec,
    SSLMode,
    TLSMode,
    TopologySpec,
)
from shardctl.errors import TopologyError

LOCAL_ENGINE = "local"
"""The engine of a node placed nowhere in particular: engines.local, else DOCKER_HOST."""
_LOOPBACK = ("127.", "localhost", "::1")


@dataclass(frozen=True)
class EngineTLS:
    """Resolved client TLS files of an engine (None: not given)."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    verify: bool


@dataclass(frozen=True)
class ServerTLS:
    """Resolved ``tls: required``: the user's files, or None for shardctl's generated ones."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    """Clients' root certificate: ``ca_file``, else ``cert_file``; None with generated ones."""

    @property
    def generated(self) -> bool:
        """Whether shardctl makes the CA and every node's certificate."""
        return self.cert is None


@dataclass(frozen=True)
class Placement:
    """The Docker engine (host) a node runs on, and how that host is reached."""

    name: str
    """The engine's name in ``engines:`` (``local`` for the default one)."""
    endpoint: str | None
    """DOCKER_HOST-style URL; None: $DOCKER_HOST or the default socket."""
    advertise: str
    """The address clients and other hosts reach this engine's published ports on."""
    bind_address: str
    """The address this engine's nodes publish their ports on."""
    tls: EngineTLS | None = None
    ssh_client: bool = True

    @property
    def label(self) -> str:
        """How status tables name the engine: its name, and its address when remote."""
        return (
            self.name
            if self.advertise.startswith(_LOOPBACK)
            else (f"{self.name} ({self.advertise})")
        )


@dataclass(frozen=True)
class Node:
    """One PostgreSQL server: a shard's primary or one of its replicas."""

    cluster: str
    shard: str
    name: str
    role: Role
    """The acting role: the catalog's, after a switchover or failover; else the declared one."""
    index: int
    """0 for the declared primary, i for replica i."""
    host_port: int
    placement: Placement
    """The engine (host) the node runs on: its name, endpoint, and the addresses its ports are
    published on and reached at."""
    primary_name: str
    sslmode: str | None = None
    """libpq ``sslmode`` of every connection to this node (None: libpq's default)."""
    pooler_port: int | None = None
    """Host port of the node's PgBouncer; None: the node has no pooler."""

    @property
    def pooler_container(self) -> str:
        """Container name of the node's PgBouncer."""
        return f"{self.cluster}-{self.name}-pooler"

    @property
    def container(self) -> str:
        """Container name, unique per cluster."""
        return f"{self.cluster}-{self.name}"

    @property
    def volume(self) -> str:
        """Data volume name."""
        return f"{self.cluster}-{self.name}-data"

    @property
    def declared_role(self) -> Role:
        """The role ``topology.yaml`` gives this node (``role`` is the acting one)."""
        return Role.PRIMARY if self.index == 0 else Role.REPLICA

    @property
    def primary_container(self) -> str:
        """Container name of this node's shard primary (itself for a primary)."""
        return f"{self.cluster}-{self.primary_name}"

    @property
    def slot(self) -> str:
        """Physical replication slot this replica streams through."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Topology:
    """A validated topology and where it came from."""

    spec: TopologySpec
    path: Path
    acting: tuple[tuple[str, str], ...] = ()
    """(shard, node) for each shard whose acting primary is not the declared one: the catalog's
    roles after a switchover or failover (see :meth:`with_acting`)."""

    def with_acting(self, primaries: Mapping[str, str]) -> Topology:
        """This topology with the acting primary of each shard as given (shard -> node name).

        Node names, ports and volumes stay as declared; only roles (and each replica's
        upstream) follow. Shards or nodes the topology does not declare are ignored.
        """
        acting = tuple(
            (shard.name, primaries[shard.name])
            for shard in self.spec.shards
            if primaries.get(shard.name, f"{shard.name}-primary") != f"{shard.name}-primary"
            and primaries[shard.name] in self._declared_names(shard)
        )
        return dataclasses.replace(self, acting=acting)

    def replication(self, shard_name: str) -> Replication:
        """The shard's replication mode: its own key, else the cluster's."""
        return self.replication_spec(shard_name).mode

    def has_sync(self) -> bool:
        """Whether any shard replicates synchronously (otherwise there is no durability
        policy to apply)."""
        return any(self.replication(s.name) is Replication.SYNC for s in self.spec.shards)

    def replication_spec(self, shard_name: str) -> ReplicationSpec:
        """The shard's replication mode, durability and degradation delay: its own key, else
        the cluster's (a bare ``sync`` is ``{mode: sync, durability: required}``)."""
        declared = self._shard(shard_name)[1].replication or self.spec.replication
        if isinstance(declared, ReplicationSpec):
            return declared
        return ReplicationSpec(mode=declared)

    def failover(self, shard_name: str) -> FailoverSpec:
        """The shard's failover policy: its own key, else the cluster's."""
        return self._shard(shard_name)[1].failover or self.spec.failover

    def acting_primary(self, shard_name: str) -> str:
        """Name of the node acting as ``shard_name``'s primary."""
        return dict(self.acting).get(shard_name, f"{shard_name}-primary")

    @staticmethod
    def _declared_names(shard: ShardSpec) -> set[str]:
        return {f"{shard.name}-primary"} | {
            f"{shard.name}-replica-{i}" for i in range(1, shard.replicas + 1)
        }

    @property
    def cluster(self) -> str:
        """The cluster name, used as the label and name prefix of every resource."""
        return self.spec.cluster

    @property
    def network(self) -> str:
        """Name of the cluster's Docker network."""
        return f"{self.cluster}-net"

    @property
    def schema_path(self) -> Path | None:
        """The schema file, resolved against the topology's directory."""
        if self.spec.schema_file is None:
            return None
        return self.path.parent / self.spec.schema_file

    @cached_property
    def tls(self) -> ServerTLS | None:
        """The servers' TLS when ``tls: required``; None when TCP may be plaintext."""
        declared = self.spec.tls
        if isinstance(declared, TLSMode):
            return ServerTLS() if declared is TLSMode.REQUIRED else None
        if declared.mode is TLSMode.OFF:
            return None

        def resolve(file: str | None) -> Path | None:
            return None if file is None else self.path.parent / Path(file).expanduser()

        cert = resolve(declared.cert_file)
        return ServerTLS(
            cert=cert, key=resolve(declared.key_file), ca=resolve(declared.ca_file) or cert
        )

    @cached_property
    def sslmode(self) -> str | None:
        """libpq ``sslmode`` of every connection: the declared one, else with ``tls: required``
        verify-full (shardctl's certificates name every address a node is reached on) or
        verify-ca (the user's may not); else None (libpq's default)."""
        if self.spec.sslmode is not None:
            return self.spec.sslmode.value
        tls = self.tls
        if tls is None:
            return None
        return SSLMode.VERIFY_FULL.value if tls.generated else SSLMode.VERIFY_CA.value

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """Every node in declared order: per shard, the primary then its replicas."""
        return tuple(
            node for i, shard in enumerate(self.spec.shards) for node in self._nodes_of(i, shard)
        )

    def pooler(self, shard_name: str) -> PoolerSpec | None:
        """The poolers of a shard: its own section, else the top-level one; None: no poolers."""
        spec = self._shard(shard_name)[1].pooler or self.spec.pooler
        return spec if spec is not None and spec.enabled else None

    def pooler_image(self, shard_name: str) -> str:
        """The PgBouncer image of a shard's poolers: the declared one, else
        ``$SHARDCTL_POOLER_IMAGE``, else :data:`DEFAULT_POOLER_IMAGE`."""
        spec = self.pooler(shard_name)
        declared = spec.image if spec is not None else None
        return declared or os.environ.get(POOLER_IMAGE_ENV) or DEFAULT_POOLER_IMAGE

    def pooled_nodes(self) -> tuple[Node, ...]:
        """Every node that has a pooler, in declared order."""
        return tuple(node for node in self.nodes if node.pooler_port is not None)

    def shard_nodes(self, shard_name: str) -> tuple[Node, ...]:
        """The acting primary, then the replicas, of one shard."""
        return self._nodes_of(*self._shard(shard_name))

    def _nodes_of(self, index: int, shard: ShardSpec) -> tuple[Node, ...]:
        # By index: looking each shard up by name made ten thousand shards quadratic.
        base = shard.port if shard.port is not None else self.spec.base_port + index * PORT_STRIDE
        primary = self.acting_primary(shard.name)
        placements = [self.placement(self.engine_of(shard, i)) for i in range(shard.replicas + 1)]
        pooler = shard.pooler or self.spec.pooler
        if pooler is not None and not pooler.enabled:
            pooler = None
        nodes = (
            Node(
                cluster=self.cluster,
                shard=shard.name,
                name=name,
                role=Role.PRIMARY if name == primary else Role.REPLICA,
                index=i,
                host_port=base + i,
                placement=placements[i],
                primary_name=primary,
                sslmode=self.sslmode,
                pooler_port=(
                    base + i + pooler.port_offset
                    if pooler is not None and (i == 0 or pooler.replicas)
                    else None
                ),
            )
            for i, name in enumerate(
                [f"{shard.name}-primary"]
                + [f"{shard.name}-replica-{r}" for r in range(1, shard.replicas + 1)]
            )
        )
        return tuple(sorted(nodes, key=lambda node: node.role is not Role.PRIMARY))

    @staticmethod
    def engine_of(shard: ShardSpec, index: int) -> str | None:
        """The engine key of node ``index`` of ``shard`` (0: primary): its replica_engines
        entry, else the shard's engine; None for the default engine."""
        if 1 <= index <= len(shard.replica_engines):
            return shard.replica_engines[index - 1]
        return shard.engine

    def placement(self, engine: str | None) -> Placement:
        """Where a node whose ``engine:`` key says ``engine`` runs (a name or an endpoint)."""
        spec = self.spec
        name = engine if engine is not None else LOCAL_ENGINE
        declared = spec.engines.get(name)
        if declared is None:
            # An endpoint written in place (shards[].engine: ssh://host), or no engine at all.
            url = engine if engine is not None and "://" in engine else None
            remote = url is not None and not url.startswith(("unix://", "npipe://"))
            host = (urlparse(url).hostname if remote and url else None) or spec.bind_address
            advertise = _reachable(host)
            bind = spec.bind_address if advertise.startswith(_LOOPBACK) else "0.0.0.0"
            return Placement(name=name, endpoint=url, advertise=advertise, bind_address=bind)
        url = declared.endpoint
        remote_host = None if url.startswith(("unix://", "npipe://")) else urlparse(url).hostname
        advertise = _reachable(declared.advertise or remote_host or spec.bind_address)
        bind = declared.bind_address or (
            spec.bind_address if advertise.startswith(_LOOPBACK) else "0.0.0.0"
        )
        tls = None
        if declared.tls is not None:

            def resolve(file: str | None) -> Path | None:
                return None if file is None else self.path.parent / file

            tls = EngineTLS(
                ca=resolve(declared.tls.ca),
                cert=resolve(declared.tls.cert),
                key=resolve(declared.tls.key),
                verify=declared.tls.verify,
            )
        return Placement(
            name=name,
            endpoint=url,
            advertise=advertise,
            bind_address=bind,
            tls=tls,
            ssh_client=declared.ssh_client,
        )

    def placements(self) -> tuple[Placement, ...]:
        """Every distinct engine the topology's nodes run on, in order of first use."""
        return tuple(dict.fromkeys(n.placement for n in self.nodes))

    def primaries(self) -> tuple[Node, ...]:
        """The primary of every shard, in declared order."""
        return tuple(n for n in self.nodes if n.role is Role.PRIMARY)

    def node(self, name: str) -> Node:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise TopologyError(f"{self.path}: no node named {name!r}")

    def _shard(self, name: str) -> tuple[int, ShardSpec]:
        for index, shard in enumerate(self.spec.shards):
            if shard.name == name:
                return index, shard
        raise TopologyError(f"{self.path}: no shard named {name!r}")


def _reachable(host: str) -> str:
    """A host clients can connect to: a wildcard bind address means this machine's loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def default_path() -> Path:
    """The topology path used when none is given: $SHARDCTL_TOPOLOGY or ./topology.yaml."""
    return Path(os.environ.get(TOPOLOGY_ENV, DEFAULT_TOPOLOGY))


def load(path: Path | str | None = None) -> Topology:
    """Read, parse and validate a topology file; raise TopologyError naming file and line."""
    path = Path(path) if path is not None else default_path()
    where = shown(path)
    try:
        with path.open("rb") as file:
            raw = file.read(yamlsource.MAX_BYTES + 1)
    except FileNotFoundError:
        raise TopologyError(
            f"{where}: no such topology file (pass -f PATH or set ${TOPOLOGY_ENV})"
        ) from None
    except OSError as exc:
        raise TopologyError(
            f"{where}: cannot read the topology file: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        text = yamlsource.decode(raw)
    except yamlsource.YamlProblem as problem:
        raise yaml_error(path, problem) from None
    return parse(text, path)


def parse(text: str, path: Path) -> Topology:
    """Validate topology text; ``path`` names it in errors and anchors relative paths."""
    data, lines = compose(text, path)
    try:
        spec = plain.build(TopologySpec, data)
    except plain.Decline:
        spec = _explained(data, path, lines)
    if os.environ.get(IMAGE_ENV):
        spec = spec.replace(image=os.environ[IMAGE_ENV])
    topology = Topology(spec=spec, path=path)
    problems = list(check_semantics(topology))
    if problems:
        where, message = problems[0]
        raise TopologyError(located(path, lines, where, message, len(problems) - 1))
    return topology


def _explained(data: dict[str, object], path: Path, lines: dict[Loc, int]) -> TopologySpec:
    """What pydantic makes of a file the plain check declined: its first problem as one line
    (raised), or the model when pydantic accepts it as it coerces values."""
    from pydantic import ValidationError

    from shardctl.config import shape
    from shardctl.config.messages import describe, rank, strict_numbers

    numbers = list(strict_numbers(data, shape.TopologySpec, ()))
    if numbers:
        where, message = numbers[0]
        raise TopologyError(located(path, lines, where, message, len(numbers) - 1))
    try:
        validated = shape.TopologySpec.model_validate(data)
    except ValidationError as exc:
        # One problem per location: pydantic reports a union's every member separately.
        described: dict[Loc, str] = {}
        for error in rank(exc.errors()):
            loc, text = describe(error)
            described.setdefault(loc, text)
        where, message = next(iter(described.items()))
        raise TopologyError(located(path, lines, where, message, len(described) - 1)) from None
    return plain.from_model(TopologySpec, validated)
