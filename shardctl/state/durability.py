"""Where a ``replication: sync`` shard's durability stands, recorded in the cluster.

One row per shard that has had no synchronous standby, in ``shardctl.durability`` on every
primary that answered when it was written (like the ring catalog, so that a failover of the
shard still finds it when the shard's own primary is gone)::

    shard             the shard
    no_standby_since  when shardctl first saw it without a streaming standby
    degraded_since    when its primary began acknowledging writes as async
                      (``durability: preferred``); NULL while it still waits
    missing           the standbys that were not streaming, comma-separated

No row: the shard had a synchronous standby the last time shardctl looked. Rows are written and
deleted by :mod:`shardctl.ops.durability`; :func:`shardctl.ops.rolechange` reads them to say
what a failover may have lost. Every write commits locally (:func:`shardctl.db.pg.bookkeeping`):
it is made precisely when no standby may be there to confirm it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg.errors

from shardctl.config.credentials import Credentials
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.state.locks import CATALOG_INSTALL_LOCK, XACT_LOCK
from shardctl.util.waiting import retrying

DOING = "durability record"

DDL = (
    "CREATE SCHEMA IF NOT EXISTS shardctl",
    """CREATE TABLE IF NOT EXISTS shardctl.durability (
    shard            text PRIMARY KEY,
    no_standby_since timestamptz NOT NULL,
    degraded_since   timestamptz,
    missing          text NOT NULL DEFAULT ''
)""",
    "COMMENT ON TABLE shardctl.durability IS "
    "'shardctl: sync shards without a synchronous standby, and since when; do not edit by hand'",
)
_EXISTS = "SELECT pg_catalog.to_regclass('shardctl.durability') IS NOT NULL"
_SELECT = (
    "SELECT shard, extract(epoch FROM no_standby_since)::float8,"
    " extract(epoch FROM degraded_since)::float8, missing FROM shardctl.durability"
)
_UPSERT = (
    "INSERT INTO shardctl.durability (shard, no_standby_since, degraded_since, missing) "
    "VALUES (%s, to_timestamp(%s), to_timestamp(%s), %s) "
    "ON CONFLICT (shard) DO UPDATE SET no_standby_since = excluded.no_standby_since, "
    "degraded_since = excluded.degraded_since, missing = excluded.missing"
)
_DELETE = "DELETE FROM shardctl.durability WHERE shard = %s"


@dataclass(frozen=True)
class Record:
    """A sync shard seen without a streaming standby (times: seconds since the epoch)."""

    shard: str
    no_standby_since: float
    degraded_since: float | None = None
    """When its primary began acknowledging as async; None while its commits still wait."""
    missing: tuple[str, ...] = ()

    @property
    def degraded(self) -> bool:
        """Whether the shard acknowledges writes without a standby."""
        return self.degraded_since is not None


def read(conn: psycopg.Connection[Any]) -> dict[str, Record]:
    """The records this node holds, by shard (none when the table does not exist)."""
    row = conn.execute(_EXISTS).fetchone()
    if row is None or not row[0]:
        return {}
    found: dict[str, Record] = {}
    for shard, since, degraded, missing in conn.execute(_SELECT).fetchall():
        names = tuple(n for n in str(missing).split(",") if n)
        found[str(shard)] = Record(str(shard), float(since), _float(degraded), names)
    return found


def _float(value: object) -> float | None:
    return None if value is None else float(str(value))


def store(conn: psycopg.Connection[Any], keep: Iterable[Record], drop: Iterable[str]) -> None:
    """Write ``keep`` and delete the records of the shards ``drop`` on this primary, in one
    local commit; the table is made when missing."""
    keep, drop = list(keep), list(drop)
    if not keep and not drop:
        return

    def write() -> None:
        with pg.bookkeeping(conn):
            conn.execute(XACT_LOCK, (CATALOG_INSTALL_LOCK,))
            for statement in DDL:
                conn.execute(statement)
            for record in keep:
                conn.execute(
                    _UPSERT,
                    (
                        record.shard,
                        record.no_standby_since,
                        record.degraded_since,
                        ",".join(record.missing),
                    ),
                )
            for shard in drop:
                conn.execute(_DELETE, (shard,))

    retrying(
        write,
        retry_on=(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject),
        attempts=3,
    )


def read_all(
    topology: Topology, credentials: Credentials, nodes: Sequence[Node], *, timeout: float
) -> tuple[dict[str, Record], list[str]]:
    """The records of every node in ``nodes`` that answers, merged (the earliest degradation
    of a shard wins: the longest window in which writes may lack a standby), and the names of
    the nodes that did not answer."""
    results = pg.on_nodes(
        topology,
        credentials,
        nodes,
        read,
        timeout=timeout,
        strict=False,
        doing=f"reading the {DOING}s",
        deadline=timeout,
    )
    merged: dict[str, Record] = {}
    silent: list[str] = []
    for name, result in results.items():
        if isinstance(result, BaseException):
            silent.append(name)
            continue
        for shard, record in result.items():
            merged[shard] = earliest(merged.get(shard), record)
    return merged, sorted(silent)


def earliest(one: Record | None, other: Record) -> Record:
    """Of two records of a shard, the one that says it degraded first (else waited first)."""
    if one is None:
        return other

    def key(r: Record) -> tuple[float, float]:
        return (r.degraded_since if r.degraded_since is not None else float("inf"),
                r.no_standby_since)  # fmt: skip

    return min(one, other, key=key)
