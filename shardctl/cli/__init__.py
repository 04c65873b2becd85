"""The ``shardctl`` command line: parse, call one library function, render. Nothing else.

Each module registers the commands of one concern on the shared typer ``app``. A run of one
command imports only the module that registers it (:data:`COMMANDS`), ``--version`` none;
``--help``, ``help``, completion and ``from shardctl.cli import app`` import them all
(:func:`tree`; not called load: a command module has that name). A plain ``status`` runs
before typer is imported at all (:mod:`shardctl.cli.statusrun`), so this package imports
typer only when a run needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

    from shardctl.cli.app import app as app  # at run time: _Package.app, every command

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
    app: typer.Typer = importlib.import_module("shardctl.cli.app").app
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
    from shardctl.cli import statusrun

    argv = list(sys.argv[1:] if args is None else args)
    quick = statusrun.plain_args(argv)
    if quick is not None:
        statusrun.run(quick)

    from shardctl.cli.app import invoked
    from shardctl.cli.app import main as run

    if argv[:1] != ["--version"]:  # first, it is answered before any command is looked at
        tree(invoked(argv))
    run(args)


class _Package(types.ModuleType):
    """This package's module type: ``shardctl.cli.app`` means the typer app with every command
    (:func:`tree`), not the submodule of that name, whenever the submodule is first imported
    (the import system then records it here, which the setter ignores; it stays in
    ``sys.modules``)."""

    @property
    def app(self) -> Any:
        return tree()

    @app.setter
    def app(self, _submodule: Any) -> None:
        pass


sys.modules[__name__].__class__ = _Package


__all__ = ["COMMANDS", "MODULES", "app", "main", "tree"]
