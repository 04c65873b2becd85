"""Connections to the cluster's nodes: :func:`conninfo`, the one connection string builder (a
node's server or its pooler, as any login), :func:`connect`, and :func:`on_nodes`, the same work
on several nodes at once (through :mod:`shardctl.util.fanout`).

A command that reads several things from every node in a row (``status``: the catalog, the
facts, what is in flight) opens each node once inside :func:`shared`: every :func:`connect` in
the block hands out the node's connection left idle by the one before, instead of a new one.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import make_conninfo

from shardctl.config.addresses import Via, address
from shardctl.config.credentials import Credentials, Login
from shardctl.config.topology import Node, Topology
from shardctl.db.deadlines import WATCHDOG
from shardctl.errors import DatabaseUnavailable, ShardctlError
from shardctl.util import fanout
from shardctl.util.text import (
    first_line as first_line,  # re-exported: pg.first_line(exc) reads well
)

T = TypeVar("T")
RV = TypeVar("RV")

DEADLINE = 30.0
"""Seconds one round trip of shardctl's own connections may take by default (a statement, a
commit, a COPY chunk): past it the watchdog cuts the connection and the caller gets an error
naming the node. What takes longer on purpose (a promotion, a schema, a deep checksum) says so."""


def _application_name() -> str:
    """``shardctl user@host``: who connects, in pg_stat_activity and on a reshard's record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"shardctl {user}@{socket.gethostname()}"[:63]  # the server's limit (NAMEDATALEN)


APPLICATION_NAME = _application_name()


def conninfo(
    node: Node,
    credentials: Credentials,
    dbname: str,
    *,
    timeout: float = 5.0,
    login: Login = Login.SUPERUSER,
    via: Via = "direct",
    **extra: str,
) -> str:
    """A libpq connection string for ``node`` as ``login`` (shardctl's own work: the superuser;
    the Router and ``load``: the application role), with the topology's sslmode; ``via``
    the node's pooler or straight to its server."""
    host, port = address(node, via)
    user, password = credentials.login(login)
    if node.sslmode is not None:
        extra.setdefault("sslmode", node.sslmode)
    if credentials.tls_root is not None:
        extra.setdefault("sslrootcert", str(credentials.tls_root))
    return make_conninfo(
        host=host,
        port=str(port),
        dbname=dbname,
        user=user,
        password=password,
        connect_timeout=str(max(1, round(timeout))),
        application_name=APPLICATION_NAME,
        **extra,
    )


class BoundedConnection(psycopg.Connection[tuple[object, ...]]):
    """A connection whose every round trip with the server ends within :attr:`deadline`
    seconds: a frozen server or a commit stuck on a lost standby becomes an OperationalError
    ("no answer within ..."), never a hang (see :mod:`shardctl.db.deadlines`)."""

    deadline: float | None = DEADLINE
    kept: bool = False
    """Inside :func:`shared`: leaving ``with`` (or ``close()``) hands it back instead."""
    shared_key: tuple[str, str] = ("", "")
    """Its node and database, while :attr:`kept`."""

    def close(self) -> None:
        """Close it; inside :func:`shared`, hand it back for the next :func:`connect`."""
        if self.kept:
            _SHARING.give_back(self)
            return
        super().close()

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        """Consume ``gen`` as psycopg does, guarded by the process's watchdog."""
        if self.deadline is None:
            return super().wait(gen, interval, timeout)
        until = time.monotonic() + self.deadline
        try:
            with WATCHDOG.guard(self, until):
                return super().wait(gen, interval, timeout)
        except psycopg.OperationalError:
            if time.monotonic() < until:
                raise
            raise psycopg.OperationalError(
                f"no answer within {self.deadline:g} s (the server is frozen, or a commit "
                "waits for a synchronous standby)"
            ) from None


