"""The table a load run or bulk load writes: its name and key from the topology (the first of
``tables``, or the one named), its columns from the catalog (``information_schema``) when the run
starts, as a :class:`Target`. With the example ``schema.sql`` that is ``users``, keyed by a uuid
``id``, with three text columns.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import psycopg

from shardctl.errors import DatabaseUnavailable, UsageError
from shardctl.router.router import Router
from shardctl.workload.ledger import Header, Value

T = TypeVar("T")

TEXT_TYPES = ("text", "character varying")
INTEGER_BITS = {"smallint": 15, "integer": 31, "bigint": 63}
KEY_TYPES = ("uuid", *TEXT_TYPES, "integer", "bigint")
STAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""A uuid's variant digit (RFC 4122: 10xx in binary) from any hex digit of random bits."""

COLUMNS_QUERY = """
SELECT column_name::text, data_type::text, character_maximum_length::int,
       is_nullable = 'YES', column_default IS NOT NULL,
       is_identity = 'YES' OR is_generated <> 'NEVER'
  FROM information_schema.columns
 WHERE table_schema = pg_catalog.current_schema() AND table_name = %s
 ORDER BY ordinal_position
"""


@dataclass(frozen=True)
class Column:
    """A value column the load test writes: text or integer, as the catalog describes it."""

    name: str
    data_type: str
    max_length: int | None = None

    def sample(self, token: int) -> str:
        """A value for this column made from a random ``token``, as text (ledgers hold text)."""
        if self.data_type in INTEGER_BITS:
            return str(token % (1 << INTEGER_BITS[self.data_type]))
        text = f"{self.name}-{token:012x}"
        return text[: self.max_length] if self.max_length else text


@dataclass(frozen=True)
class Target:
    """The sharded table a load run writes: name and key from the topology, columns from the
    catalog."""

    table: str
    key: str
    key_type: str
    columns: tuple[Column, ...]
    """Text and integer columns besides the key: every write sets all of them."""
    stamps: tuple[str, ...] = ()
    """Timestamp columns with no default, taken as last-modified stamps: updates set now()."""

    @property
    def header(self) -> Header:
        """What a ledger of writes to this table records about it."""
        return Header(self.table, self.key, self.key_type, tuple(c.name for c in self.columns))

    def new_key(self, raw: bytes) -> str:
        """A key made from 16 random bytes, as text."""
        if self.key_type in INTEGER_BITS:
            return str(int.from_bytes(raw[:8]) >> (64 - INTEGER_BITS[self.key_type]))
        return str(uuid.UUID(bytes=raw, version=4))

    def new_keys(self, raw: bytes) -> list[str]:
        """A key from each 16 random bytes of ``raw``, as :meth:`new_key` makes them; for a uuid
        key, formatted from one hex string (a third of ``uuid.UUID``'s cost per key)."""
        if self.key_type != "uuid":
            return [self.new_key(raw[i : i + 16]) for i in range(0, len(raw) - 15, 16)]
        h, v = raw.hex(), _VARIANT
        return [
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
            f"{v[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, len(h) - 31, 32)
        ]

    def value(self, token: int) -> Value:
        """A full row value (every column in :attr:`columns`) made from a random ``token``."""
        if self._plain:  # text columns of no length limit: one hex formatting for all
            h = f"{token:012x}"
            return {name: prefix + h for name, prefix in self._prefixes}
        return {c.name: c.sample(token) for c in self.columns}

    @cached_property
    def _plain(self) -> bool:
        return all(c.data_type in TEXT_TYPES and not c.max_length for c in self.columns)

    @cached_property
    def _prefixes(self) -> tuple[tuple[str, str], ...]:
        return tuple((c.name, f"{c.name}-") for c in self.columns)


def on_any_shard(router: Router, work: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``work`` on a node of the first shard that answers (a replica first): any node knows
    the schema and the settings, and one shard in trouble must not stop the test."""
    shards = [node.shard for node in router.topology.primaries()]
    for shard in shards[:-1]:
        try:
            return router.on_shard(shard, work, prefer="replica")
        except DatabaseUnavailable:
            continue
    return router.on_shard(shards[-1], work, prefer="replica")


def target(router: Router, table: str | None = None) -> Target:
    """The table the load test writes (``table``, else the first declared), read from the
    catalog of one primary; UsageError when it is missing or cannot be filled."""
    tables = router.topology.spec.tables
    spec = next((t for t in tables if table is None or t.name == table), None)
    if spec is None:
        wanted = f"a sharded table {table!r}" if table else "a sharded table"
        raise UsageError(f"{router.topology.path}: the load test needs {wanted} (see tables:)")

    def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return conn.execute(COLUMNS_QUERY, (spec.name,)).fetchall()

    found = on_any_shard(router, read)
    if not found:
        raise UsageError(f"table {spec.name} does not exist (is the schema applied?)")
    key_type = next((str(r[1]) for r in found if r[0] == spec.key), None)
    if key_type is None:
        raise UsageError(f"table {spec.name} has no key column {spec.key!r}")
    if key_type not in KEY_TYPES:
        raise UsageError(
            f"the load test makes keys of type {', '.join(KEY_TYPES)}; "
            f"{spec.name}.{spec.key} is {key_type}"
        )
    columns: list[Column] = []
    stamps: list[str] = []
    for name, data_type, length, nullable, has_default, generated in found:
        if name == spec.key or generated:
            continue
        if data_type in TEXT_TYPES or data_type in INTEGER_BITS:
            columns.append(Column(name, data_type, length))
        elif data_type in STAMP_TYPES and not has_default and nullable:
            stamps.append(name)
        elif not nullable and not has_default:
            raise UsageError(
                f"the load test cannot fill {spec.name}.{name} ({data_type}, NOT NULL without "
                "a default); it writes text and integer columns"
            )
    if not columns:
        raise UsageError(
            f"the load test needs a text or integer column besides the key in {spec.name}"
        )
    return Target(spec.name, spec.key, key_type, tuple(columns), tuple(stamps))
