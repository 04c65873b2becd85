"""Load and validate ``topology.yaml`` into frozen, typed models.

The file is parsed with PyYAML's composer so that every value keeps the line it came from;
pydantic validates the shape, then :func:`_check_semantics` the rules that span several values
(unique names, port clashes, the schema file). Every problem becomes one
:class:`~shardctl.errors.TopologyError` line: ``topology.yaml:12: shards[1].replicas: ...``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache, cached_property
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from urllib.parse import urlparse, urlsplit

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError
from pydantic_core import ErrorDetails

from shardctl.config import yamlsource
from shardctl.errors import TopologyError

DEFAULT_TOPOLOGY = "topology.yaml"
TOPOLOGY_ENV = "SHARDCTL_TOPOLOGY"
IMAGE_ENV = "SHARDCTL_IMAGE"
"""Overrides the topology's image: how tests and offline machines use a locally built one."""
MAX_REPLICAS = 9
PORT_STRIDE = MAX_REPLICAS + 1
"""Ports per shard: the primary on the shard's port, replica i on port + i."""

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Role(StrEnum):
    """What a node is: declared in topology.yaml, or acting (after a switchover or failover)."""

    PRIMARY = "primary"
    REPLICA = "replica"


class Replication(StrEnum):
    """How a shard's primary acknowledges a commit."""

    ASYNC = "async"
    """On its own disk: fast; a failover may lose the last acknowledged writes."""
    SYNC = "sync"
    """Once at least one replica has it too: a failover loses nothing acknowledged."""


class RingAlgorithm(StrEnum):
    """How keys are placed on the ring (see :mod:`shardctl.ring`)."""

    MD5 = "md5"
    BALANCED = "balanced"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RingSpec(_Model):
    """The hash ring's algorithm and virtual nodes per shard."""

    algorithm: RingAlgorithm = Field(
        default=RingAlgorithm.BALANCED,
        description="'balanced' (default for new clusters) or 'md5' (the classic ring).",
    )
    vnodes: int = Field(default=150, ge=1, le=10000, description="Virtual nodes per shard (md5).")


class TableSpec(_Model):
    """A sharded table and the column whose value picks its shard."""

    name: Identifier
    key: Identifier = Field(default="id", description="The shard key column.")


class CredentialsSpec(_Model):
    """Where passwords come from; never the passwords themselves."""

    password_env: str | None = Field(
        default=None, description="Environment variable holding the superuser password."
    )
    password_file: str | None = Field(
        default=None, description="File holding the superuser password (relative to topology)."
    )
    secrets_file: str | None = Field(
        default=None,
        description="Where generated passwords are kept (default: see docs/topology.md).",
    )
    superuser: Identifier = "postgres"
    replication_user: Identifier = "replicator"
    app_user: Identifier = Field(
        default="app",
        description="The application role the Router and `load` use (not a superuser).",
    )
    app_password_env: str | None = Field(
        default=None, description="Environment variable holding the application role's password."
    )
    app_password_file: str | None = Field(
        default=None,
        description="File holding the application role's password (relative to topology).",
    )


class HealthSpec(_Model):
    """Thresholds for replication checks; the CLI options override them."""

    max_lag_bytes: int = Field(default=16 * 1024 * 1024, ge=0)
    max_lag_seconds: float = Field(default=60.0, ge=0)
    canary_timeout: float = Field(default=10.0, gt=0)
    probe_timeout: float = Field(default=5.0, gt=0)


class Spread(StrEnum):
    """Where a shard's replicas may be placed relative to its primary."""

    NONE = "none"
    """Anywhere, the primary's engine included."""
    HOSTS = "hosts"
    """Never on the engine of their declared primary (host anti-affinity)."""


class SSLMode(StrEnum):
    """libpq's ``sslmode`` for every connection shardctl, Routers and replicas make."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class TLSMode(StrEnum):
    """Whether the servers require TLS on every TCP connection."""

    OFF = "off"
    """Plaintext TCP (scram-sha-256 still never sends a password); ``sslmode`` is libpq's."""
    REQUIRED = "required"
    """``ssl=on``, ``hostssl`` only, and every client verifies the server against the CA."""


class TLSSpec(_Model):
    """``tls:`` with the server's own certificate instead of shardctl's generated ones."""

    mode: TLSMode = Field(default=TLSMode.REQUIRED, description="off or required.")
    cert_file: str | None = Field(
        default=None,
        description="Server certificate (PEM) every node presents (relative to the topology) "
        "[default: one per node, signed by a CA shardctl makes for the cluster].",
    )
    key_file: str | None = Field(
        default=None, description="The certificate's unencrypted private key (PEM)."
    )
    ca_file: str | None = Field(
        default=None,
        description="CA certificate clients verify the server's with [default: cert_file, "
        "a self-signed certificate being its own CA].",
    )


def _tls_form(value: object) -> str:
    return "files" if isinstance(value, Mapping | TLSSpec) else "mode"


