"""What ``up`` would change, node by node, and why: ``up --plan``, and the plan ``up`` follows.

Per node the action is the least that brings it to the topology:

``nothing``   it matches
``reload``    only settings a reload applies differ (``ALTER SYSTEM`` + ``pg_reload_conf()``)
``restart``   a setting only a restart applies differs, or one is pending a restart already
``recreate``  what its container is made from differs (image, port, mount, arguments)
``create``    it has no container; ``start``: its container is stopped
``remove``    a pooler the topology no longer declares

Whether a setting needs a restart is the server's own knowledge (``context`` in
``postgres --describe-config`` of the image in use, see :mod:`shardctl.docker.serverinfo`); what a
node has is read from the node itself: its container's ``shardctl.spec`` label and its
``postgresql.auto.conf``. Unknown settings, values the server refuses and a change of major
version are refused here (exit 2), before anything changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from shardctl.config.credentials import Credentials
from shardctl.config.rules import MANAGED_SETTINGS
from shardctl.config.settings import (
    AUTO_CONF,
    ServerCatalog,
    changed,
    located,
    major_change,
    problems,
    read_auto_conf,
)
from shardctl.config.topology import Node, Topology
from shardctl.db import admin, pg
from shardctl.docker import serverinfo
from shardctl.docker.engine import Engines
from shardctl.docker.records import LABEL_POOLER, LABEL_SPEC, config_digest, spec_record
from shardctl.docker.specs import container_spec, data_mount, pooler_spec
from shardctl.errors import DatabaseUnavailable, ProvisioningError


class Change(StrEnum):
    """What ``up`` does to one node."""

    NOTHING = "nothing"
    RELOAD = "reload"
    RESTART = "restart"
    RECREATE = "recreate"
    CREATE = "create"
    START = "start"
    REMOVE = "remove"


ROLLING = frozenset({Change.RESTART, Change.RECREATE})
"""Changes a running node gets through the rolling change: one shard at a time."""


@dataclass(frozen=True)
class NodeChange:
    """One node's action and the differences behind it (``what: old → new``)."""

    shard: str
    node: str
    role: str
    action: Change
    reasons: tuple[str, ...] = ()
    running: bool = True
    """Whether its container runs: only a running node's change rolls (a stopped one is
    made or started by ``up``'s convergence, nothing is connected to it)."""


@dataclass
class Plan:
    """Every node's change, in topology order; the server the image runs."""

    image: str
    version: str
    nodes: list[NodeChange] = field(default_factory=list)

    def action(self, name: str) -> Change:
        """The change planned for the node (or pooler) ``name``."""
        return next((n.action for n in self.nodes if n.node == name), Change.NOTHING)

    def rolling(self) -> dict[str, dict[str, Change]]:
        """Shard → {node: restart or recreate} for the shards a rolling change visits."""
        out: dict[str, dict[str, Change]] = {}
        for change in self.nodes:
            if change.action in ROLLING and change.running:
                out.setdefault(change.shard, {})[change.node] = change.action
        return out

    @property
    def empty(self) -> bool:
        """Whether ``up`` has nothing to do."""
        return all(n.action is Change.NOTHING for n in self.nodes)


def server_catalog(topology: Topology, engines: Engines) -> ServerCatalog:
    """The image's catalog; the topology's settings refused with file:line when it says so."""
    endpoint = engines.endpoints(topology)[0]
    found = serverinfo.catalog(engines, topology.spec.image, topology.spec.postgres, endpoint)
    wrong = list(problems(topology.spec.postgres, found))
    if wrong:
        raise located(topology.path, wrong)
    return found


def plan(topology: Topology, engines: Engines, credentials: Credentials | None) -> Plan:
    """What ``up`` would do to each node of ``topology`` (acting roles); changes nothing."""
    # Asked of the image only when needed (a throw-away container costs a second or two):
    # settings to check or classify, or an image change to check the major version of.
    catalog = _Lazy(topology, engines)
    if topology.spec.postgres:
        catalog.get()
    result = Plan(topology.spec.image, "")
    mounts: dict[object, str] = {}
    for node in topology.nodes:
        endpoint = node.placement
        if endpoint not in mounts:
            volumes = engines.image_volumes(topology.spec.image, endpoint)
            if volumes is None:
                raise ProvisioningError(
                    f"image {topology.spec.image} is not on {endpoint or 'the engine'}"
                )
            mounts[endpoint] = data_mount(volumes)
        result.nodes.append(
            _node_change(topology, engines, credentials, catalog, node, mounts[endpoint])
        )
    result.nodes += _pooler_changes(topology, engines)
    result.version = catalog.found.version if catalog.found is not None else ""
    return result


class _Lazy:
    """The image's :class:`ServerCatalog`, asked for on first use."""

    def __init__(self, topology: Topology, engines: Engines) -> None:
        self.topology, self.engines = topology, engines
        self.found: ServerCatalog | None = None

    def get(self) -> ServerCatalog:
        if self.found is None:
            self.found = server_catalog(self.topology, self.engines)
        return self.found


