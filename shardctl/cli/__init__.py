"""The ``shardctl`` command line: parse, call one library function, render. Nothing else.

Each module registers the commands of one concern on the shared typer ``app``.
"""

from shardctl.cli import cluster, data, failover, load, replication, reshard  # noqa: F401
from shardctl.cli.app import app, main

__all__ = ["app", "main"]