TLSField = Annotated[
    Annotated[TLSMode, Tag("mode")] | Annotated[TLSSpec, Tag("files")], Discriminator(_tls_form)
]
"""``tls: required`` or ``tls: {cert_file: ..., ...}``; errors name ``tls.mode`` or the key."""


class EngineTLSSpec(_Model):
    """Client TLS for a ``tcp://`` Docker endpoint (files relative to the topology)."""

    ca: str | None = Field(default=None, description="CA certificate the engine's is checked by.")
    cert: str | None = Field(default=None, description="Client certificate.")
    key: str | None = Field(default=None, description="Client key.")
    verify: bool = Field(default=True, description="Check the engine's certificate against ca.")


class EngineSpec(_Model):
    """A Docker engine (a host) nodes can be placed on."""

    endpoint: str = Field(
        pattern=r"^(unix|tcp|ssh|http|https|npipe)://.+",
        description="DOCKER_HOST-style endpoint: unix:///path, tcp://host:2376, ssh://user@host.",
    )
    tls: EngineTLSSpec | None = Field(
        default=None,
        description="TLS for tcp:// (files, else $DOCKER_CERT_PATH); none: plain or ssh.",
    )
    advertise: str | None = Field(
        default=None,
        min_length=1,
        description="Address other hosts and clients reach its published ports on "
        "[default: the endpoint's host; a unix:// engine: the top-level bind_address].",
    )
    bind_address: str | None = Field(
        default=None,
        min_length=1,
        description="Where its nodes' ports are published [default: 0.0.0.0 when advertised "
        "on a non-loopback address, else the top-level bind_address].",
    )
    ssh_client: bool = Field(
        default=True,
        description="ssh:// through the system ssh (its ~/.ssh/config); false: paramiko.",
    )


class PoolMode(StrEnum):
    """When PgBouncer gives a server connection back to its pool."""

    TRANSACTION = "transaction"
    """At the end of each transaction: many clients share few server connections."""
    SESSION = "session"
    """When the client disconnects: session state (SET, prepared statements) is kept."""


DEFAULT_POOLER_IMAGE = "edoburu/pgbouncer:latest"
"""The PgBouncer image users get by default; tests use a local one (``SHARDCTL_POOLER_IMAGE``)."""
POOLER_IMAGE_ENV = "SHARDCTL_POOLER_IMAGE"
"""Overrides the pooler image, like ``SHARDCTL_IMAGE`` the server's."""


class PoolerSpec(_Model):
    """A PgBouncer in front of each node (top level; a shard's own section overrides it)."""

    enabled: bool = Field(default=True, description="false: no poolers (for one shard).")
    image: str | None = Field(
        default=None,
        min_length=1,
        description=f"PgBouncer image (else $SHARDCTL_POOLER_IMAGE, else {DEFAULT_POOLER_IMAGE}).",
    )
    mode: PoolMode = Field(default=PoolMode.TRANSACTION, description="transaction or session.")
    pool_size: int = Field(
        default=20, ge=1, le=10000, description="Server connections per database and user."
    )
    max_client_conn: int = Field(
        default=1000, ge=1, le=1_000_000, description="Client connections each pooler accepts."
    )
    replicas: bool = Field(default=True, description="Replicas get a pooler too.")
    port_offset: int = Field(
        default=1000,
        ge=1,
        le=60000,
        description="A node's pooler is published on the node's port + this.",
    )
    max_waiting: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="Waiting clients past which status and verify complain.",
    )
    router: bool = Field(
        default=False,
        description="Routers connect through the poolers unless told otherwise (top level).",
    )


class ShardSpec(_Model):
    """One shard: a primary and its streaming replicas."""

    name: Name
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    port: Port | None = Field(
        default=None, description="Host port of the primary; replica i gets port + i."
    )
    engine: str | None = Field(
        default=None,
        min_length=1,
        description="Name of an engine (engines:) for this shard's nodes, or a Docker endpoint; "
        "default: engines.local if declared, else DOCKER_HOST.",
    )
    replica_engines: tuple[str, ...] = Field(
        default=(),
        description="Engine of replica 1, 2, ... (overrides engine for each one listed).",
    )
    replication: Replication | None = Field(
        default=None, description="async or sync for this shard [default: the top-level key]."
    )
    pooler: PoolerSpec | None = Field(
        default=None,
        description="This shard's poolers [default: the top-level pooler: section, if any].",
    )


