"""Into a node: ``shardctl psql`` and ``shardctl dsn``.

Both follow the acting roles (after a switchover the primary's port is another): a shard
means its acting primary, or with ``--replica`` one of its replicas; a node name means that node.
The password never appears on a command line: ``psql`` here reads it from a temporary pgpass
file (mode 0600, removed when psql exits); psql inside the node's container, from the
environment of the ``docker exec`` that starts it (``-e PGPASSWORD`` without a value).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shardctl.cli import complete
from shardctl.cli.app import OPERATIONS, TopologyOption, command, open_cluster
from shardctl.errors import UsageError

if TYPE_CHECKING:
    from shardctl.config.credentials import Credentials, Login
    from shardctl.config.topology import Node, Topology


SOCKET_DIR = "/tmp"
"""Where the server's socket is inside a node's container (``unix_socket_directories``)."""


class RoleName(StrEnum):
    """The database role to connect as: the application's, or shardctl's superuser."""

    APP = "app"
    SUPERUSER = "superuser"


TargetArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="[SHARD|NODE]",
        help="A shard (its acting primary) or a node [default: the first shard].",
        autocompletion=complete.target,
        show_default=False,
    ),
]
ReplicaOption = Annotated[
    bool, typer.Option("--replica", help="A replica of the shard instead of its primary.")
]


def pick(topology: Topology, target: str | None, replica: bool) -> Node:
    """The node ``target`` means, with the acting roles: a shard's primary (or first replica
    with ``replica``), or the node so named (exit 2 for an unknown name, or ``--replica`` with
    a node, or a shard without replicas)."""
    shards = [s.name for s in topology.spec.shards]
    name = target if target is not None else shards[0]
    if name in shards:
        nodes = topology.shard_nodes(name)
        if not replica:
            return nodes[0]
        if len(nodes) < 2:
            raise UsageError(f"--replica: {name} has no replica")
        return nodes[1]
    if replica:
        raise UsageError(f"--replica takes a shard, not the node {name!r}")
    for node in topology.nodes:
        if node.name == name:
            return node
    raise UsageError(
        f"no shard or node {name!r} in {topology.path}: shards are {', '.join(shards)}; "
        "`shardctl validate` lists the nodes"
    )


@command(
    group=OPERATIONS,
    summary="A libpq URI of a shard's primary or replica, or of a node.",
    example="shardctl dsn shard-1\n"
    'psql "$(shardctl dsn shard-1 --replica --with-password)"\n'
    "shardctl dsn shard-1-replica-1 --role superuser",
)
def dsn(
    target: TargetArgument = None,
    replica: ReplicaOption = False,
    role: Annotated[
        RoleName, typer.Option("--role", help="The role the URI connects as.")
    ] = RoleName.APP,
    with_password: Annotated[
        bool,
        typer.Option(
            "--with-password",
            help="Put the password in the URI (for scripts; it then shows in process lists).",
        ),
    ] = False,
    topology: TopologyOption = None,
) -> None:
    """Print a libpq URI (postgresql://...) of a shard's acting primary, a replica, or a node;
    without the password unless --with-password."""
    from shardctl.cli import render
    from shardctl.config.credentials import Login
    from shardctl.db.uri import uri

    with open_cluster(topology, nodes=[target] if target else [], running=True) as cluster:
        node = pick(cluster.topology, target, replica)
        login = Login(role.value)
        text = uri(
            node,
            cluster.credentials(),
            cluster.topology.spec.database,
            login=login,
            with_password=with_password,
        )
    if with_password:
        render.err_console.print(
            "[yellow]warning[/]: the URI holds the password; keep it out of shell history, "
            "logs and command lines (prefer a pgpass file or PGPASSWORD)",
            highlight=False,
        )
    typer.echo(text)


@command(
    group=OPERATIONS,
    summary="Open psql on a shard's primary or replica, or on a node.",
    example="shardctl psql shard-1\n"
    "shardctl psql shard-1 --replica -- -c 'SELECT pg_is_in_recovery()'\n"
    "shardctl psql shard-0-replica-1 --role app",
)
def psql(
    target: TargetArgument = None,
    psql_args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[-- PSQL_ARGS...]",
            help="Arguments for psql, after --.",
            show_default=False,
        ),
    ] = None,
    replica: ReplicaOption = False,
    role: Annotated[
        RoleName, typer.Option("--role", help="The role psql connects as.")
    ] = RoleName.SUPERUSER,
    topology: TopologyOption = None,
) -> None:
    """Open psql on a shard's acting primary (or a replica), or on a node, as the role asked.

    Uses psql from this machine when it is installed, else psql inside the node's container
    (through the docker command). Exits with psql's exit code.
    """
    from shardctl.config.credentials import Login

    extra = list(psql_args or [])
    if target is not None and target.startswith("-"):  # `shardctl psql -- -c ...`: no target
        extra, target = [target, *extra], None
    with open_cluster(topology, nodes=[target] if target else [], running=True) as cluster:
        node = pick(cluster.topology, target, replica)
        credentials = cluster.credentials()
        database = cluster.topology.spec.database
        login = Login(role.value)
    local = shutil.which("psql")
    if local is not None:
        code = _local_psql(local, node, credentials, database, login, extra)
    else:
        code = _container_psql(node, credentials, database, login, extra)
    raise typer.Exit(code)


def _local_psql(
    psql: str,
    node: Node,
    credentials: Credentials,
    database: str,
    login: Login,
    extra: list[str],
) -> int:
    from shardctl.config.addresses import address
    from shardctl.db.uri import pgpass_line

    host, port = address(node)
    user, password = credentials.login(login)
    env = {
        **os.environ,
        "PGHOST": host,
        "PGPORT": str(port),
        "PGDATABASE": database,
        "PGUSER": user,
        "PGAPPNAME": f"shardctl psql {node.name}",
    }
    if node.sslmode is not None:
        env["PGSSLMODE"] = node.sslmode
    if credentials.tls_root is not None:
        env["PGSSLROOTCERT"] = str(credentials.tls_root)
    env.pop("PGPASSWORD", None)
    with _pgpass(pgpass_line(host, port, database, user, password)) as passfile:
        env["PGPASSFILE"] = str(passfile)
        return _run([psql, *extra], env)


@contextmanager
def _pgpass(line: str) -> Iterator[Path]:
    """A password file only this user can read, removed afterwards whatever happens."""
    handle, name = tempfile.mkstemp(prefix="shardctl-pgpass-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(line)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _container_psql(
    node: Node, credentials: Credentials, database: str, login: Login, extra: list[str]
) -> int:
    docker = shutil.which("docker")
    if docker is None:
        raise UsageError(
            "psql is not installed here, and running it inside the container needs the "
            "docker command: install either (e.g. the postgresql-client package)"
        )
    user, password = credentials.login(login)
    interactive = ["-i", "-t"] if sys.stdin.isatty() and sys.stdout.isatty() else ["-i"]
    endpoint = node.placement.endpoint
    engine = ["-H", endpoint] if endpoint else []  # else DOCKER_HOST or the docker context
    command = [
        docker,
        *engine,
        "exec",
        *interactive,
        "-e",
        "PGPASSWORD",  # no value: docker takes it from its own environment, not argv
        node.container,
        "psql",
        "-h",
        SOCKET_DIR,
        "-U",
        user,
        "-d",
        database,
        *extra,
    ]
    return _run(command, {**os.environ, "PGPASSWORD": password})


def _run(command: list[str], env: dict[str, str]) -> int:
    """Run an interactive child; Ctrl-C is the child's (psql cancels its query), not ours."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.run(command, env=env, check=False, preexec_fn=_default_sigint).returncode
    finally:
        signal.signal(signal.SIGINT, previous)


def _default_sigint() -> None:
    """In the child: Ctrl-C as usual (an ignored SIGINT would be inherited across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
