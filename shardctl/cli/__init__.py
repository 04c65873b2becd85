"""The ``shardctl`` command line: parse, call one library function, render. Nothing else.

Each module registers the commands of one concern on the shared typer ``app``.
"""

from shardctl.cli import (  # noqa: F401  (each registers its commands)
    backup,
    cluster,
    connect,
    data,
    failover,
    history,
    load,
    logs,
    metrics,
    monitor,
    replication,
    reshard,
    rolling,
)
from shardctl.cli.app import app, main

__all__ = ["app", "main"]
