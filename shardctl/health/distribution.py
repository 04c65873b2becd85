"""Where the data is, against where the ring says it should be: rows, shares, skew, misplaced.

Everything is counted on the servers, one scan per table and shard primary, all primaries in
parallel. A row is *misplaced* when the ring (from the catalog) gives its key to another shard;
the owner of each row is found on the server by :func:`shardctl.ring.sql.owner` (a binary search
of the key's ``md5(key::text)`` among the ring's range starts, which travel as array
parameters).

**Duplicates** (a key stored on more than one shard) are found without pulling every key: of
the copies of one key at most one sits on its owner, so every duplicated key has at least one
misplaced copy. Only misplaced keys are fetched (a server-side cursor, in batches); each batch
is looked up on the keys' owners (``key = ANY(%s)``, using the primary-key index), and keys
misplaced on two shards at once are matched among themselves. In a healthy cluster nothing is
misplaced and nothing is fetched; in the middle of a reshard (before clean-up) the moved keys
are both misplaced and duplicated by design, and this costs a pass over them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg
from psycopg import sql

from shardctl.config.credentials import Credentials
from shardctl.config.schema import TableSpec
from shardctl.config.topology import Node, Topology
from shardctl.db import pg
from shardctl.errors import CheckFailed
from shardctl.ring import sql as ringsql
from shardctl.ring.hashing import Ring
from shardctl.state import catalog
from shardctl.util import fanout

BATCH = 5000
"""Misplaced keys fetched and looked up per round trip."""


@dataclass(frozen=True)
class ShardRows:
    """One sharded table on one shard."""

    table: str
    shard: str
    rows: int
    expected_share: float
    """The fraction of the circle the ring gives this shard (0 for a shard not in the ring)."""
    actual_share: float | None
    """This shard's rows over the table's rows on all shards (None for an empty table)."""
    misplaced: int
    """Rows whose key the ring gives to another shard."""
    duplicates: int
    """Keys stored here that are also stored on another shard."""


@dataclass(frozen=True)
class TableRows:
    """One sharded table over all shards."""

    table: str
    key: str
    rows: int
    skew: float | None
    """Most rows on one ring shard over the mean of the ring shards (None when empty)."""
    misplaced: int
    duplicates: int
    """Distinct keys stored on more than one shard."""


@dataclass(frozen=True)
class Distribution:
    """The data's placement against the ring, per table and shard."""

    cluster: str
    epoch: int
    algorithm: str
    tables: list[TableRows]
    shards: list[ShardRows]
    misplaced: int
    duplicates: int
    skew: float | None
    """The worst table's skew."""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is misplaced or duplicated."""
        return self.misplaced == 0 and self.duplicates == 0


@dataclass
class _Counted:
    rows: int
    misplaced: int


def measure(topology: Topology, credentials: Credentials, *, timeout: float = 10.0) -> Distribution:
    """Count rows, misplaced and duplicated keys of every sharded table on every primary."""
    view = catalog.read(topology, credentials, timeout=timeout)
    record = view.record()
    ring = record.ring()
    warnings = [*view.problems, *catalog.drift(topology, record)]
    primaries = {node.shard: node for node in topology.primaries()}
    tables = topology.spec.tables

    def count(node: Node) -> dict[str, _Counted]:
        with (
            pg.node_errors(node, "counting rows failed"),
            _connect(topology, credentials, node, timeout) as conn,
        ):
            return {t.name: _count(conn, node, t, ring) for t in tables}

    counted = fanout.each({shard: partial(count, node) for shard, node in primaries.items()})
    shares = ring.shares()
    table_rows: list[TableRows] = []
    shard_rows: list[ShardRows] = []
    for table in tables:
        per_shard = {shard: counted[shard][table.name] for shard in primaries}
        duplicates, dup_by_shard = 0, dict[str, int]()
        if any(c.misplaced for c in per_shard.values()):
            duplicates, dup_by_shard = _duplicates(
                topology, credentials, primaries, table, ring, per_shard, timeout
            )
        total = sum(c.rows for c in per_shard.values())
        owners = [per_shard[s].rows for s in ring.nodes if s in per_shard]
        mean = sum(owners) / len(owners) if owners else 0.0
        table_rows.append(
            TableRows(
                table=table.name,
                key=table.key,
                rows=total,
                skew=(max(owners) / mean) if mean > 0 else None,
                misplaced=sum(c.misplaced for c in per_shard.values()),
                duplicates=duplicates,
            )
        )
        for shard, c in per_shard.items():
            shard_rows.append(
                ShardRows(
                    table=table.name,
                    shard=shard,
                    rows=c.rows,
                    expected_share=shares.get(shard, 0.0),
                    actual_share=(c.rows / total) if total else None,
                    misplaced=c.misplaced,
                    duplicates=dup_by_shard.get(shard, 0),
                )
            )
    skews = [t.skew for t in table_rows if t.skew is not None]
    return Distribution(
        cluster=topology.cluster,
        epoch=record.epoch,
        algorithm=record.algorithm,
        tables=table_rows,
        shards=shard_rows,
        misplaced=sum(t.misplaced for t in table_rows),
        duplicates=sum(t.duplicates for t in table_rows),
        skew=max(skews) if skews else None,
        warnings=warnings,
    )


def _count(conn: psycopg.Connection[Any], node: Node, table: TableSpec, ring: Ring) -> _Counted:
    """Rows and misplaced rows of one table on one primary, in one scan."""
    misplaced, params = ringsql.misplaced_condition(table.key, ring, node.shard)
    query = sql.SQL("SELECT count(*), count(*) FILTER (WHERE {}) FROM {}").format(
        misplaced, sql.Identifier(table.name)
    )
    try:
        row = conn.execute(query, params).fetchone()
    except psycopg.errors.UndefinedTable:
        raise CheckFailed(f"{node.name}: sharded table {table.name!r} does not exist") from None
    except psycopg.errors.UndefinedColumn:
        raise CheckFailed(
            f"{node.name}: table {table.name!r} has no shard key column {table.key!r}"
        ) from None
    assert row is not None
    return _Counted(rows=int(row[0]), misplaced=int(row[1]))


def _duplicates(
    topology: Topology,
    credentials: Credentials,
    primaries: dict[str, Node],
    table: TableSpec,
    ring: Ring,
    per_shard: dict[str, _Counted],
    timeout: float,
) -> tuple[int, dict[str, int]]:
    """Keys on more than one shard, found from the misplaced keys only (see module doc)."""
    found_on: dict[str, set[str]] = defaultdict(set)  # key text -> shards holding it
    owner_conns: dict[str, psycopg.Connection[Any]] = {}
    try:
        for shard, counted in per_shard.items():
            if not counted.misplaced:
                continue
            node = primaries[shard]
            with _connect(topology, credentials, node, timeout) as conn:
                for batch in _misplaced_keys(conn, node, table, ring):
                    by_owner: dict[str, list[tuple[object, str]]] = defaultdict(list)
                    for value, text in batch:
                        found_on[text].add(shard)
                        by_owner[ring.node_for(text)].append((value, text))
                    for owner, keys in by_owner.items():
                        if owner not in primaries:
                            continue
                        if owner not in owner_conns:
                            owner_conns[owner] = _connect(
                                topology, credentials, primaries[owner], timeout
                            )
                        for text in _present(owner_conns[owner], table, [v for v, _ in keys]):
                            found_on[text].add(owner)
    finally:
        for conn in owner_conns.values():
            conn.close()
    per: dict[str, int] = defaultdict(int)
    duplicated = 0
    for shards in found_on.values():
        if len(shards) > 1:
            duplicated += 1
            for shard in shards:
                per[shard] += 1
    return duplicated, dict(per)


def _misplaced_keys(
    conn: psycopg.Connection[Any], node: Node, table: TableSpec, ring: Ring
) -> Iterator[list[tuple[object, str]]]:
    """The misplaced keys of one table on one primary, as (value, text), in batches."""
    misplaced, params = ringsql.misplaced_condition(table.key, ring, node.shard)
    key = sql.Identifier(table.key)
    query = sql.SQL("SELECT {key}, {key}::text FROM {table} WHERE {cond}").format(
        key=key, table=sql.Identifier(table.name), cond=misplaced
    )
    with conn.transaction(), conn.cursor(name="shardctl_misplaced") as cur:
        cur.execute(query, params)
        while batch := cur.fetchmany(BATCH):
            yield [(row[0], str(row[1])) for row in batch]


def _present(conn: psycopg.Connection[Any], table: TableSpec, keys: list[object]) -> list[str]:
    """Which of ``keys`` (native values, so the key's index is used) exist in ``table``."""
    key = sql.Identifier(table.key)
    query = sql.SQL("SELECT {key}::text FROM {table} WHERE {key} = ANY(%s)").format(
        key=key, table=sql.Identifier(table.name)
    )
    return [str(row[0]) for row in conn.execute(query, (keys,)).fetchall()]


def _connect(
    topology: Topology, credentials: Credentials, node: Node, timeout: float
) -> psycopg.Connection[Any]:
    return pg.connect(node, credentials, topology.spec.database, timeout=timeout)
