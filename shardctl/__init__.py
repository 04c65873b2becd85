"""shardctl: operate a sharded PostgreSQL cluster.

The public API is re-exported here lazily, so ``import shardctl`` (and ``shardctl --version``)
loads nothing heavier than the exception tree: psycopg, pydantic and the Docker SDK come in
with the first name that needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from shardctl.errors import (
    CatalogError,
    CheckFailed,
    DatabaseUnavailable,
    InfrastructureError,
    KeyNotOwned,
    ReshardingError,
    RoutingError,
    ShardctlError,
    TopologyError,
    UsageError,
)

__version__ = "0.1.0"

_LAZY = {
    "Cluster": "shardctl.ops.cluster",
    "Ledger": "shardctl.workload.ledger",
    "Login": "shardctl.config.credentials",
    "Ring": "shardctl.ring.hashing",
    "Router": "shardctl.router.router",
    "Routing": "shardctl.router.watcher",
    "Topology": "shardctl.config.topology",
}

if TYPE_CHECKING:
    from shardctl.config.credentials import Login
    from shardctl.config.topology import Topology
    from shardctl.ops.cluster import Cluster
    from shardctl.ring.hashing import Ring
    from shardctl.router.router import Router
    from shardctl.router.watcher import Routing
    from shardctl.workload.ledger import Ledger


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shardctl' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "CatalogError",
    "CheckFailed",
    "Cluster",
    "DatabaseUnavailable",
    "InfrastructureError",
    "KeyNotOwned",
    "Ledger",
    "Login",
    "ReshardingError",
    "Ring",
    "Router",
    "Routing",
    "RoutingError",
    "ShardctlError",
    "Topology",
    "TopologyError",
    "UsageError",
    "__version__",
]
