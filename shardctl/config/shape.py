"""The shape of ``topology.yaml`` as pydantic models, with their bounds and descriptions:
exported as docs/topology.schema.json, and what explains a file the plain check
(:mod:`shardctl.config.plain`) declines, in pydantic's words turned into one line per problem
(:mod:`shardctl.config.messages`). A valid file never needs these: the runtime model is
:mod:`shardctl.config.schema`'s frozen models, which mirror these field by field
(``tests/unit/config/test_plain.py`` holds them to it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from shardctl.config.schema import (
    DEFAULT_DEGRADE_AFTER,
    DEFAULT_POOLER_IMAGE,
    MAX_REPLICAS,
    Durability,
    FailoverMode,
    PoolMode,
    Replication,
    RingAlgorithm,
    Spread,
    SSLMode,
    TLSMode,
)

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


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
    monitor_stale_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="verify-replication fails when a shard's failover is automatic and no "
        "`shardctl monitor` heartbeat is younger than this.",
    )


class LogsSpec(_Model):
    """Log rotation of every container shardctl makes (Docker's json-file driver)."""

    max_size: str = Field(
        default="10m",
        pattern=r"^[1-9][0-9]{0,5}[kmg]$",
        description="Size of one log file before it rotates: a number and k, m or g.",
    )
    max_files: int = Field(default=3, ge=1, le=100, description="Log files kept per container.")


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


class ReplicationSpec(_Model):
    """``replication: {mode: sync, durability: required | preferred}``."""

    mode: Replication = Field(description="async or sync.")
    durability: Durability = Field(
        default=Durability.REQUIRED,
        description="sync only: 'required' (default) blocks writes while no standby is "
        "connected; 'preferred' then acknowledges as async and reports the shard degraded.",
    )
    degrade_after: float = Field(
        default=DEFAULT_DEGRADE_AFTER,
        ge=0,
        le=3600,
        description="preferred: seconds without a synchronous standby before writes go async.",
    )


def _replication_form(value: object) -> str:
    return "spec" if isinstance(value, Mapping | ReplicationSpec) else "mode"


ReplicationField = Annotated[
    Annotated[Replication, Tag("mode")] | Annotated[ReplicationSpec, Tag("spec")],
    Discriminator(_replication_form),
]
"""``replication: sync`` (durability required) or ``replication: {mode: sync, ...}``."""


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


class FailoverSpec(_Model):
    """``failover:`` what ``shardctl monitor`` may do (top level; a shard's own overrides it)."""

    mode: FailoverMode = Field(default=FailoverMode.MANUAL, description="manual or automatic.")
    detect_seconds: float = Field(
        default=5.0,
        ge=1,
        le=3600,
        description="Seconds the acting primary must fail the monitor's probe before it acts.",
    )
    hold_down_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="After an automatic failover of a shard, none again for it within this "
        "many seconds unless the new primary's engine says it stopped too.",
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
    replication: ReplicationField | None = Field(
        default=None,
        description="async, sync or {mode: sync, durability: ...} for this shard "
        "[default: the top-level key].",
    )
    pooler: PoolerSpec | None = Field(
        default=None,
        description="This shard's poolers [default: the top-level pooler: section, if any].",
    )
    failover: FailoverSpec | None = Field(
        default=None, description="This shard's failover [default: the top-level key]."
    )


class RetentionSpec(_Model):
    """How many base backups ``backup`` keeps per cluster (and the WAL they need)."""

    base_backups: int = Field(
        default=7, ge=1, le=10000, description="Complete base backups kept; older ones go."
    )
    days: float | None = Field(
        default=None,
        gt=0,
        le=36500,
        description="Also drop complete base backups older than this (the newest always stays).",
    )


class BackupSpec(_Model):
    """Continuous WAL archiving and base backups into a repository (docs/backup.md)."""

    repository: str = Field(
        min_length=1,
        description="Directory on the repository engine's host (relative to the topology).",
    )
    engine: str | None = Field(
        default=None,
        min_length=1,
        description="Engine (engines:) whose host holds the repository [default: local].",
    )
    retention: RetentionSpec = RetentionSpec()


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
    replication: ReplicationField = Field(
        default=Replication.ASYNC,
        description="async (default), sync (a commit waits for one replica), or "
        "{mode: sync, durability: required | preferred, degrade_after: S} (see docs).",
    )
    schema_file: str | None = Field(
        default=None, alias="schema", description="SQL applied on every primary."
    )
    tables: tuple[TableSpec, ...] = ()
    credentials: CredentialsSpec = CredentialsSpec()
    health: HealthSpec = HealthSpec()
    logs: LogsSpec = Field(
        default=LogsSpec(),
        description="Log rotation of the containers (applies to containers made from now on).",
    )
    postgres: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Extra postgresql.conf parameters for every node."
    )
    pooler: PoolerSpec | None = Field(
        default=None, description="A PgBouncer per node (see docs/topology.md#poolers)."
    )
    failover: FailoverSpec = Field(
        default=FailoverSpec(),
        description="manual (default) or automatic failover by `shardctl monitor`.",
    )
    backup: BackupSpec | None = Field(
        default=None, description="WAL archiving and base backups (see docs/backup.md)."
    )
    shards: tuple[ShardSpec, ...] = Field(min_length=1)