def _node_change(
    topology: Topology,
    engines: Engines,
    credentials: Credentials | None,
    catalog: _Lazy,
    node: Node,
    mount: str,
) -> NodeChange:
    role = node.role.value
    container = engines.container(node)
    if container is None:
        how = "no container" if engines.has_volume(node) else "new node"
        return NodeChange(node.shard, node.name, role, Change.CREATE, (how,))
    spec = container_spec(topology, node, mount)
    pgdata = spec.environment["PGDATA"]
    if container.image != spec.image:
        # Another image: the data's major version must be the image's.
        version = engines.read_text(container, f"{pgdata}/PG_VERSION") or ""
        if version.strip().isdigit() and int(version) != catalog.get().major:
            problem = major_change(node.name, int(version), catalog.get())
            raise located(topology.path, [(("image",), problem)])
    reasons: list[str] = []
    action = Change.NOTHING
    if container.config != config_digest(spec):
        action = Change.RECREATE
        reasons += spec_differences(container.labels.get(LABEL_SPEC), spec_record(spec))
    auto = engines.read_text(container, f"{pgdata}/{AUTO_CONF}") or ""
    differences = changed(read_auto_conf(auto, MANAGED_SETTINGS), topology.spec.postgres)
    if differences:
        restart = catalog.get().restart_needed({name for name, _, _ in differences})
        if action is Change.NOTHING:
            action = Change.RESTART if restart else Change.RELOAD
        for n, old, new in differences:
            how = "restart" if catalog.get().restart_needed({n}) else "reload"
            reasons.append(f"setting {n}: {old} → {new} ({how})")
    if engines.status(container) != "running":
        action = Change.RECREATE if action is Change.RECREATE else Change.START
        return NodeChange(node.shard, node.name, role, action, ("stopped", *reasons), False)
    if action is Change.NOTHING or action is Change.RELOAD:
        pending = _pending(node, credentials)
        if pending:
            action = Change.RESTART
            reasons += [f"pending restart: {', '.join(pending)}"]
    return NodeChange(node.shard, node.name, role, action, tuple(reasons))


def _pending(node: Node, credentials: Credentials | None) -> list[str]:
    if credentials is None:
        return []
    try:
        with pg.connect(node, credentials, "postgres", timeout=5.0) as conn:
            return admin.pending_restart(conn)
    except DatabaseUnavailable:
        return []


def _pooler_changes(topology: Topology, engines: Engines) -> Iterable[NodeChange]:
    # Named as ``up`` reports them: "<node>-pooler", a removed one by its container's name.
    declared = {node.pooler_container: node for node in topology.pooled_nodes()}
    for node in declared.values():
        name = f"{node.name}-pooler"
        container = engines.container(node, pooler=True)
        spec = pooler_spec(topology, node)
        if container is None:
            yield NodeChange(node.shard, name, "pooler", Change.CREATE, ("new pooler",))
        elif container.config != config_digest(spec):
            reasons = spec_differences(container.labels.get(LABEL_SPEC), spec_record(spec))
            yield NodeChange(node.shard, name, "pooler", Change.RECREATE, tuple(reasons))
    for container in engines.cluster_containers(topology):
        if LABEL_POOLER in container.labels and container.name not in declared:
            shard = container.labels.get("shardctl.shard", "")
            yield NodeChange(
                shard, str(container.name), "pooler", Change.REMOVE, ("no longer declared",)
            )


def spec_differences(old: str | None, new: str) -> list[str]:
    """``what: old → new`` for each part of a container's recorded spec that differs."""
    if not old:
        return ["made by an earlier shardctl (no record of what from): configuration differs"]
    try:
        before = json.loads(old)
    except ValueError:
        return ["its recorded configuration is unreadable"]
    after = json.loads(new)
    out: list[str] = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if key == "command":
            out += _dict_changes("setting", _arguments(a), _arguments(b))
        elif (
            key in ("environment", "ports", "volumes")
            and isinstance(a, dict)
            and isinstance(b, dict)
        ):
            label = {"environment": "environment", "ports": "port", "volumes": "mount"}[key]
            out += _dict_changes(label, a, b)
        elif key == "entrypoint":
            out.append("bootstrap script: changed by this shardctl version")
        else:
            out.append(f"{key}: {_shown(a)} → {_shown(b)}")
    return out or ["configuration differs"]


def _arguments(command: object) -> dict[str, str]:
    """``-c name=value`` pairs of a server command line."""
    found: dict[str, str] = {}
    if isinstance(command, list):
        for i, arg in enumerate(command):
            if arg == "-c" and i + 1 < len(command):
                name, _, value = str(command[i + 1]).partition("=")
                found[name] = value
    return found


def _dict_changes(label: str, a: object, b: object) -> list[str]:
    old = a if isinstance(a, dict) else {}
    new = b if isinstance(b, dict) else {}
    return [
        f"{label} {key}: {_shown(old.get(key))} → {_shown(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _shown(value: object) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
