"""shardctl: operate a sharded PostgreSQL cluster."""

from __future__ import annotations

__version__ = "0.1.0"

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
from shardctl.ring import Ring
from shardctl.router import Router, Routing
from shardctl.topology import Topology

__all__ = [
    "CatalogError",
    "CheckFailed",
    "DatabaseUnavailable",
    "InfrastructureError",
    "KeyNotOwned",
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
