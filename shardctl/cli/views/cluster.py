"""``up``, ``down`` and ``status``: the nodes and what is in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from shardctl.cli.render import escape, plural, to_jsonable
from shardctl.config.schema import Role
from shardctl.config.topology import Topology
from shardctl.errors import ShardctlError
from shardctl.health.status import StatusRow
from shardctl.state.inflight import RESHARD, Operation
from shardctl.util.text import lsn_text, size_text

if TYPE_CHECKING:  # status imports this module too: provisioning is no part of it
    from shardctl.ops.down import DownReport
    from shardctl.ops.up import UpReport


def _grouped(rows: list[StatusRow]) -> list[StatusRow]:
    """Rows per shard (in topology order), the acting primary first, its replicas under it."""
    shards = list(dict.fromkeys(r.shard for r in rows))
    return [
        r
        for shard in shards
        for r in sorted(
            (r for r in rows if r.shard == shard), key=lambda r: r.role is not Role.PRIMARY
        )
    ]


def _role(row: StatusRow) -> str:
    return row.role.value if row.role is row.declared_role else f"{row.role.value}*"


def _lag(row: StatusRow) -> str:
    if row.role is Role.PRIMARY:
        return "-"
    seconds = "" if not row.lag_seconds else f" {row.lag_seconds:,.1f}s"
    return size_text(row.lag_bytes) + seconds


def newest_wal(topology: Topology) -> dict[str, float | None] | None:
    """When each shard's newest archived WAL was written, for ``status`` (None: no
    ``backup:``, or the repository cannot be read here: status then judges the slot alone).
    A read of file times on this host: no server is asked."""
    if topology.spec.backup is None:
        return None
    from shardctl.ops.backup.listing import repository_times

    try:
        return dict(repository_times(topology).newest_wal)
    except ShardctlError:
        return None


def archive_text(row: StatusRow) -> str:
    """A primary's archiving in a few words: its state and the RPO now (``-`` without)."""
    found = row.archiving
    if found is None:
        return "-"
    if found.state != "ok":
        return found.state
    if found.lag_seconds is None:
        return "ok" if not found.behind_bytes else f"ok, {size_text(found.behind_bytes)} waits"
    return f"ok, RPO {found.lag_seconds:,.1f}s"


def archive_facts(row: StatusRow) -> dict[str, Any] | None:
    """A primary's archiving for ``status -o json`` (None: no ``backup:`` or a replica)."""
    found = row.archiving
    if found is None:
        return None
    return {
        "state": found.state,
        "ok": found.ok,
        "behind_bytes": found.behind_bytes,
        "newest_wal": found.newest_wal,
        "lag_seconds": None if found.lag_seconds is None else round(found.lag_seconds, 3),
        "problem": found.problem,
    }


def in_flight_lines(operations: list[Operation]) -> list[str]:
    """One line per operation in progress, then the command that finishes it (rich markup)."""
    lines = []
    for op in operations:
        lines.append(f"[bold yellow]in flight[/]: {escape(op.summary)}")
        if op.started is not None:
            lines.append(f"  {escape(op.started)}")
        if op.kind == RESHARD:
            lines.append(f"  next: [bold]{escape(op.command)}[/]")
    return lines


def status_table(cluster: str, rows: list[StatusRow], *, wide: bool = False) -> Table:
    """The ``status`` table: 80 columns (shard, node, role, state, lag, health), replicas
    under their primary; ``wide`` adds every column. ``*`` marks a role a switchover or failover
    changed from the declared one."""
    table = Table(
        title=f"cluster {cluster}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("shard", "node", "role", "state"):
        table.add_column(column, no_wrap=True)
    if wide:
        for column in ("actual", "engine", "address", "TL", "LSN"):
            table.add_column(column, no_wrap=True)
    table.add_column("lag", justify="right", no_wrap=True)
    archives = wide and any(r.archiving is not None for r in rows)
    if wide:
        table.add_column("slot", no_wrap=True)
        table.add_column("restart", no_wrap=True)
    if archives:
        table.add_column("archive", no_wrap=True)
    table.add_column("health")
    shard = None
    for row in _grouped(rows):
        if row.healthy:
            health = "[green]ok[/]"
        else:
            health = f"[red]{escape((row.problem if wide else row.health) or 'unhealthy')}[/]"
        cells = [row.shard if row.shard != shard else "", row.name, _role(row), row.state.value]
        if wide:
            cells += [
                row.actual_role.value,
                row.engine,
                f"{row.address}:{row.port}",
                "-" if row.timeline is None else str(row.timeline),
                lsn_text(row.lsn),
            ]
        cells.append(_lag(row))
        if wide:
            cells.append(row.slot or "-")
            pending = ", ".join(row.pending_restart)
            cells.append(f"[yellow]pending: {escape(pending)}[/]" if pending else "-")
        if archives:
            cells.append(escape(archive_text(row)))
        cells.append(health)
        table.add_row(*cells)
        shard = row.shard
    return table


def status_facts(
    cluster: str, rows: list[StatusRow], operations: list[Operation]
) -> dict[str, Any]:
    """The ``status -o json`` document: every fact of every node, and what is in flight."""
    return {
        "cluster": cluster,
        "healthy": all(r.healthy for r in rows),
        "in_flight": [operation_facts(op) for op in operations],
        "nodes": [
            {
                "shard": r.shard,
                "node": r.name,
                "role": r.role.value,
                "declared_role": r.declared_role.value,
                "actual_role": r.actual_role.value,
                "engine": r.engine,
                "state": r.state.value,
                "address": r.address,
                "port": r.port,
                "in_recovery": r.in_recovery,
                "timeline": r.timeline,
                "lsn": r.lsn,
                "lag_bytes": r.lag_bytes,
                "lag_seconds": None if r.lag_seconds is None else round(r.lag_seconds, 3),
                "slot": r.slot,
                "healthy": r.healthy,
                "health": r.health,
                "problem": r.problem,
                "pending_restart": list(r.pending_restart),
                "archiving": archive_facts(r),
            }
            for r in _grouped(rows)
        ],
    }


def operation_facts(op: Operation) -> dict[str, Any]:
    """One operation in progress as data (``summary`` is the line ``status`` prints)."""
    return {**to_jsonable(op), "summary": op.summary, "started": op.started}


def up_summary(report: UpReport) -> str:
    """One line saying what ``up`` did."""
    counts: dict[str, int] = {}
    for action in report.actions.values():
        counts[action.value] = counts.get(action.value, 0) + 1
    done = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    # A pooler's action is keyed "<node>-pooler" (ops.up.Provisioner.ensure_pooler);
    # a removed one is gone, not ready.
    ready = {k: a for k, a in report.actions.items() if a.value != "removed"}
    pooled = sum(name.endswith("-pooler") for name in ready)
    nodes = f"{len(ready) - pooled} nodes" + (f" and {pooled} poolers" if pooled else "")
    return f"{nodes} ready in {report.seconds:.1f}s ({done})"


def down_summary(report: DownReport) -> str:
    """One line saying what ``down`` removed."""
    parts = [
        plural(len(report.containers), "container"),
        plural(len(report.networks), "network"),
        plural(len(report.volumes), "volume"),
    ]
    return "removed " + ", ".join(parts)
