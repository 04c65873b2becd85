"""The shape of ``topology.yaml`` as the code uses it: frozen models of the file as
written, each field with what it accepts (:mod:`shardctl.config.plain`).

Importing this costs no pydantic: the same models as pydantic's, with their descriptions, are
in :mod:`shardctl.config.shape` (docs/topology.schema.json, and the messages of a file that is
not valid); ``tests/unit/config/test_plain.py`` holds the two to the same fields, defaults and
results.
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

    algorithm: RingAlgorithm = spec(Choice(RingAlgorithm), default=RingAlgorithm.BALANCED)
    vnodes: int = spec(Integer(ge=1, le=10000), default=150)


class TableSpec(Spec):
    """A sharded table and the column whose value picks its shard."""

    name: str = spec(IDENTIFIER)
    key: str = spec(IDENTIFIER, default="id")


class CredentialsSpec(Spec):
    """Where passwords come from; never the passwords themselves."""

    password_env: str | None = spec(SOME_TEXT, default=None)
    password_file: str | None = spec(SOME_TEXT, default=None)
    secrets_file: str | None = spec(SOME_TEXT, default=None)
    superuser: str = spec(IDENTIFIER, default="postgres")
    replication_user: str = spec(IDENTIFIER, default="replicator")
    app_user: str = spec(IDENTIFIER, default="app")
    app_password_env: str | None = spec(SOME_TEXT, default=None)
    app_password_file: str | None = spec(SOME_TEXT, default=None)


class HealthSpec(Spec):
    """Thresholds for replication checks; the CLI options override them."""

    max_lag_bytes: int = spec(Integer(ge=0), default=16 * 1024 * 1024)
    max_lag_seconds: float = spec(Number(ge=0), default=60.0)
    canary_timeout: float = spec(Number(gt=0), default=10.0)
    probe_timeout: float = spec(Number(gt=0), default=5.0)
    monitor_stale_seconds: float = spec(Number(gt=0, le=86400), default=30.0)


class LogsSpec(Spec):
    """Log rotation of every container shardctl makes (Docker's json-file driver)."""

    max_size: str = spec(Text(pattern=r"^[1-9][0-9]{0,5}[kmg]$"), default="10m")
    max_files: int = spec(Integer(ge=1, le=100), default=3)


class TLSSpec(Spec):
    """``tls:`` with the server's own certificate instead of shardctl's generated ones."""

    mode: TLSMode = spec(Choice(TLSMode), default=TLSMode.REQUIRED)
    cert_file: str | None = spec(SOME_TEXT, default=None)
    key_file: str | None = spec(SOME_TEXT, default=None)
    ca_file: str | None = spec(SOME_TEXT, default=None)


class ReplicationSpec(Spec):
    """``replication: {mode: sync, durability: required | preferred}``."""

    mode: Replication = spec(Choice(Replication))
    durability: Durability = spec(Choice(Durability), default=Durability.REQUIRED)
    degrade_after: float = spec(Number(ge=0, le=3600), default=DEFAULT_DEGRADE_AFTER)
    given: frozenset[str] = frozenset()
    """The keys the file wrote (pydantic's ``model_fields_set``): durability and
    degrade_after mean something with ``mode: sync`` only."""


REPLICATION = Form(Choice(Replication), Model(ReplicationSpec))
"""``replication: sync`` (durability required) or ``replication: {mode: sync, ...}``."""
TLS = Form(Choice(TLSMode), Model(TLSSpec))
"""``tls: required`` or ``tls: {cert_file: ..., ...}``."""


class EngineTLSSpec(Spec):
    """Client TLS for a ``tcp://`` Docker endpoint (files relative to the topology)."""

    ca: str | None = spec(SOME_TEXT, default=None)
    cert: str | None = spec(SOME_TEXT, default=None)
    key: str | None = spec(SOME_TEXT, default=None)
    verify: bool = spec(Flag(), default=True)


class EngineSpec(Spec):
    """A Docker engine (a host) nodes can be placed on."""

    endpoint: str = spec(Text(pattern=r"^(unix|tcp|ssh|http|https|npipe)://.+"))
    tls: EngineTLSSpec | None = spec(Optional(Model(EngineTLSSpec)), default=None)
    advertise: str | None = spec(Optional(Text(min_length=1)), default=None)
    bind_address: str | None = spec(Optional(Text(min_length=1)), default=None)
    ssh_client: bool = spec(Flag(), default=True)


class PoolerSpec(Spec):
    """A PgBouncer in front of each node (top level; a shard's own section overrides it)."""

    enabled: bool = spec(Flag(), default=True)
    image: str | None = spec(Optional(Text(min_length=1)), default=None)
    mode: PoolMode = spec(Choice(PoolMode), default=PoolMode.TRANSACTION)
    pool_size: int = spec(Integer(ge=1, le=10000), default=20)
    max_client_conn: int = spec(Integer(ge=1, le=1_000_000), default=1000)
    replicas: bool = spec(Flag(), default=True)
    port_offset: int = spec(Integer(ge=1, le=60000), default=1000)
    max_waiting: int = spec(Integer(ge=0, le=1_000_000), default=0)
    router: bool = spec(Flag(), default=False)


class FailoverSpec(Spec):
    """``failover:`` what ``shardctl monitor`` may do (top level; a shard's own overrides it)."""

    mode: FailoverMode = spec(Choice(FailoverMode), default=FailoverMode.MANUAL)
    detect_seconds: float = spec(Number(ge=1, le=3600), default=5.0)
    hold_down_seconds: float = spec(Number(ge=0, le=86400), default=300.0)


class ShardSpec(Spec):
    """One shard: a primary and its streaming replicas."""

    name: str = spec(NAME)
    replicas: int = spec(Integer(ge=0, le=MAX_REPLICAS), default=1)
    port: int | None = spec(Optional(PORT), default=None)
    engine: str | None = spec(Optional(Text(min_length=1)), default=None)
    replica_engines: tuple[str, ...] = spec(Items(TEXT), default=())
    replication: Replication | ReplicationSpec | None = spec(Optional(REPLICATION), default=None)
    pooler: PoolerSpec | None = spec(Optional(Model(PoolerSpec)), default=None)
    failover: FailoverSpec | None = spec(Optional(Model(FailoverSpec)), default=None)


class RetentionSpec(Spec):
    """How many base backups ``backup`` keeps per cluster (and the WAL they need)."""

    base_backups: int = spec(Integer(ge=1, le=10000), default=7)
    days: float | None = spec(Optional(Number(gt=0, le=36500)), default=None)


class BackupSpec(Spec):
    """Continuous WAL archiving and base backups into a repository (docs/backup.md)."""

    repository: str = spec(Text(min_length=1))
    engine: str | None = spec(Optional(Text(min_length=1)), default=None)
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
    base_port: int = spec(PORT, default=54320)
    bind_address: str = spec(TEXT, default="127.0.0.1")
    engines: dict[str, EngineSpec] = spec(Table(NAME, Model(EngineSpec)), factory=_no_engines)
    spread: Spread = spec(Choice(Spread), default=Spread.NONE)
    tls: TLSMode | TLSSpec = spec(TLS, default=TLSMode.OFF)
    sslmode: SSLMode | None = spec(Optional(Choice(SSLMode)), default=None)
    allow_plaintext: bool = spec(Flag(), default=False)
    ring: RingSpec = spec(Model(RingSpec), default=RingSpec())
    replication: Replication | ReplicationSpec = spec(REPLICATION, default=Replication.ASYNC)
    schema_file: str | None = spec(SOME_TEXT, default=None, key="schema")
    tables: tuple[TableSpec, ...] = spec(Items(Model(TableSpec)), default=())
    credentials: CredentialsSpec = spec(Model(CredentialsSpec), default=CredentialsSpec())
    health: HealthSpec = spec(Model(HealthSpec), default=HealthSpec())
    logs: LogsSpec = spec(Model(LogsSpec), default=LogsSpec())
    postgres: dict[str, str | int | float | bool] = spec(
        Table(TEXT, Setting()), factory=_no_settings
    )
    pooler: PoolerSpec | None = spec(Optional(Model(PoolerSpec)), default=None)
    failover: FailoverSpec = spec(Model(FailoverSpec), default=FailoverSpec())
    backup: BackupSpec | None = spec(Optional(Model(BackupSpec)), default=None)
    shards: tuple[ShardSpec, ...] = spec(Items(Model(ShardSpec), min_length=1))
