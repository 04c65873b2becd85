"""What ``verify-replication`` measured, judged: a canary row written on each primary and
seen on its replicas, and each table's row count and checksum on primary and replicas.

Pure functions, no I/O: :mod:`shardctl.health.verify` measures, this module turns the numbers
into :class:`~shardctl.health.checks.Check` findings.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardctl.config.schema import HealthSpec, TableSpec
from shardctl.config.topology import Node
from shardctl.db import digest
from shardctl.health.checks import CANARY, DEEP_PREFIX, Check, failed, passed
from shardctl.util.text import duration_text


def canary_primary_check(node: Node, seconds: float | None, error: str | None) -> Check:
    """The canary write on a primary: committed, or why not."""
    if error is not None:
        return failed(node, CANARY, f"canary write failed: {error}")
    assert seconds is not None
    return passed(node, CANARY, f"canary written in {duration_text(seconds)}", seconds)


def canary_check(node: Node, seconds: float | None, error: str | None, limits: HealthSpec) -> Check:
    """The canary written on the replica's primary became visible on it within the timeout."""
    if error is not None:
        return failed(node, CANARY, error)
    if seconds is None or seconds > limits.canary_timeout:
        return failed(
            node,
            CANARY,
            f"canary from {node.primary_name} not visible after {limits.canary_timeout:g} s",
        )
    return passed(
        node,
        CANARY,
        f"canary from {node.primary_name} visible after {duration_text(seconds)}",
        seconds,
    )


@dataclass(frozen=True)
class TableDigest:
    """Row count and order-independent checksum of one table on one node."""

    rows: int
    checksum: int


def deep_name(table: TableSpec) -> str:
    """The name of the deep check of ``table``."""
    return f"{DEEP_PREFIX}{table.name}"


def deep_check(
    node: Node,
    table: TableSpec,
    primary: TableDigest,
    replica: TableDigest,
    *,
    at: str,
    keys: list[str] | None = None,
) -> Check:
    """A replica's table has the primary's row count and checksum; ``at`` says when compared.

    ``keys`` names some of the differing keys, when they were looked up.
    """
    name = deep_name(table)
    if replica == primary:
        return passed(node, name, f"{replica.rows} rows, same checksum as {node.primary_name} {at}")
    counts = (
        f"{replica.rows} rows vs {primary.rows} on {node.primary_name}"
        if replica.rows != primary.rows
        else f"{replica.rows} rows on both"
    )
    named = f"; {table.key} {', '.join(keys)}" if keys else ""
    return failed(node, name, f"{counts}, checksums differ {at}{named}")


def differing_keys(primary: dict[str, str], replica: dict[str, str], limit: int = 5) -> list[str]:
    """Up to ``limit`` keys whose row hash differs, each saying how (key → row hash maps)."""
    found: list[str] = []
    for key in digest.differing_keys(primary, replica):
        if len(found) == limit:
            found.append("...")
            break
        how = "missing" if key not in replica else "extra" if key not in primary else "differs"
        found.append(f"{key} ({how})")
    return found
