"""The ``shardctl`` command line: parse, call one library function, render. Nothing else.

Each module registers the commands of one concern on the shared typer ``app``. A run of one
command imports only the module that registers it (:data:`COMMANDS`), ``--version`` none;
``--help``, ``help``, completion and ``from shardctl.cli import app`` import them all
(:func:`tree`; not called load: a command module has that name).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shardctl.cli import app as _app_module  # typer and the root options: every run needs them

if TYPE_CHECKING:
    import typer

    from shardctl.cli.app import app as app  # at run time: __getattr__, every command

# Importing the submodule made the package's ``app`` that module; ``from shardctl.cli import
# app`` means the typer app with every command, which __getattr__ gives.
globals().pop("app", None)

MODULES = (
    "backup",
    "rolling",
    "cluster",
    "connect",
    "data",
    "failover",
    "history",
    "load",
    "logs",
    "metrics",
    "monitor",
    "replication",
    "reshard",
)
"""The command modules, in the order their commands appear in ``--help``'s sections."""

COMMANDS = {
    "backup": "backup",
    "backups": "backup",
    "restore": "backup",
    "restart": "rolling",
    "reinit": "rolling",
    "validate": "cluster",
    "schema": "cluster",
    "compose": "cluster",
    "up": "cluster",
    "down": "cluster",
    "status": "cluster",
    "dsn": "connect",
    "psql": "connect",
    "distribution": "data",
    "ring": "data",
    "switchover": "failover",
    "failover": "failover",
    "history": "history",
    "load": "load",
    "logs": "logs",
    "metrics": "metrics",
    "monitor": "monitor",
    "verify-replication": "replication",
    "add-shard": "reshard",
    "rebalance": "reshard",
    "remove-shard": "reshard",
}
"""Each command and the module that registers it (``tests/unit/cli/test_startup.py`` holds
this to what the modules register)."""


def tree(command: str | None = None) -> typer.Typer:
    """The app with ``command`` registered (None, or a command shardctl does not have: every
    command, in :data:`MODULES`' order whatever was imported before)."""
    app = _app_module.app
    module = COMMANDS.get(command or "")
    if module is not None:
        importlib.import_module(f"shardctl.cli.{module}")
        return app
    for name in MODULES:
        importlib.import_module(f"shardctl.cli.{name}")
    rank = {f"shardctl.cli.{name}": i for i, name in enumerate(MODULES)}
    app.registered_commands.sort(key=lambda info: rank.get(info.callback.__module__, -1))
    return app


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the console script (see :func:`shardctl.cli.app.main`)."""
    from shardctl.cli.app import invoked
    from shardctl.cli.app import main as run

    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] != ["--version"]:  # first, it is answered before any command is looked at
        tree(invoked(argv))
    run(args)


def __getattr__(name: str) -> Any:
    if name == "app":  # every command, as --help shows them
        return tree()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "MODULES", "app", "main", "tree"]
