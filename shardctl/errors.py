"""The exception tree of shardctl.

Every error a user can cause or meet carries the exit code the CLI returns for it::

    ShardctlError                     (exit 1)
    ├── NothingToDo                   (exit 0)  the command has nothing to do (one line, no error)
    ├── CheckFailed                   (exit 1)  a health or data check did not pass
    ├── UsageError                    (exit 2)  bad command-line input
    │   └── TopologyError             (exit 2)  topology.yaml is missing or invalid
    ├── InfrastructureError           (exit 3)  Docker or PostgreSQL is not there or not ready
    │   ├── DockerUnavailable         (exit 3)  the Docker engine does not answer
    │   ├── DatabaseUnavailable       (exit 3)  a PostgreSQL node does not answer
    │   └── ProvisioningError         (exit 3)  a container or node could not be made ready
    ├── CatalogError                  (exit 1)  the ring catalog is missing or inconsistent
    ├── RoutingError                  (exit 1)  the Router could not place a query
    │   └── KeyNotOwned               (exit 1)  a node refused a write: SQLSTATE SC001 (fencing)
    ├── ReshardingError               (exit 1)  a reshard step was refused or failed
    └── RoleChangeError               (exit 1)  a switchover or failover could not be done

The CLI catches ``ShardctlError`` in one place and prints its message; anything else is a bug.
"""

from __future__ import annotations

import time


class ShardctlError(Exception):
    """Root of every error shardctl raises on purpose."""

    exit_code = 1
    detail: str | None = None
    """The underlying error (a driver's or the Docker SDK's), shown only under ``--verbose``."""


class NothingToDo(ShardctlError):
    """The command has nothing to do: not an error, the CLI prints the message and exits 0."""

    exit_code = 0


class CheckFailed(ShardctlError):
    """A health, distribution or verification check did not pass."""

    exit_code = 1


class UsageError(ShardctlError):
    """The command line asked for something that cannot be done."""

    exit_code = 2


class TopologyError(UsageError):
    """The topology file is missing or invalid; the message names file, line and problem."""


class InfrastructureError(ShardctlError):
    """A piece of infrastructure (Docker engine, database) cannot be reached."""

    exit_code = 3


class DockerUnavailable(InfrastructureError):
    """The Docker engine does not answer."""


class DatabaseUnavailable(InfrastructureError):
    """A PostgreSQL node does not answer."""


class ProvisioningError(InfrastructureError):
    """A node could not be created, started or made ready."""


class CatalogError(ShardctlError):
    """The ring catalog in the cluster is missing, unreadable or disagrees with itself."""

    exit_code = 1


class RoutingError(ShardctlError):
    """The Router could not place a query on the node that owns its key."""

    exit_code = 1


class KeyNotOwned(RoutingError):
    """A node refused a write to a key it does not own (server-side fencing, SQLSTATE SC001).

    The Router catches it, refreshes its ring and retries on the new owner; callers see it only
    when the ring stays stale for longer than the Router's deadline.
    """

    def __init__(self, message: str, *, node: str = "", key: object = None) -> None:
        super().__init__(message)
        self.node = node
        self.key = key
        self.seen_at = time.monotonic()
        """When the refusal arrived (``time.monotonic()``): a ring read started later is fresh."""


class ReshardingError(ShardctlError):
    """A resharding step failed or was refused; the state stays resumable."""

    exit_code = 1


class RoleChangeError(ShardctlError):
    """A switchover or failover could not be done (exit 1); nothing was changed unless said."""

    exit_code = 1
