"""``up``, ``down`` and ``status``: the nodes and what is in flight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardctl.cli.plain import plural, styler, table_text, to_jsonable
from shardctl.config.schema import Role
from shardctl.config.topology import Topology
from shardctl.errors import ShardctlError
from shardctl.health.status import StatusRow
from shardctl.state.inflight import RESHARD, Operation
from shardctl.util.text import lsn_text, size_text

if TYPE_CHECKING:  # status imports this module too: provisioning is no part of it, nor rich
    from rich.table import Table

    from shardctl.health.archiving import FreeSpace
    from shardctl.ops.down import DownReport
    from shardctl.ops.up import UpReport

Cell = tuple[str, str | None]
"""A cell's text and its rich style (None: plain)."""


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


def repository_free(topology: Topology) -> FreeSpace | None:
    """Reads the room left in the backup repository, for ``status`` to name a full one (None:
    no ``backup:``). Called only when archiving is not ok; unreadable reads as unknown."""
    if topology.spec.backup is None:
        return None

    def read() -> int | None:
        from shardctl.ops.backup.repository import Repository

        try:
            return Repository.of(topology).free_bytes()
        except ShardctlError:
            return None

    return read


def archive_text(row: StatusRow) -> str:
    """A primary's archiving in a few words: its state and the RPO now (``-`` without)."""
    found = row.archiving
    if found is None:
        return "-"
    if found.state != "ok":
        return "repository full" if found.repository_full else found.state
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
        "repository_free": found.repository_free,
        "problem": found.problem,
    }


def in_flight_lines(operations: list[Operation], *, markup: bool = True) -> list[str]:
    """One line per operation in progress, then the command that finishes it (rich markup;
    plain text without ``markup``)."""
    styled = styler(markup)
    lines = []
    for op in operations:
        lines.append(styled("in flight", "bold yellow") + ": " + styled(op.summary, None))
        if op.started is not None:
            lines.append("  " + styled(op.started, None))
        if op.kind == RESHARD:
            lines.append("  next: " + styled(op.command, "bold"))
    return lines


def _status_columns(rows: list[StatusRow], wide: bool) -> tuple[list[str], bool]:
    """The ``status`` table's headers, and whether it has the archive column."""
    headers = ["shard", "node", "role", "state"]
    if wide:
        headers += ["actual", "engine", "address", "TL", "LSN"]
    headers.append("lag")
    archives = wide and any(r.archiving is not None for r in rows)
    if wide:
        headers += ["slot", "restart"]
    if archives:
        headers.append("archive")
    headers.append("health")
    return headers, archives


def _status_cells(rows: list[StatusRow], wide: bool, archives: bool) -> list[list[Cell]]:
    """The ``status`` table's rows, replicas under their primary, the shard named once."""
    out: list[list[Cell]] = []
    shard = None
    for row in _grouped(rows):
        if row.healthy:
            health: Cell = ("ok", "green")
        else:
            health = ((row.problem if wide else row.health) or "unhealthy", "red")
        cells: list[Cell] = [
            (row.shard if row.shard != shard else "", None),
            (row.name, None),
            (_role(row), None),
            (row.state.value, None),
        ]
        if wide:
            cells += [
                (row.actual_role.value, None),
                (row.engine, None),
                (f"{row.address}:{row.port}", None),
                ("-" if row.timeline is None else str(row.timeline), None),
                (lsn_text(row.lsn), None),
            ]
        cells.append((_lag(row), None))
        if wide:
            cells.append((row.slot or "-", None))
            pending = ", ".join(row.pending_restart)
            cells.append((f"pending: {pending}", "yellow") if pending else ("-", None))
        if archives:
            cells.append((archive_text(row), None))
        cells.append(health)
        out.append(cells)
        shard = row.shard
    return out


def status_table(cluster: str, rows: list[StatusRow], *, wide: bool = False) -> Table:
    """The ``status`` table: 80 columns (shard, node, role, state, lag, health), replicas
    under their primary; ``wide`` adds every column. ``*`` marks a role a switchover or failover
    changed from the declared one."""
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"cluster {cluster}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    headers, archives = _status_columns(rows, wide)
    for header in headers:
        if header == "lag":
            table.add_column(header, justify="right", no_wrap=True)
        else:
            table.add_column(header, no_wrap=header != "health")
    styled = styler(True)
    for cells in _status_cells(rows, wide, archives):
        table.add_row(*(styled(text, style) for text, style in cells))
    return table


def status_text(
    cluster: str, rows: list[StatusRow], above: list[str], *, wide: bool, page: int
) -> str | None:
    """:func:`status_table` under the plain lines ``above`` as rich prints them piped on a page
    ``page`` characters wide, without rich (None: only rich can say, see
    :func:`shardctl.cli.plain.table_text`)."""
    headers, archives = _status_columns(rows, wide)
    cells = [[text for text, _ in row] for row in _status_cells(rows, wide, archives)]
    right = [headers.index("lag")]
    return table_text(f"cluster {cluster}", headers, cells, right=right, above=above, page=page)


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
