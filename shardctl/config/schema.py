"""The shape of ``topology.yaml`` as the code uses it: frozen models of the file as
written, each field with what it accepts (:mod:`shardctl.config.plain`).

This is the one definition of the file's keys: what each accepts, its default and what it
means. Importing it costs no pydantic; :mod:`shardctl.config.shape` builds pydantic's models
from these (docs/topology.schema.json, and the messages of a file that is not valid), and
``tests/unit/config/test_plain.py`` holds the two to the same results.
"""

from __future__ import annotations

from enum import StrEnum

from shardctl.config.constants import DEFAULT_TOPOLOGY as DEFAULT_TOPOLOGY  # re-exported
from shardctl.config.constants import IMAGE_ENV as IMAGE_ENV
from shardctl.config.constants import MAX_REPLICAS as MAX_REPLICAS
from shardctl.config.constants import PORT_STRIDE as PORT_STRIDE
from shardctl.config.constants import TOPOLOGY_ENV as TOPOLOGY_ENV
from shardctl.config.plain import (
    Choice,
    Flag,
    Form,
    Integer,
    Items,
    Model,
    Number,
    Optional,
    Setting,
    Spec,
    Table,
    Text,
    spec,
)

NAME = Text(pattern=r"^[a-z][a-z0-9-]{0,39}$")
IDENTIFIER = Text(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
PORT = Integer(ge=1, le=65535)
TEXT = Text()
SOME_TEXT = Optional(Text())


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


class Durability(StrEnum):
    """What a ``sync`` shard does while no synchronous standby is connected."""

    REQUIRED = "required"
    """Its commits wait for a standby (the shard may block): nothing acknowledged is lost."""
    PREFERRED = "preferred"
    """After ``degrade_after`` seconds it acknowledges as async (degraded) until one returns."""


DEFAULT_DEGRADE_AFTER = 5.0
"""Seconds a ``preferred`` shard waits without a synchronous standby before it degrades."""


class RingAlgorithm(StrEnum):
    """How keys are placed on the ring (see :mod:`shardctl.ring`)."""

    MD5 = "md5"
    BALANCED = "balanced"


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


class PoolMode(StrEnum):
    """When PgBouncer gives a server connection back to its pool."""

    TRANSACTION = "transaction"
    """At the end of each transaction: many clients share few server connections."""
    SESSION = "session"
    """When the client disconnects: session state (SET, prepared statements) is kept."""


class FailoverMode(StrEnum):
    """Who fails a shard over when its primary is lost."""

    MANUAL = "manual"
    """An operator (``shardctl failover``); ``shardctl monitor`` only reports."""
    AUTOMATIC = "automatic"
    """``shardctl monitor``, when it can prove the old primary cannot acknowledge a write."""


DEFAULT_POOLER_IMAGE = "edoburu/pgbouncer:latest"
"""The PgBouncer image users get by default; tests use a local one (``SHARDCTL_POOLER_IMAGE``)."""
POOLER_IMAGE_ENV = "SHARDCTL_POOLER_IMAGE"
"""Overrides the pooler image, like ``SHARDCTL_IMAGE`` the server's."""


class RingSpec(Spec):
    """The hash ring's algorithm and virtual nodes per shard."""

    algorithm: RingAlgorithm = spec(
        Choice(RingAlgorithm),
        default=RingAlgorithm.BALANCED,
        description="'balanced' (default for new clusters) or 'md5' (the classic ring).",
    )
    vnodes: int = spec(
        Integer(ge=1, le=10000), default=150, description="Virtual nodes per shard (md5)."
    )


class TableSpec(Spec):
    """A sharded table and the column whose value picks its shard."""

    name: str = spec(IDENTIFIER)
    key: str = spec(IDENTIFIER, default="id", description="The shard key column.")


class CredentialsSpec(Spec):
    """Where passwords come from; never the passwords themselves."""

    password_env: str | None = spec(
        SOME_TEXT,
        default=None,
        description="Environment variable holding the superuser password.",
    )
    password_file: str | None = spec(
        SOME_TEXT,
        default=None,
        description="File holding the superuser password (relative to topology).",
    )
    secrets_file: str | None = spec(
        SOME_TEXT,
        default=None,
        description="Where generated passwords are kept (default: see docs/topology.md).",
    )
    superuser: str = spec(IDENTIFIER, default="postgres")
    replication_user: str = spec(IDENTIFIER, default="replicator")
    app_user: str = spec(
        IDENTIFIER,
        default="app",
        description="The application role the Router and `load` use (not a superuser).",
    )
    app_password_env: str | None = spec(
        SOME_TEXT,
        default=None,
        description="Environment variable holding the application role's password.",
    )
    app_password_file: str | None = spec(
        SOME_TEXT,
        default=None,
        description="File holding the application role's password (relative to topology).",
    )


class HealthSpec(Spec):
    """Thresholds for replication checks; the CLI options override them."""

    max_lag_bytes: int = spec(Integer(ge=0), default=16 * 1024 * 1024)
    max_lag_seconds: float = spec(Number(ge=0), default=60.0)
    canary_timeout: float = spec(Number(gt=0), default=10.0)
    probe_timeout: float = spec(Number(gt=0), default=5.0)
    monitor_stale_seconds: float = spec(
        Number(gt=0, le=86400),
        default=30.0,
        description="verify-replication fails when a shard's failover is automatic and no "
        "`shardctl monitor` heartbeat is younger than this.",
    )


class LogsSpec(Spec):
    """Log rotation of every container shardctl makes (Docker's json-file driver)."""

    max_size: str = spec(
        Text(pattern=r"^[1-9][0-9]{0,5}[kmg]$"),
        default="10m",
        description="Size of one log file before it rotates: a number and k, m or g.",
    )
    max_files: int = spec(
        Integer(ge=1, le=100), default=3, description="Log files kept per container."
    )


class TLSSpec(Spec):
    """``tls:`` with the server's own certificate instead of shardctl's generated ones."""

    mode: TLSMode = spec(Choice(TLSMode), default=TLSMode.REQUIRED, description="off or required.")
    cert_file: str | None = spec(
        SOME_TEXT,
        default=None,
        description="Server certificate (PEM) every node presents (relative to the topology) "
        "[default: one per node, signed by a CA shardctl makes for the cluster].",
    )
    key_file: str | None = spec(
        SOME_TEXT, default=None, description="The certificate's unencrypted private key (PEM)."
    )
    ca_file: str | None = spec(
        SOME_TEXT,
        default=None,
        description="CA certificate clients verify the server's with [default: cert_file, "
        "a self-signed certificate being its own CA].",
    )


class ReplicationSpec(Spec):
    """``replication: {mode: sync, durability: required | preferred}``."""

    mode: Replication = spec(Choice(Replication), description="async or sync.")
    durability: Durability = spec(
        Choice(Durability),
        default=Durability.REQUIRED,
        description="sync only: 'required' (default) blocks writes while no standby is "
        "connected; 'preferred' then acknowledges as async and reports the shard degraded.",
    )
    degrade_after: float = spec(
        Number(ge=0, le=3600),
        default=DEFAULT_DEGRADE_AFTER,
        description="preferred: seconds without a synchronous standby before writes go async.",
    )
    given: frozenset[str] = frozenset()
    """The keys the file wrote (pydantic's ``model_fields_set``): durability and
    degrade_after mean something with ``mode: sync`` only."""


REPLICATION = Form(Choice(Replication), Model(ReplicationSpec), tags=("mode", "spec"))
"""``replication: sync`` (durability required) or ``replication: {mode: sync, ...}``."""
TLS = Form(Choice(TLSMode), Model(TLSSpec), tags=("mode", "files"))
"""``tls: required`` or ``tls: {cert_file: ..., ...}``; errors name ``tls.mode`` or the key."""


class EngineTLSSpec(Spec):
    """Client TLS for a ``tcp://`` Docker endpoint (files relative to the topology)."""

    ca: str | None = spec(
        SOME_TEXT, default=None, description="CA certificate the engine's is checked by."
    )
    cert: str | None = spec(SOME_TEXT, default=None, description="Client certificate.")
    key: str | None = spec(SOME_TEXT, default=None, description="Client key.")
    verify: bool = spec(
        Flag(), default=True, description="Check the engine's certificate against ca."
    )


class EngineSpec(Spec):
    """A Docker engine (a host) nodes can be placed on."""

    endpoint: str = spec(
        Text(pattern=r"^(unix|tcp|ssh|http|https|npipe)://.+"),
        description="DOCKER_HOST-style endpoint: unix:///path, tcp://host:2376, ssh://user@host.",
    )
    tls: EngineTLSSpec | None = spec(
        Optional(Model(EngineTLSSpec)),
        default=None,
        description="TLS for tcp:// (files, else $DOCKER_CERT_PATH); none: plain or ssh.",
    )
    advertise: str | None = spec(
        Optional(Text(min_length=1)),
        default=None,
        description="Address other hosts and clients reach its published ports on "
        "[default: the endpoint's host; a unix:// engine: the top-level bind_address].",
    )
    bind_address: str | None = spec(
        Optional(Text(min_length=1)),
        default=None,
        description="Where its nodes' ports are published [default: 0.0.0.0 when advertised "
        "on a non-loopback address, else the top-level bind_address].",
    )
    ssh_client: bool = spec(
        Flag(),
        default=True,
        description="ssh:// through the system ssh (its ~/.ssh/config); false: paramiko.",
    )


class PoolerSpec(Spec):
    """A PgBouncer in front of each node (top level; a shard's own section overrides it)."""

    enabled: bool = spec(Flag(), default=True, description="false: no poolers (for one shard).")
    image: str | None = spec(
        Optional(Text(min_length=1)),
        default=None,
        description=f"PgBouncer image (else ${POOLER_IMAGE_ENV}, else {DEFAULT_POOLER_IMAGE}).",
    )
    mode: PoolMode = spec(
        Choice(PoolMode), default=PoolMode.TRANSACTION, description="transaction or session."
    )
    pool_size: int = spec(
        Integer(ge=1, le=10000),
        default=20,
        description="Server connections per database and user.",
    )
    max_client_conn: int = spec(
        Integer(ge=1, le=1_000_000),
        default=1000,
        description="Client connections each pooler accepts.",
    )
    replicas: bool = spec(Flag(), default=True, description="Replicas get a pooler too.")
    port_offset: int = spec(
        Integer(ge=1, le=60000),
        default=1000,
        description="A node's pooler is published on the node's port + this.",
    )
    max_waiting: int = spec(
        Integer(ge=0, le=1_000_000),
        default=0,
        description="Waiting clients past which status and verify complain.",
    )
    router: bool = spec(
        Flag(),
        default=False,
        description="Routers connect through the poolers unless told otherwise (top level).",
    )


class FailoverSpec(Spec):
    """``failover:`` what ``shardctl monitor`` may do (top level; a shard's own overrides it)."""

    mode: FailoverMode = spec(
        Choice(FailoverMode), default=FailoverMode.MANUAL, description="manual or automatic."
    )
    detect_seconds: float = spec(
        Number(ge=1, le=3600),
        default=5.0,
        description="Seconds the acting primary must fail the monitor's probe before it acts.",
    )
    hold_down_seconds: float = spec(
        Number(ge=0, le=86400),
        default=300.0,
        description="After an automatic failover of a shard, none again for it within this "
        "many seconds unless the new primary's engine says it stopped too.",
    )


class ShardSpec(Spec):
    """One shard: a primary and its streaming replicas."""

    name: str = spec(NAME)
    replicas: int = spec(Integer(ge=0, le=MAX_REPLICAS), default=1)
    port: int | None = spec(
        Optional(PORT),
        default=None,
        description="Host port of the primary; replica i gets port + i.",
    )
    engine: str | None = spec(
        Optional(Text(min_length=1)),
        default=None,
        description="Name of an engine (engines:) for this shard's nodes, or a Docker endpoint; "
        "default: engines.local if declared, else DOCKER_HOST.",
    )
    replica_engines: tuple[str, ...] = spec(
        Items(TEXT),
        default=(),
        description="Engine of replica 1, 2, ... (overrides engine for each one listed).",
    )
    replication: Replication | ReplicationSpec | None = spec(
        Optional(REPLICATION),
        default=None,
        description="async, sync or {mode: sync, durability: ...} for this shard "
        "[default: the top-level key].",
    )
    pooler: PoolerSpec | None = spec(
        Optional(Model(PoolerSpec)),
        default=None,
        description="This shard's poolers [default: the top-level pooler: section, if any].",
    )
    failover: FailoverSpec | None = spec(
        Optional(Model(FailoverSpec)),
        default=None,
        description="This shard's failover [default: the top-level key].",
    )


class RetentionSpec(Spec):
    """How many base backups ``backup`` keeps per cluster (and the WAL they need)."""

    base_backups: int = spec(
        Integer(ge=1, le=10000),
        default=7,
        description="Complete base backups kept; older ones go.",
    )
    days: float | None = spec(
        Optional(Number(gt=0, le=36500)),
        default=None,
        description="Also drop complete base backups older than this (the newest always stays).",
    )


class BackupSpec(Spec):
    """Continuous WAL archiving and base backups into a repository (docs/backup.md)."""

    repository: str = spec(
        Text(min_length=1),
        description="Directory on the repository engine's host (relative to the topology).",
    )
    engine: str | None = spec(
        Optional(Text(min_length=1)),
        default=None,
        description="Engine (engines:) whose host holds the repository [default: local].",
    )
    retention: RetentionSpec = spec(Model(RetentionSpec), default=RetentionSpec())


def _no_settings() -> dict[str, str | int | float | bool]:
    return {}


def _no_engines() -> dict[str, EngineSpec]:
    return {}


class TopologySpec(Spec):
    """The whole declared cluster, as written in topology.yaml."""

    cluster: str = spec(NAME)
    image: str = spec(Text(min_length=1), default="postgres:17")
    database: str = spec(IDENTIFIER, default="app")
    base_port: int = spec(
        PORT, default=54320, description="Shard k's primary listens on base + 10k."
    )
    bind_address: str = spec(
        TEXT, default="127.0.0.1", description="Host address ports are published on."
    )
    engines: dict[str, EngineSpec] = spec(
        Table(NAME, Model(EngineSpec)),
        factory=_no_engines,
        description="Named Docker engines (hosts) shards and replicas are placed on.",
    )
    spread: Spread = spec(
        Choice(Spread),
        default=Spread.NONE,
        description="'hosts': a replica never shares its declared primary's engine.",
    )
    tls: TLSMode | TLSSpec = spec(
        TLS,
        default=TLSMode.OFF,
        description="'required': the servers accept TCP only over TLS, with certificates "
        "shardctl makes per cluster, or the files given (cert_file, key_file, ca_file).",
    )
    sslmode: SSLMode | None = spec(
        Optional(Choice(SSLMode)),
        default=None,
        description="libpq sslmode for every connection, replication included [default: "
        "verify-full with tls: required (verify-ca with your own cert_file), else libpq's].",
    )
    allow_plaintext: bool = spec(
        Flag(),
        default=False,
        description="Accept a non-loopback bind_address without TLS (scram only, no encryption).",
    )
    ring: RingSpec = spec(Model(RingSpec), default=RingSpec())
    replication: Replication | ReplicationSpec = spec(
        REPLICATION,
        default=Replication.ASYNC,
        description="async (default), sync (a commit waits for one replica), or "
        "{mode: sync, durability: required | preferred, degrade_after: S} (see docs).",
    )
    schema_file: str | None = spec(
        SOME_TEXT, default=None, key="schema", description="SQL applied on every primary."
    )
    tables: tuple[TableSpec, ...] = spec(Items(Model(TableSpec)), default=())
    credentials: CredentialsSpec = spec(Model(CredentialsSpec), default=CredentialsSpec())
    health: HealthSpec = spec(Model(HealthSpec), default=HealthSpec())
    logs: LogsSpec = spec(
        Model(LogsSpec),
        default=LogsSpec(),
        description="Log rotation of the containers (applies to containers made from now on).",
    )
    postgres: dict[str, str | int | float | bool] = spec(
        Table(TEXT, Setting()),
        factory=_no_settings,
        description="Extra postgresql.conf parameters for every node.",
    )
    pooler: PoolerSpec | None = spec(
        Optional(Model(PoolerSpec)),
        default=None,
        description="A PgBouncer per node (see docs/topology.md#poolers).",
    )
    failover: FailoverSpec = spec(
        Model(FailoverSpec),
        default=FailoverSpec(),
        description="manual (default) or automatic failover by `shardctl monitor`.",
    )
    backup: BackupSpec | None = spec(
        Optional(Model(BackupSpec)),
        default=None,
        description="WAL archiving and base backups (see docs/backup.md).",
    )
    shards: tuple[ShardSpec, ...] = spec(Items(Model(ShardSpec), min_length=1))