class _Sharing:
    """The connections of a :func:`shared` block: idle ones by node and database, in use ones."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.idle: dict[tuple[str, str], BoundedConnection] = {}
        self.busy: set[BoundedConnection] = set()

    def take(self, node: str, dbname: str | None) -> BoundedConnection | None:
        """An idle connection to ``node`` (to ``dbname``; to any database when None)."""
        with self.lock:
            if not self.depth:
                return None
            keys = [k for k in self.idle if k[0] == node and dbname in (None, k[1])]
            for key in sorted(keys, key=lambda k: k[1] == "postgres"):  # the cluster's own first
                conn = self.idle.pop(key)
                if not conn.broken and not conn.closed and _is_idle(conn):
                    self.busy.add(conn)
                    return conn
                self.busy.add(conn)
                self._close(conn)
            return None

    def keep(self, node: str, dbname: str, conn: BoundedConnection) -> None:
        """Lend a new connection out, to come back to this block when its user closes it."""
        with self.lock:
            if self.depth:
                conn.kept = True
                conn.shared_key = (node, dbname)
                self.busy.add(conn)

    def give_back(self, conn: BoundedConnection) -> None:
        with self.lock:
            self.busy.discard(conn)
            key = conn.shared_key
            if not self.depth or key in self.idle:
                self._close(conn)
            else:
                self.idle[key] = conn

    def close_all(self, *, busy: bool = True) -> None:
        with self.lock:
            for conn in [*self.idle.values(), *(self.busy if busy else ())]:
                self._close(conn)  # one still busy (a thread left behind) ends with it
            self.idle.clear()
            if busy:
                self.busy.clear()

    @staticmethod
    def _close(conn: BoundedConnection) -> None:
        conn.kept = False
        with contextlib.suppress(psycopg.Error):
            psycopg.Connection.close(conn)


def _is_idle(conn: BoundedConnection) -> bool:
    return conn.info.transaction_status is psycopg.pq.TransactionStatus.IDLE


_SHARING = _Sharing()


@contextmanager
def shared() -> Iterator[None]:
    """Within the block, one connection per node and database, reused by every :func:`connect`
    that finds it idle; all closed when the block ends (the outermost, when nested)."""
    with _SHARING.lock:
        _SHARING.depth += 1
    try:
        yield
    finally:
        with _SHARING.lock:
            _SHARING.depth -= 1
            last = not _SHARING.depth
        if last:
            _SHARING.close_all()


def fresh_sessions() -> None:
    """Inside :func:`shared`: the next :func:`connect` to each node opens a new session (after
    a configuration reload, which a new session is sure to have read)."""
    _SHARING.close_all(busy=False)


def connect(
    node: Node,
    credentials: Credentials,
    dbname: str,
    *,
    timeout: float = 5.0,
    local_commit: bool = False,
    deadline: float | None = DEADLINE,
    any_database: bool = False,
) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to ``node``; DatabaseUnavailable when it does not answer.

    ``timeout`` bounds connecting (libpq's ``connect_timeout``, which psycopg enforces on the
    client side: a paused server's proxy completes the TCP handshake, nothing more);
    ``deadline`` bounds every later round trip (None: unbounded, for nothing shardctl does).

    ``local_commit``: its commits never wait for a synchronous replica (shardctl's own
    idempotent set-up, which must not hang on a ``replication: sync`` shard whose replicas are
    not there yet; ``up`` makes them next).

    ``any_database``: the work reads only what is the same in every database (replication,
    settings), so inside :func:`shared` a connection to another database of the node will do.
    """
    if not local_commit:
        found = _SHARING.take(node.name, None if any_database else dbname)
        if found is not None:
            found.deadline = deadline
            return found
    info = conninfo(node, credentials, dbname, timeout=timeout)
    if local_commit:
        info = make_conninfo(info, options="-c synchronous_commit=local")
    try:
        conn = BoundedConnection.connect(info, autocommit=True)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"{node.name}: cannot connect: {first_line(exc)}") from None
    conn.deadline = deadline
    if not local_commit:
        _SHARING.keep(node.name, dbname, conn)
    return conn


LOCAL_COMMIT = "SET LOCAL synchronous_commit = local"


@contextmanager
def bookkeeping(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction of shardctl's own bookkeeping (catalog, fence, records): its commit
    never waits for a synchronous standby, so it cannot hang on a ``sync`` shard whose standby
    is gone. Inside a transaction the caller opened it is a savepoint and changes nothing:
    the caller's commit decides (it may carry data that must wait)."""
    if conn.info.transaction_status is not psycopg.pq.TransactionStatus.IDLE:
        with conn.transaction():
            yield
        return
    with conn.transaction():
        conn.execute(LOCAL_COMMIT)
        yield


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


# ------------------------------------------------------------------ every node at once


@contextmanager
def node_errors(node: Node, doing: str) -> Iterator[None]:
    """Turn a database error inside into DatabaseUnavailable naming ``node`` and ``doing``."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"{node.name}: {doing}: {first_line(exc)}") from None


def on_nodes(
    topology: Topology,
    credentials: Credentials,
    nodes: Sequence[Node],
    work: Callable[[psycopg.Connection[Any]], T],
    *,
    timeout: float,
    strict: bool,
    doing: str,
    deadline: float | None = DEADLINE,
) -> dict[str, T | BaseException]:
    """Run ``work(conn)`` on each node at once (usually the primaries), keyed by node name;
    errors raised (strict) or returned: a node that cannot be asked is a DatabaseUnavailable
    naming it and ``doing``.
    """
    database = topology.spec.database

    def one(node: Node) -> T:
        with (
            node_errors(node, doing),
            connect(node, credentials, database, timeout=timeout, deadline=deadline) as c,
        ):
            return work(c)

    results = fanout.gather({node.name: partial(one, node) for node in nodes})
    for result in results.values():
        if isinstance(result, BaseException) and (
            strict or not isinstance(result, DatabaseUnavailable)
        ):
            raise result
    return results