class TopologySpec(_Model):
    """The whole declared cluster, as written in topology.yaml."""

    cluster: Name
    image: str = Field(default="postgres:17", min_length=1)
    database: Identifier = "app"
    base_port: Port = Field(default=54320, description="Shard k's primary listens on base + 10k.")
    bind_address: str = Field(
        default="127.0.0.1", description="Host address ports are published on."
    )
    engines: dict[Name, EngineSpec] = Field(
        default_factory=dict,
        description="Named Docker engines (hosts) shards and replicas are placed on.",
    )
    spread: Spread = Field(
        default=Spread.NONE,
        description="'hosts': a replica never shares its declared primary's engine.",
    )
    tls: TLSField = Field(
        default=TLSMode.OFF,
        description="'required': the servers accept TCP only over TLS, with certificates "
        "shardctl makes per cluster, or the files given (cert_file, key_file, ca_file).",
    )
    sslmode: SSLMode | None = Field(
        default=None,
        description="libpq sslmode for every connection, replication included [default: "
        "verify-full with tls: required (verify-ca with your own cert_file), else libpq's].",
    )
    allow_plaintext: bool = Field(
        default=False,
        description="Accept a non-loopback bind_address without TLS (scram only, no encryption).",
    )
    ring: RingSpec = RingSpec()
    replication: Replication = Field(
        default=Replication.ASYNC,
        description="async (default) or sync: a commit waits for one replica (see docs).",
    )
    schema_file: str | None = Field(
        default=None, alias="schema", description="SQL applied on every primary."
    )
    tables: tuple[TableSpec, ...] = ()
    credentials: CredentialsSpec = CredentialsSpec()
    health: HealthSpec = HealthSpec()
    postgres: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra postgresql.conf parameters for every node."
    )
    pooler: PoolerSpec | None = Field(
        default=None, description="A PgBouncer per node (see docs/topology.md#poolers)."
    )
    shards: tuple[ShardSpec, ...] = Field(min_length=1)


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
    bind_address: str
    engine: str | None
    """Docker endpoint of the node's engine (``placement.endpoint``)."""
    primary_name: str
    placement: Placement | None = None
    """The engine the node runs on; None only for nodes built by hand (the local engine)."""
    sslmode: str | None = None
    """libpq ``sslmode`` of every connection to this node (None: libpq's default)."""
    pooler_port: int | None = None
    """Host port of the node's PgBouncer; None: the node has no pooler."""

    @property
    def pooler_container(self) -> str:
        """Container name of the node's PgBouncer."""
        return f"{self.cluster}-{self.name}-pooler"

    @property
    def engine_name(self) -> str:
        """Name of the engine the node runs on (``local`` by default)."""
        return self.placement.name if self.placement is not None else LOCAL_ENGINE

    @property
    def advertise(self) -> str:
        """The address that reaches the node's published port from clients and other hosts."""
        if self.placement is not None:
            return self.placement.advertise
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

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
        shard = self._shard(shard_name)[1]
        return shard.replication or self.spec.replication

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
                bind_address=placements[i].bind_address,
                engine=placements[i].endpoint,
                primary_name=primary,
                placement=placements[i],
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
        return tuple(dict.fromkeys(n.placement for n in self.nodes if n.placement is not None))

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
    shown = _shown(path)
    try:
        with path.open("rb") as file:
            raw = file.read(yamlsource.MAX_BYTES + 1)
    except FileNotFoundError:
        raise TopologyError(
            f"{shown}: no such topology file (pass -f PATH or set ${TOPOLOGY_ENV})"
        ) from None
    except OSError as exc:
        raise TopologyError(
            f"{shown}: cannot read the topology file: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        text = yamlsource.decode(raw)
    except yamlsource.YamlProblem as problem:
        raise _yaml_error(path, problem) from None
    return parse(text, path)


def parse(text: str, path: Path) -> Topology:
    """Validate topology text; ``path`` names it in errors and anchors relative paths."""
    data, lines = _compose(text, path)
    numbers = list(_strict_numbers(data, TopologySpec, ()))
    if numbers:
        where, message = numbers[0]
        raise TopologyError(_located(path, lines, where, message, len(numbers) - 1))
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        # One problem per location: pydantic reports a union's every member separately.
        described: dict[Loc, str] = {}
        for error in _rank(exc.errors()):
            loc, text = _describe(error)
            described.setdefault(loc, text)
        where, message = next(iter(described.items()))
        raise TopologyError(_located(path, lines, where, message, len(described) - 1)) from None
    if os.environ.get(IMAGE_ENV):
        spec = spec.model_copy(update={"image": os.environ[IMAGE_ENV]})
    topology = Topology(spec=spec, path=path)
    problems = list(_check_semantics(topology))
    if problems:
        where, message = problems[0]
        raise TopologyError(_located(path, lines, where, message, len(problems) - 1))
    return topology


Loc = yamlsource.Loc

EXTENSION_PREFIX = "x-"
"""Top-level keys starting with this are ignored, as in compose files: a place for anchors."""
MAX_MESSAGE = 2000
"""Longest error message: whatever the file holds, the answer stays a line or two."""


def _compose(text: str, path: Path) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Parse YAML into plain data plus the 1-based line of every mapping key and item."""
    try:
        data, lines = yamlsource.load(text)
    except yamlsource.YamlProblem as problem:
        raise _yaml_error(path, problem) from None
    if data is None:
        raise TopologyError(
            f"{_shown(path)}:1: the file is empty; "
            "expected a mapping with at least 'cluster' and 'shards'"
        )
    if not isinstance(data, dict):
        got = "a list" if isinstance(data, list) else f"the value {yamlsource.short(data)}"
        raise TopologyError(
            f"{_shown(path)}:{lines.get((), 1)}: expected a mapping of topology keys "
            f"(cluster, shards, ...), got {got}"
        )
    return {k: v for k, v in data.items() if not k.startswith(EXTENSION_PREFIX)}, lines


def _yaml_error(path: Path, problem: yamlsource.YamlProblem) -> TopologyError:
    """A reader problem as ``file:line: message (column c)``: the column where it helps."""
    if problem.line is None:
        return TopologyError(_clamp(f"{_shown(path)}: {problem.message}"))
    column = f" (column {problem.column})" if problem.column and problem.column > 1 else ""
    return TopologyError(_clamp(f"{_shown(path)}:{problem.line}: {problem.message}{column}"))


def _shown(path: Path) -> str:
    """The path as messages name it: whole, unless it is absurdly long."""
    text = str(path)
    return text if len(text) <= 200 else f"{text[:100]}...{text[-60:]}"


def _clamp(message: str) -> str:
    """At most two lines and :data:`MAX_MESSAGE` characters, whatever went into ``message``."""
    lines = message.splitlines()[:2]
    out = "\n".join(
        line if len(line) <= MAX_MESSAGE // 2 else line[: MAX_MESSAGE // 2] + "..."
        for line in lines
    )
    return out


def _rank(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Most telling first: an unknown key (likely a typo) explains a 'missing' one elsewhere."""
    # pydantic also reports a list as too short when one of its items failed; drop that echo.
    errors = [
        e
        for e in errors
        if not (
            e["type"] == "too_short"
            and any(o["loc"][: len(e["loc"])] == e["loc"] and o is not e for o in errors)
        )
    ]
    return sorted(errors, key=lambda e: e["type"] != "extra_forbidden")


def _describe(error: ErrorDetails) -> tuple[Loc, str]:
    """Turn one pydantic error into (location, message a person can act on)."""
    loc: Loc = tuple(error["loc"])
    if loc[:2] in (("tls", "mode"), ("tls", "files")):
        loc = ("tls", *loc[2:])  # the form's tag (see TLSField), not a key of the file
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = (
            sorted(f.alias or name for name, f in parent.model_fields.items()) if parent else []
        )
        hint = difflib.get_close_matches(str(loc[-1])[:100], allowed, n=1)
        suggestion = (
            f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(allowed)}"
        )
        return loc, f"unknown key {_short(loc[-1])}{suggestion}"
    if kind == "missing":
        return loc, "this key is required"
    if loc and loc[0] == "credentials":
        # Whatever is written under credentials may be a password put in the wrong place.
        return loc, f"{error['msg'].lower()} (the value is not shown)"
    if loc and loc[0] == "postgres" and len(loc) > 2:
        # pydantic tries each type of the union in turn and names it in the location.
        return loc[:2], f"a server setting is text, a number or a boolean (got {_kind(given)})"
    if kind == "string_pattern_mismatch":
        return loc, (
            f"{_short(given)} is not a valid name (expected lowercase letters, digits and '-', "
            "starting with a letter, at most 40)"
            if loc and _is_name(loc)
            else f"{_short(given)} is not a valid SQL identifier (letters, digits, '_')"
        )
    if kind == "too_short" and loc == ("shards",):
        return loc, "at least one shard is required"
    if isinstance(given, bool) and kind == "string_type":
        return loc, f"expected text, got a boolean ({_BOOLEANS})"
    if given is None:
        return loc, error["msg"]
    if isinstance(given, bool):
        return loc, f"{error['msg'].lower()} (got a boolean: {_BOOLEANS})"
    return loc, f"{error['msg'].lower()} (got {_short(given)})"


