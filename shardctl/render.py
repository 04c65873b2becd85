"""Turn library results into rich tables for people and JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from typing import Any

from rich.console import Console
from rich.table import Table

from shardctl.health import StatusRow
from shardctl.provisioning import DownReport, UpReport
from shardctl.topology import Topology

# Piped output is read by people too (CI logs): give tables room instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def lsn_text(lsn: int | None) -> str:
    """An integer LSN in PostgreSQL's ``X/Y`` form."""
    return "-" if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def size_text(n: int | None) -> str:
    """Bytes in a short human form."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """JSON on stdout, one document."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2) + "\n")


def topology_summary(topology: Topology) -> Table:
    """What ``validate`` prints."""
    spec = topology.spec
    table = Table(title=f"cluster {spec.cluster} ({topology.path})", title_justify="left")
    for column in ("shard", "node", "role", "port"):
        table.add_column(column)
    for node in topology.nodes:
        table.add_row(
            node.shard, node.name, node.role.value, f"{node.bind_address}:{node.host_port}"
        )
    return table


def topology_facts(topology: Topology) -> dict[str, Any]:
    """The summary as data."""
    spec = topology.spec
    return {
        "cluster": spec.cluster,
        "image": spec.image,
        "database": spec.database,
        "ring": {"algorithm": spec.ring.algorithm.value, "vnodes": spec.ring.vnodes},
        "tables": [{"name": t.name, "key": t.key} for t in spec.tables],
        "shards": [{"name": s.name, "replicas": s.replicas} for s in spec.shards],
        "nodes": [
            {"shard": n.shard, "name": n.name, "role": n.role.value, "port": n.host_port}
            for n in topology.nodes
        ],
    }


def status_table(cluster: str, rows: list[StatusRow]) -> Table:
    """The ``status`` table."""
    table = Table(title=f"cluster {cluster}", title_justify="left")
    for column in ("shard", "node", "role", "actual", "container", "address", "TL", "LSN"):
        table.add_column(column)
    table.add_column("lag", justify="right")
    table.add_column("lag s", justify="right")
    table.add_column("slot")
    table.add_column("health")
    for row in rows:
        health = "[green]ok[/]" if row.healthy else f"[red]{escape(row.problem or 'unhealthy')}[/]"
        table.add_row(
            row.shard,
            row.name,
            row.role.value,
            row.actual_role.value,
            row.state.value,
            f"{row.address}:{row.port}",
            "-" if row.timeline is None else str(row.timeline),
            lsn_text(row.lsn),
            size_text(row.lag_bytes),
            "-" if row.lag_seconds is None else f"{row.lag_seconds:.1f}",
            row.slot or "-",
            health,
        )
    return table


def escape(text: str) -> str:
    """Text safe to embed in rich markup."""
    from rich.markup import escape as _escape

    return _escape(text)


def up_summary(report: UpReport) -> str:
    """One line saying what ``up`` did."""
    counts: dict[str, int] = {}
    for action in report.actions.values():
        counts[action.value] = counts.get(action.value, 0) + 1
    done = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    return f"{len(report.actions)} nodes ready in {report.seconds:.1f}s ({done})"


def down_summary(report: DownReport) -> str:
    """One line saying what ``down`` removed."""
    return (
        f"removed {len(report.containers)} containers, {len(report.networks)} networks, "
        f"{len(report.volumes)} volumes"
    )
