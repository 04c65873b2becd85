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
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

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


class ShardSpec(_Model):
    """One shard: a primary and its streaming replicas."""

    name: Name
    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS)
    port: Port | None = Field(
        default=None, description="Host port of the primary; replica i gets port + i."
    )
    engine: str | None = Field(
        default=None,
        description="Docker endpoint (DOCKER_HOST style) for this shard; default the local engine.",
    )
    replication: Replication | None = Field(
        default=None, description="async or sync for this shard [default: the top-level key]."
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
    shards: tuple[ShardSpec, ...] = Field(min_length=1)


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
    primary_name: str

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
    def nodes(self) -> tuple[Node, ...]:
        """Every node in declared order: per shard, the primary then its replicas."""
        return tuple(node for shard in self.spec.shards for node in self.shard_nodes(shard.name))

    def shard_nodes(self, shard_name: str) -> tuple[Node, ...]:
        """The acting primary, then the replicas, of one shard."""
        index, shard = self._shard(shard_name)
        base = shard.port if shard.port is not None else self.spec.base_port + index * PORT_STRIDE
        primary = self.acting_primary(shard.name)
        nodes = (
            Node(
                cluster=self.cluster,
                shard=shard.name,
                name=name,
                role=Role.PRIMARY if name == primary else Role.REPLICA,
                index=i,
                host_port=base + i,
                bind_address=self.spec.bind_address,
                engine=shard.engine,
                primary_name=primary,
            )
            for i, name in enumerate(
                [f"{shard.name}-primary"]
                + [f"{shard.name}-replica-{r}" for r in range(1, shard.replicas + 1)]
            )
        )
        return tuple(sorted(nodes, key=lambda node: node.role is not Role.PRIMARY))

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


def default_path() -> Path:
    """The topology path used when none is given: $SHARDCTL_TOPOLOGY or ./topology.yaml."""
    return Path(os.environ.get(TOPOLOGY_ENV, DEFAULT_TOPOLOGY))


def load(path: Path | str | None = None) -> Topology:
    """Read, parse and validate a topology file; raise TopologyError naming file and line."""
    path = Path(path) if path is not None else default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(
            f"{path}: no such topology file (pass -f PATH or set ${TOPOLOGY_ENV})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read the topology file: {exc}") from None
    return parse(text, path)


def parse(text: str, path: Path) -> Topology:
    """Validate topology text; ``path`` names it in errors and anchors relative paths."""
    data, lines = _compose(text, path)
    try:
        spec = TopologySpec.model_validate(data)
    except ValidationError as exc:
        errors = _rank(exc.errors())
        where, message = _describe(errors[0])
        raise TopologyError(_located(path, lines, where, message, len(errors) - 1)) from None
    if os.environ.get(IMAGE_ENV):
        spec = spec.model_copy(update={"image": os.environ[IMAGE_ENV]})
    topology = Topology(spec=spec, path=path)
    problems = list(_check_semantics(topology))
    if problems:
        where, message = problems[0]
        raise TopologyError(_located(path, lines, where, message, len(problems) - 1))
    return topology


Loc = tuple[str | int, ...]


def _compose(text: str, path: Path) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML into plain data plus the 1-based line of every mapping key and item."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise TopologyError(f"{path}:{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from None
    if root is None:
        raise TopologyError(
            f"{path}:1: the file is empty; expected a mapping with at least 'cluster' and 'shards'"
        )
    if not isinstance(root, yaml.MappingNode):
        raise TopologyError(
            f"{path}:{root.start_mark.line + 1}: expected a mapping of topology keys "
            f"(cluster, shards, ...), got {_yaml_kind(root)}"
        )
    lines: dict[Loc, int] = {(): root.start_mark.line + 1}
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, loc: Loc) -> Any:
        lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in result:
                    raise TopologyError(
                        f"{path}:{key_node.start_mark.line + 1}: key {key!r} appears twice"
                    )
                lines[(*loc, key)] = key_node.start_mark.line + 1
                result[key] = build(value_node, (*loc, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*loc, i)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    return build(root, ()), lines


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


def _yaml_kind(node: yaml.Node) -> str:
    return "a list" if isinstance(node, yaml.SequenceNode) else f"the value {node.value!r}"


def _describe(error: ErrorDetails) -> tuple[Loc, str]:
    """Turn one pydantic error into (location, message a person can act on)."""
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = (
            sorted(f.alias or name for name, f in parent.model_fields.items()) if parent else []
        )
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = (
            f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(allowed)}"
        )
        return loc, f"unknown key {loc[-1]!r}{suggestion}"
    if kind == "missing":
        return loc, "this key is required"
    if kind == "string_pattern_mismatch":
        return loc, (
            f"{given!r} is not a valid name (expected lowercase letters, digits and '-', "
            "starting with a letter)"
            if loc and _is_name(loc)
            else f"{given!r} is not a valid SQL identifier (letters, digits, '_')"
        )
    if kind == "too_short" and loc == ("shards",):
        return loc, "at least one shard is required"
    return loc, f"{error['msg'].lower()} (got {given!r})" if given is not None else error["msg"]


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
        candidates = [inner, *args]
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
    text = f"{path}:{line}: {where + ': ' if where else ''}{message}"
    if more:
        text += f"\n  ({more} more problem{'s' if more > 1 else ''} after fixing this one)"
    return text


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_semantics(topology: Topology) -> Iterator[tuple[Loc, str]]:
    """Rules that span several values: unique names, free ports, an existing schema file."""
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
    owner: dict[tuple[str | None, int], str] = {}
    for i, shard in enumerate(spec.shards):
        for node in topology.shard_nodes(shard.name):
            where: Loc = ("shards", i, "port") if shard.port is not None else ("shards", i)
            taken_by = owner.setdefault((node.engine, node.host_port), node.name)
            if node.host_port > 65535:
                yield where, f"port {node.host_port} of {node.name} is above 65535"
            elif taken_by != node.name:
                yield where, f"port {node.host_port} of {node.name} clashes with {taken_by}"
    tables: set[str] = set()
    for i, table in enumerate(spec.tables):
        if table.name in tables:
            yield ("tables", i, "name"), f"table {table.name!r} is listed twice"
        tables.add(table.name)
    schema = topology.schema_path
    if schema is not None and not schema.is_file():
        yield ("schema",), f"schema file {str(schema)!r} does not exist"


LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(address: str) -> bool:
    """Whether ports published on ``address`` are reachable from this machine only."""
    if address in LOOPBACK_NAMES:
        return True
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
    if creds.superuser == creds.replication_user:
        yield (
            ("credentials", "replication_user"),
            f"the replication role {creds.replication_user!r} must differ from the superuser",
        )
    if not is_loopback(spec.bind_address) and not spec.allow_plaintext:
        yield (
            ("bind_address",),
            f"{spec.bind_address} publishes the nodes' ports beyond this machine without TLS "
            "(not supported yet): keep 127.0.0.1, or set allow_plaintext: true to accept "
            "passwords and data in clear on the network",
        )