_BOOLEANS = "YAML reads unquoted yes/no/on/off/true/false as booleans; quote the value"


def _short(value: object) -> str:
    """A value as messages quote it: a short excerpt, lists and mappings only named."""
    if isinstance(value, dict | list | tuple):
        return _kind(value)
    return yamlsource.short(value)


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if value is None:
        return "null"
    return yamlsource.short(value)


def _strict_numbers(data: object, model: type[BaseModel], loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Booleans where a number is expected, and numbers that are not finite.

    pydantic's lax mode reads True as 1, and YAML 1.1 reads ``yes`` as True, so ``replicas:
    yes`` would mean one replica; strict mode would also refuse the enums' strings, hence this
    walk over the data alongside the models' annotations.
    """
    if not isinstance(data, dict):
        return
    plan = _number_plan(model)
    for key, value in data.items():
        if key not in plan:
            continue
        expected, models = plan[key]
        here = (*loc, key)
        if expected and isinstance(value, bool):
            yield here, f"expected {expected}, got a boolean ({_BOOLEANS})"
        elif expected and isinstance(value, float) and not math.isfinite(value):
            yield here, f"expected a finite number (got {value})"
        for inner in models:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                where = (*here, i) if isinstance(value, list) else here
                yield from _strict_numbers(item, inner, where)


@cache
def _number_plan(model: type[BaseModel]) -> dict[str, tuple[str, tuple[type[BaseModel], ...]]]:
    """Per key (name and alias) of ``model``: 'an integer' / 'a number' where one is expected
    ('' elsewhere), and the models nested under it."""
    plan: dict[str, tuple[str, tuple[type[BaseModel], ...]]] = {}
    for name, field in model.model_fields.items():
        types = _leaf_types(field.annotation)
        numeric = bool(types & {int, float}) and bool not in types
        expected = ("an integer" if int in types else "a number") if numeric else ""
        models = tuple(t for t in types if isinstance(t, type) and issubclass(t, BaseModel))
        for key in {name, field.alias or name}:
            plan[key] = (expected, models)
    return plan


def _leaf_types(annotation: object) -> set[object]:
    """The classes an annotation accepts: through Optional, unions, Annotated and tuples."""
    if get_origin(annotation) is Annotated:
        return _leaf_types(get_args(annotation)[0])
    origin = get_origin(annotation)
    if origin in (Union, UnionType, tuple, list):
        return {t for arg in get_args(annotation) if arg is not Ellipsis for t in _leaf_types(arg)}
    if origin is not None:  # dict and other containers: their values are not walked
        return {origin}
    return {annotation}


def _is_name(loc: Loc) -> bool:
    return loc == ("cluster",) or (len(loc) == 3 and loc[0] == "shards" and loc[2] == "name")


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc``."""
    model: type[BaseModel] = TopologySpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        inner = field.annotation
        args = getattr(inner, "__args__", ())
        # Annotated members (a tagged union's) hold the class as their first argument.
        candidates = [inner, *args, *(first for a in args for first in get_args(a)[:1])]
        found = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if found is None:
            return None
        model = found
    return model


def _located(path: Path, lines: dict[Loc, int], loc: Loc, message: str, more: int) -> str:
    """``file:line: dotted.path: message``, with the line of the nearest known location."""
    line = next(lines[loc[:i]] for i in range(len(loc), -1, -1) if loc[:i] in lines)
    where = _dotted(loc)
    text = f"{_shown(path)}:{line}: {where + ': ' if where else ''}{message}"
    if more:
        text += f"\n  ({more} more problem{'s' if more > 1 else ''} after fixing this one)"
    return _clamp(text)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        name = part if isinstance(part, int) or len(part) <= 40 else f"{part[:40]}..."
        out += f"[{name}]" if isinstance(part, int) else (f".{name}" if out else str(name))
    return out


def _endpoints_written(spec: TopologySpec) -> Iterator[tuple[Loc, str]]:
    """Every Docker endpoint the file spells out, where it is written."""
    for name, engine in spec.engines.items():
        yield ("engines", name, "endpoint"), engine.endpoint
    for i, shard in enumerate(spec.shards):
        if shard.engine is not None and "://" in shard.engine:
            yield ("shards", i, "engine"), shard.engine
        for j, named in enumerate(shard.replica_engines):
            if "://" in named:
                yield ("shards", i, "replica_engines", j), named


def _check_engines(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Engines: endpoints declared once, every engine named by a shard declared, and replicas
    off their primary's engine under ``spread: hosts``."""
    spec = topology.spec
    endpoints: dict[str, str] = {}
    for name, engine in spec.engines.items():
        other = endpoints.setdefault(engine_key(engine.endpoint) or "", name)
        if other != name:
            yield (
                ("engines", name, "endpoint"),
                f"endpoint {engine.endpoint!r} is also engine {other!r} (host names compare "
                "case-insensitively)",
            )
    known = ", ".join(sorted(spec.engines)) or "none declared"

    def unknown(engine: str) -> str:
        hint = difflib.get_close_matches(engine, list(spec.engines), n=1)
        return f"unknown engine {engine!r}; " + (
            f"did you mean {hint[0]!r}?" if hint else f"engines: {known}"
        )

    for i, shard in enumerate(spec.shards):
        if (
            shard.engine is not None
            and shard.engine not in spec.engines
            and "://" not in shard.engine
        ):
            yield ("shards", i, "engine"), unknown(shard.engine)
        if len(shard.replica_engines) > shard.replicas:
            yield (
                ("shards", i, "replica_engines"),
                f"{len(shard.replica_engines)} engines listed for {shard.replicas} replica(s)",
            )
        for j, named in enumerate(shard.replica_engines):
            if named not in spec.engines and "://" not in named:
                yield ("shards", i, "replica_engines", j), unknown(named)
    if spec.spread is not Spread.HOSTS:
        return
    for i, shard in enumerate(spec.shards):
        primary = topology.placement(topology.engine_of(shard, 0)).name
        for r in range(1, shard.replicas + 1):
            if topology.placement(topology.engine_of(shard, r)).name == primary:
                where: Loc = (
                    ("shards", i, "replica_engines", r - 1)
                    if r <= len(shard.replica_engines)
                    else ("shards", i)
                )
                yield (
                    where,
                    (
                        f"{shard.name}-replica-{r} is on engine {primary!r} with its primary, "
                        "but spread: hosts asks for another host (set replica_engines)"
                    ),
                )


def _check_semantics(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Rules beyond each value's type: unique names, free ports, files that exist, and what
    ``up`` would trip over later (a database initdb made, settings shardctl owns, ...)."""
    yield from _check_security(topology)
    spec = topology.spec
    seen: dict[str, int] = {}
    for i, shard in enumerate(spec.shards):
        if shard.name in seen:
            yield (
                ("shards", i, "name"),
                (f"duplicate shard name {shard.name!r} (also shards[{seen[shard.name]}])"),
            )
        seen.setdefault(shard.name, i)
    if len(seen) != len(spec.shards):
        return
    endpoint_problems = [
        (where, f"{problem}")
        for where, endpoint in _endpoints_written(spec)
        if (problem := endpoint_problem(endpoint))
    ]
    engine_problems = endpoint_problems or list(_check_engines(topology))
    yield from engine_problems
    if engine_problems:
        return
    # Host names compare case-insensitively: two engines on one host share its ports.
    owner: dict[tuple[str, int], str] = {}
    for i, shard in enumerate(spec.shards):
        # By index, not shard_nodes(name): ten thousand shards stay linear.
        for node in topology._nodes_of(i, shard):
            where: Loc = ("shards", i, "port") if shard.port is not None else ("shards", i)
            published = [(node.host_port, node.name)]
            if node.pooler_port is not None:
                published.append((node.pooler_port, f"the pooler of {node.name}"))
            for port, what in published:
                taken_by = owner.setdefault((node.advertise.lower(), port), what)
                if port > 65535:
                    yield where, f"port {port} of {what} is above 65535"
                elif taken_by != what:
                    yield (
                        where,
                        f"port {port} of {what} clashes with {taken_by} "
                        f"(both on host {node.advertise})",
                    )
    tables: set[str] = set()
    for i, table in enumerate(spec.tables):
        if table.name in tables:
            yield ("tables", i, "name"), f"table {table.name!r} is listed twice"
        tables.add(table.name)
    if spec.database in INITDB_DATABASES:
        yield (
            ("database",),
            (
                f"{spec.database!r} already exists in every new server; name the database that "
                "holds the sharded tables (default 'app')"
            ),
        )
    yield from _check_image(spec.image)
    pooled = spec.pooler is not None or any(shard.pooler is not None for shard in spec.shards)
    if pooled and spec.sslmode in (SSLMode.REQUIRE, SSLMode.VERIFY_CA, SSLMode.VERIFY_FULL):
        yield (
            ("sslmode",),
            f"{spec.sslmode.value} cannot be kept through the poolers (they take no TLS from "
            "clients yet): remove pooler: or use prefer",
        )
    tls_mode = spec.tls if isinstance(spec.tls, TLSMode) else spec.tls.mode
    if pooled and tls_mode is TLSMode.REQUIRED:
        yield (
            ("tls",),
            "tls: required cannot be kept through the poolers yet (they take no TLS from "
            "clients and give none to servers): remove pooler: or tls:",
        )
    for loc, pooler in [(("pooler",), spec.pooler)] + [
        (("shards", i, "pooler"), shard.pooler) for i, shard in enumerate(spec.shards)
    ]:
        if pooler is not None and pooler.image is not None:
            for _, problem in _check_image(pooler.image):
                yield (*loc, "image"), problem
    yield from _check_bind_address(spec.bind_address)
    yield from _check_settings(spec.postgres)
    yield from _check_health(spec.health)
    yield from _check_credentials(topology)
    schema = topology.schema_path
    if schema is not None:
        problem = _file_problem(schema)
        if problem:
            yield ("schema",), f"schema file {_short(str(schema))} {problem}"


INITDB_DATABASES = frozenset({"postgres", "template0", "template1"})
"""Databases every new server has: CREATE DATABASE of one fails on the first ``up``."""
MANAGED_SETTINGS = frozenset(
    {
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "password_encryption",
        "wal_level",
        "hot_standby",
        "primary_conninfo",
        "primary_slot_name",
        "synchronous_standby_names",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
    }
)
"""Server settings shardctl sets itself: containers, replication and switchover depend on
them, so ``postgres:`` may not override them."""
RESERVED_ROLES = frozenset({"public", "none", "current_user", "session_user", "current_role"})
"""Role names PostgreSQL refuses to create (besides the ``pg_`` prefix)."""
MAX_HEALTH_SECONDS = 86400.0
"""Longest time a ``health`` threshold or timeout may be: a day."""
MAX_LAG_BYTES = 2**62
"""Largest byte-lag threshold: within PostgreSQL's bigint, where lags are computed."""
ENDPOINT_SCHEMES = ("unix", "tcp", "http", "https", "ssh")
"""What the Docker SDK connects to (npipe:// is Windows only)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
_USUAL_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_DEFAULT_PORTS = {"tcp": 2375, "http": 2375, "https": 2376, "ssh": 22}


@cache
def endpoint_problem(endpoint: str) -> str | None:
    """Why ``endpoint`` is not a Docker endpoint the SDK can use; None when it is one."""
    shown = _short(endpoint)
    if not endpoint.strip() or endpoint != endpoint.strip() or len(endpoint) > 1000:
        return f"{shown} is not a Docker endpoint (expected e.g. ssh://host or tcp://host:2376)"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return f"{shown} is not a Docker endpoint: its port is not a number from 1 to 65535"
    if parts.scheme not in ENDPOINT_SCHEMES:
        return (
            f"{shown} is not a Docker endpoint: expected one of "
            f"{', '.join(s + '://' for s in ENDPOINT_SCHEMES)}"
        )
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            return f"{shown}: a unix endpoint names an absolute socket path (unix:///path)"
        return None
    if not parts.hostname or any(c.isspace() for c in endpoint):
        return f"{shown} names no host (expected {parts.scheme}://host[:port])"
    if port == 0:
        return f"{shown}: the port must be from 1 to 65535"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{shown}: a Docker endpoint has no path, query or fragment"
    if parts.scheme != "ssh" and parts.username is not None:
        return f"{shown}: only ssh:// endpoints name a user"
    return None


@cache
def engine_key(endpoint: str | None) -> str | None:
    """One spelling per engine: scheme and host name lower-case, the default port made
    explicit, so two spellings of one engine share its ports."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        return f"unix://{parts.path}"
    port = parts.port or _DEFAULT_PORTS.get(scheme)
    host = (parts.hostname or "").lower()
    if scheme in ("http", "tcp"):
        scheme = "tcp"
    return f"{scheme}://{host}:{port}"


def _check_image(image: str) -> Iterator[tuple[Loc, str]]:
    if len(image) > 255 or any(c.isspace() for c in image):
        yield (
            ("image",),
            (f"{_short(image)} is not an image reference (no spaces, at most 255 characters)"),
        )


def _check_bind_address(address: str) -> Iterator[tuple[Loc, str]]:
    if not address:
        yield (
            ("bind_address",),
            ("is empty; give the IP address ports are published on (127.0.0.1 keeps them local)"),
        )
        return
    try:
        ipaddress.ip_address(address)
    except ValueError:
        yield (
            ("bind_address",),
            (
                f"{_short(address)} is not an IP address (ports are published on an address of "
                "this host, e.g. 127.0.0.1)"
            ),
        )


def _check_settings(settings: Mapping[str, object]) -> Iterator[tuple[Loc, str]]:
    for name, value in settings.items():
        where: Loc = ("postgres", name)
        if not _SETTING_NAME.fullmatch(name):
            yield where, f"{_short(name)} is not a server setting name"
        elif name.lower() in MANAGED_SETTINGS:
            yield (
                where,
                (
                    f"{name} is set by shardctl (it runs the containers and replication); "
                    "remove it from postgres:"
                ),
            )
        elif isinstance(value, float) and not math.isfinite(value):
            yield where, f"expected a finite number (got {value})"
        elif isinstance(value, str) and ("\n" in value or "\r" in value or len(value) > 1000):
            yield where, f"{_short(value)} is not a server setting value (one line, short)"


def _check_health(health: HealthSpec) -> Iterator[tuple[Loc, str]]:
    for name in ("max_lag_seconds", "canary_timeout", "probe_timeout"):
        seconds = getattr(health, name)
        if not math.isfinite(seconds) or seconds > MAX_HEALTH_SECONDS:
            yield (
                ("health", name),
                (f"{seconds} seconds is out of range (at most {MAX_HEALTH_SECONDS:.0f}, a day)"),
            )
    if health.max_lag_bytes > MAX_LAG_BYTES:
        yield (
            ("health", "max_lag_bytes"),
            f"out of range (at most 2**62, got {_short(health.max_lag_bytes)})",
        )


def _check_credentials(topology: Topology) -> Iterator[tuple[Loc, str]]:
    spec = topology.spec.credentials
    for key in ("superuser", "replication_user"):
        role = getattr(spec, key)
        if role.lower().startswith("pg_") or role.lower() in RESERVED_ROLES:
            yield ("credentials", key), f"{role!r} is a name PostgreSQL reserves for itself"
    if spec.superuser == spec.replication_user:
        yield (
            ("credentials", "replication_user"),
            (
                "must differ from the superuser: replicas connect with a role that can only "
                "replicate"
            ),
        )
    if spec.password_env is not None:
        if not _ENV_NAME.fullmatch(spec.password_env):
            # Never echoed: a password written here by mistake must not reach a terminal or log.
            yield (
                ("credentials", "password_env"),
                (
                    "must be the name of an environment variable (letters, digits, '_', e.g. "
                    "PGPASSWORD), not its value; the value is not shown"
                ),
            )
        elif not os.environ.get(spec.password_env):
            # Named only when it looks like a variable: 'hunter2' may be the password itself.
            named = (
                f"${spec.password_env}"
                if _USUAL_ENV_NAME.fullmatch(spec.password_env)
                else "the variable it names (not shown: it does not look like a variable name)"
            )
            yield (
                ("credentials", "password_env"),
                f"{named} is not set (or empty): export it before running shardctl",
            )
    elif spec.password_file is not None:
        problem = _file_problem(topology.path.parent / Path(spec.password_file).expanduser())
        if problem:
            yield (
                ("credentials", "password_file"),
                (f"the file named (relative to the topology) {problem}; the name is not shown"),
            )
    if spec.secrets_file is not None:
        secrets = topology.path.parent / Path(spec.secrets_file).expanduser()
        if not spec.secrets_file.strip() or _too_long(secrets) or secrets.is_dir():
            yield (
                ("credentials", "secrets_file"),
                (f"{_short(spec.secrets_file)} cannot be a file shardctl writes passwords to"),
            )


def _too_long(path: Path) -> bool:
    """Longer than any OS accepts: checked before the OS says so with an exception."""
    return len(os.fsencode(path)) > 4095 or any(len(os.fsencode(p)) > 255 for p in path.parts)


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable file; None when it is one."""
    if _too_long(path):
        return "has a name too long for the operating system"
    try:
        if path.is_file():
            return None
        return "is a directory, not a file" if path.is_dir() else "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def is_loopback(address: str) -> bool:
    """Whether ports published on ``address`` are reachable from this machine only."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _check_security(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Exposing the cluster is a decision: three distinct roles, no plaintext beyond loopback."""
    spec = topology.spec
    creds = spec.credentials
    if creds.app_user in (creds.superuser, creds.replication_user):
        yield (
            ("credentials", "app_user"),
            f"the application role {creds.app_user!r} must differ from the superuser and the "
            "replication role",
        )
    yield from _check_tls(topology)
    if spec.allow_plaintext or topology.tls is not None:
        return
    # An engine's own bind_address too; an engine that declares none publishes on 0.0.0.0
    # when advertised beyond loopback (several hosts reach each other so), not checked here.
    exposed: list[tuple[Loc, str]] = [(("bind_address",), spec.bind_address)]
    exposed += [
        (("engines", name, "bind_address"), engine.bind_address)
        for name, engine in spec.engines.items()
        if engine.bind_address is not None
    ]
    for where, address in exposed:
        # An empty or malformed address is its own error.
        if _is_ip(address) and not is_loopback(address):
            yield (
                where,
                f"{address} publishes the nodes' ports beyond this machine without TLS: set "
                "tls: required (certificates made per cluster, or your own), keep 127.0.0.1, or "
                "set allow_plaintext: true to accept queries and data in clear on the network",
            )
            return


TLS_SETTINGS = frozenset({"ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file"})
"""Server settings ``tls: required`` sets itself."""
WEAK_SSLMODES = frozenset({SSLMode.DISABLE, SSLMode.ALLOW, SSLMode.PREFER})
"""What a client may ask for that would not insist on TLS."""


def _check_tls(topology: Topology) -> Iterator[tuple[Loc, str]]:
    spec = topology.spec
    declared = spec.tls
    tls = topology.tls
    if isinstance(declared, TLSSpec):
        if declared.mode is TLSMode.OFF and (
            declared.cert_file or declared.key_file or declared.ca_file
        ):
            yield ("tls", "mode"), "is off, so its certificate files would not be used"
        elif (declared.cert_file is None) != (declared.key_file is None):
            missing = "key_file" if declared.key_file is None else "cert_file"
            yield ("tls",), f"gives a certificate without its key: add {missing}"
            return
        elif declared.ca_file is not None and declared.cert_file is None:
            yield (
                ("tls", "ca_file"),
                "names a CA for your own certificate: add cert_file and key_file (without "
                "them shardctl makes the cluster's CA itself)",
            )
            return
    if tls is None:
        return
    if spec.sslmode in WEAK_SSLMODES:
        yield (
            ("sslmode",),
            f"{spec.sslmode} does not insist on TLS, which tls: required refuses: use "
            "verify-full, verify-ca or require (or leave it out)",
        )
    for name in spec.postgres:
        if name.lower() in TLS_SETTINGS:
            yield (
                ("postgres", name),
                f"{name} is set by shardctl with tls: required; remove it from postgres:",
            )
    files = [("cert_file", tls.cert), ("key_file", tls.key)]
    if isinstance(declared, TLSSpec) and declared.ca_file is not None:
        files.append(("ca_file", tls.ca))
    for key, path in files:
        if path is None:
            continue
        problem = _file_problem(path)
        if problem:
            yield ("tls", key), f"the file named (relative to the topology) {problem}"
            return
    if tls.cert is not None and tls.key is not None:
        from shardctl.config import (
            tls as certificates,  # cryptography: loaded for user-given files only
        )

        problem = certificates.problem(tls.cert.read_bytes(), tls.key.read_bytes())
        if problem:
            yield ("tls",), problem
