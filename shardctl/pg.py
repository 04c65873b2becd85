"""Connections to the cluster's nodes: where a node is reached from here, and how."""

from __future__ import annotations

from urllib.parse import urlparse

import psycopg
from psycopg.conninfo import make_conninfo

from shardctl.credentials import Credentials
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.text import first_line as first_line  # re-exported: pg.first_line(exc) reads well
from shardctl.topology import Node

CONTAINER_PORT = 5432
APPLICATION_NAME = "shardctl"


def address(node: Node) -> tuple[str, int]:
    """Host and port that reach ``node`` from this machine."""
    host = node.bind_address
    if node.engine and node.engine.startswith(("tcp://", "ssh://", "http://", "https://")):
        host = urlparse(node.engine).hostname or host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return host, node.host_port


def conninfo(
    node: Node, credentials: Credentials, dbname: str, *, timeout: float = 5.0, **extra: str
) -> str:
    """A libpq connection string for ``node`` as the superuser."""
    host, port = address(node)
    return make_conninfo(
        host=host,
        port=str(port),
        dbname=dbname,
        user=credentials.superuser,
        password=credentials.superuser_password,
        connect_timeout=str(max(1, round(timeout))),
        application_name=APPLICATION_NAME,
        **extra,
    )


def connect(
    node: Node, credentials: Credentials, dbname: str, *, timeout: float = 5.0
) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to ``node``; DatabaseUnavailable when it does not answer."""
    try:
        return psycopg.connect(
            conninfo(node, credentials, dbname, timeout=timeout), autocommit=True
        )
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"{node.name}: cannot connect: {first_line(exc)}") from None


def failure_reason(exc: BaseException) -> str:
    """Why a node could not be asked, in a few words for a table cell or a one-line error."""
    if isinstance(exc, ShardctlError):
        text = str(exc)
        return text.split(": ", 1)[1] if ": " in text else text  # drop the node name prefix
    if isinstance(exc, TimeoutError):
        return f"did not answer: {exc}"
    if isinstance(exc, psycopg.Error):
        return first_line(exc)
    return f"{type(exc).__name__}: {exc}"
