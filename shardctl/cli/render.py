"""Turn library results into rich tables for people and JSON for scripts; the only module
that builds tables, and (with the CLI) the only one that imports rich."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group
from rich.progress import Progress, ProgressColumn
from rich.table import Table
from rich.text import Text

from shardctl.config.schema import Role
from shardctl.config.topology import Topology
from shardctl.health.checks import Check
from shardctl.health.distribution import Distribution
from shardctl.health.ringview import RingReport
from shardctl.health.status import StatusRow
from shardctl.health.verify import Report
from shardctl.ops.provisioning import DownReport, UpReport
from shardctl.ops.reshard.coordinator import State
from shardctl.state.inflight import RESHARD, Operation
from shardctl.state.plan import ASSUMED_ROWS_PER_SECOND, Plan, estimate_seconds
from shardctl.util.text import first_line, lsn_text, size_text
from shardctl.workload.bulk import BulkReport
from shardctl.workload.ledger import VerifyReport
from shardctl.workload.report import LoadReport


def _width(stream: TextIO) -> int | None:
    """The terminal's width; piped, $COLUMNS if set, else 200: output piped into a CI log is
    read by people too, and a wide table (``-o wide``) should not wrap there."""
    if stream.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) >= 40 else 200


console = Console(width=_width(sys.stdout))
err_console = Console(stderr=True, width=_width(sys.stderr))


def show(renderable: Any, *, err: bool = False) -> None:
    """Print a table for people; piped, without the trailing spaces rich pads lines with."""
    target = err_console if err else console
    if target.is_terminal:
        target.print(renderable)
        return
    with target.capture() as captured:
        target.print(renderable)
    text = "\n".join(line.rstrip() for line in captured.get().splitlines())
    (sys.stderr if err else sys.stdout).write(text + "\n")


def progress(*columns: str | ProgressColumn) -> Progress:
    """A live display on stderr that disappears when done, so stdout stays the result only."""
    return Progress(*columns, console=err_console, transient=True)


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
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(data: Any) -> None:
    """JSON on stdout, one document."""
    sys.stdout.write(json.dumps(to_jsonable(data), indent=2) + "\n")


def topology_summary(topology: Topology) -> Table:
    """What ``validate`` prints."""
    spec = topology.spec
    table = Table(title=f"cluster {spec.cluster} ({topology.path})", title_justify="left")
    pooled = bool(topology.pooled_nodes())
    for column in ("shard", "node", "role", "engine", "address") + (("pooler",) if pooled else ()):
        table.add_column(column)
    for node in topology.nodes:
        pooler = (
            f"{node.placement.advertise}:{node.pooler_port}"
            if node.pooler_port is not None
            else "-"
        )
        table.add_row(
            node.shard,
            node.name,
            node.role.value,
            node.placement.name,
            f"{node.placement.advertise}:{node.host_port}",
            *((pooler,) if pooled else ()),
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
            {
                "shard": n.shard,
                "name": n.name,
                "role": n.role.value,
                "engine": n.placement.name,
                "address": n.placement.advertise,
                "port": n.host_port,
                "pooler_port": n.pooler_port,
            }
            for n in topology.nodes
        ],
    }


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
    if wide:
        table.add_column("slot", no_wrap=True)
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
            }
            for r in _grouped(rows)
        ],
    }


def operation_facts(op: Operation) -> dict[str, Any]:
    """One operation in progress as data (``summary`` is the line ``status`` prints)."""
    return {**to_jsonable(op), "summary": op.summary, "started": op.started}


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
    # A pooler's action is keyed "<node>-pooler" (provisioning.Provisioner.ensure_pooler);
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


def plural(n: int, noun: str) -> str:
    """``1 network``, ``2 networks``, ``1,024 rows``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


SHARE_DIGITS = 6
"""Shares of the ring in JSON are fractions rounded to 6 decimals (tables show 0.0%)."""


def ring_facts(report: RingReport) -> dict[str, Any]:
    """The ``ring -o json`` document; ``shard`` names a shard, as in every command."""
    return {
        "cluster": report.cluster,
        "epoch": report.epoch,
        "algorithm": report.algorithm,
        "vnodes": report.vnodes,
        "shards": [
            {
                "shard": n.name,
                "share": round(n.share, SHARE_DIGITS),
                "ranges": n.ranges,
                "primary_epoch": report.primaries.get(n.name),
            }
            for n in report.nodes
        ],
        "primaries": report.primaries,
        "problems": report.problems,
        "warnings": report.warnings,
    }


def plan_facts(plan: Plan) -> dict[str, Any]:
    """A reshard plan as data: every move with exact rows and bytes."""
    return {
        "id": plan.id,
        "epoch": plan.epoch,
        "new_epoch": plan.epoch + 1,
        "old_nodes": list(plan.old.nodes),
        "new_nodes": list(plan.new.nodes),
        "leaving": list(plan.leaving),
        "rows": plan.rows,
        "bytes": plan.bytes,
        "estimated_seconds": round(estimate_seconds(plan, ASSUMED_ROWS_PER_SECOND), 1),
        "moves": [
            {
                "source": m.source,
                "target": m.target,
                "start": m.start_hex,
                "end": m.end_hex,
                "share": round(m.share, SHARE_DIGITS),
                "rows": s.rows,
                "bytes": s.bytes,
            }
            for m, s in zip(plan.moves, plan.sizes, strict=True)
        ],
    }


def plan_table(plan: Plan, *, running: bool = False) -> Group:
    """The ``rebalance --plan`` output: a summary line, then moves by source and target;
    ``running``: the plan of the reshard in progress."""
    estimate = estimate_seconds(plan, ASSUMED_ROWS_PER_SECOND)
    what = f"plan of reshard {plan.id} (in progress)" if running else f"rebalance plan {plan.id}"
    removing = f"removing {', '.join(plan.leaving)}, " if plan.leaving else ""
    summary = Text(
        f"{what}: {removing}ring epoch {plan.epoch} -> {plan.epoch + 1}, "
        f"{len(plan.moves)} ranges, {plan.rows:,} rows, {size_text(plan.bytes)}, "
        f"about {estimate:.1f}s to copy at {ASSUMED_ROWS_PER_SECOND:,.0f} rows/s"
    )
    table = Table()
    for column in ("source", "target", "ranges", "share of ring", "rows", "bytes"):
        table.add_column(column, justify="left" if column in ("source", "target") else "right")
    groups: dict[tuple[str, str], list[int]] = {}
    for index, move in enumerate(plan.moves):
        groups.setdefault((move.source, move.target), []).append(index)
    for (source, target), indexes in groups.items():
        table.add_row(
            source,
            target,
            str(len(indexes)),
            f"{sum(plan.moves[i].share for i in indexes):.2%}",
            f"{sum(plan.sizes[i].rows for i in indexes):,}",
            size_text(sum(plan.sizes[i].bytes for i in indexes)),
        )
    return Group(summary, table)


def reshard_report(state: State) -> Table:
    """What a finished reshard did."""
    r = state.report
    table = Table(title=f"reshard {state.plan.id}: {state.phase.value}", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rate = r.rows_copied / r.copy_seconds if r.copy_seconds else 0.0
    rows = [
        ("ring", f"{', '.join(state.plan.old.nodes)} -> {', '.join(state.plan.new.nodes)}"),
        ("rows copied", f"{r.rows_copied:,}"),
        ("bytes copied", size_text(r.bytes_copied)),
        ("copy rate", f"{rate:,.0f} rows/s"),
        (
            "chunks copied (plain / replace / merge)",
            " / ".join(str(r.chunk_paths.get(how, 0)) for how in ("plain", "replace", "merge")),
        ),
        ("keys re-synced from the change log", f"{r.keys_resynced:,}"),
        ("keys repaired by verification", f"{len(r.keys_repaired):,}"),
        ("write pause on moving keys", f"{r.write_pause_ms:.0f} ms"),
        ("rows removed from old owners", f"{r.rows_cleaned:,}"),
        ("total time", f"{r.total_seconds:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


# ------------------------------------------------------------ distribution, ring


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def distribution_table(result: Distribution) -> Table:
    """The ``distribution`` table: one row per table and shard, then a total per table."""
    table = Table(
        title=f"cluster {result.cluster} · ring epoch {result.epoch} ({result.algorithm})",
        title_justify="left",
    )
    table.add_column("table")
    table.add_column("shard")
    for name in ("rows", "expected", "actual", "misplaced", "duplicates"):
        table.add_column(name, justify="right")
    for summary in result.tables:
        for row in (r for r in result.shards if r.table == summary.table):
            table.add_row(
                row.table,
                row.shard,
                f"{row.rows:,}",
                _pct(row.expected_share),
                _pct(row.actual_share),
                _count(row.misplaced),
                _count(row.duplicates),
            )
        skew = "-" if summary.skew is None else f"skew {summary.skew:.3f}"
        table.add_row(
            f"[bold]{summary.table}[/]",
            "[bold]all[/]",
            f"[bold]{summary.rows:,}[/]",
            "100.0%",
            skew,
            _count(summary.misplaced),
            _count(summary.duplicates),
            end_section=True,
        )
    return table


def _count(n: int) -> str:
    return f"[red]{n:,}[/]" if n else "0"


def distribution_verdict(result: Distribution) -> str:
    """One line under the ``distribution`` table: ok, or how many keys are out of place."""
    if result.ok:
        return "[green]ok[/]: every key is on its ring owner, and on one shard only"
    return (
        f"[red]misplaced {result.misplaced:,}, duplicated {result.duplicates:,}[/]: "
        "keys are not where the ring puts them (a reshard in progress, or writes that bypassed "
        "the Router)"
    )


def ring_table(report: RingReport) -> Table:
    """The ``ring`` table: one row per ring node."""
    vnodes = f", {report.vnodes} vnodes" if report.algorithm == "md5" else ""
    table = Table(
        title=f"cluster {report.cluster} · ring epoch {report.epoch} · {report.algorithm}{vnodes}",
        title_justify="left",
    )
    table.add_column("shard")
    table.add_column("share", justify="right")
    table.add_column("ranges", justify="right")
    table.add_column("primary holds epoch", justify="right")
    for node in report.nodes:
        epoch = report.primaries.get(node.name)
        table.add_row(
            node.name, _pct(node.share), str(node.ranges), "-" if epoch is None else str(epoch)
        )
    for shard, epoch in report.primaries.items():
        if all(node.name != shard for node in report.nodes):
            held = "-" if epoch is None else str(epoch)
            table.add_row(f"{shard} [dim](not in the ring)[/]", "0.0%", "0", held)
    return table


# ------------------------------------------------------------ load


def load_table(report: LoadReport, cluster: str) -> Table:
    """The seed-style load table: per op type and in total."""
    epochs = report.epochs
    epoch = str(epochs[0]) if epochs[0] == epochs[1] else f"{epochs[0]}→{epochs[1]}"
    table = Table(
        title=f"load · cluster {cluster} · "
        + (f"users {report.users:,} · " if report.users != report.workers else "")
        + f"concurrency {report.workers} · "
        f"{report.seconds:.1f}s · ring epoch {epoch}",
        title_justify="left",
    )
    table.add_column("op")
    for name in ("ops", "ok", "failed", "success", "ops/s", "mean ms", "p50", "p95", "p99"):
        table.add_column(name, justify="right")
    table.add_column("max", justify="right")
    for row in [*report.per_op, report.total]:
        style = "bold" if row.op == "total" else ""
        table.add_row(
            row.op,
            f"{row.ops:,}",
            f"{row.ok:,}",
            f"[red]{row.failed:,}[/]" if row.failed else "0",
            f"{row.success_rate * 100:.2f}%",
            f"{row.throughput:,.0f}",
            f"{row.mean_ms:.2f}",
            f"{row.p50_ms:.2f}",
            f"{row.p95_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.max_ms:.1f}",
            style=style,
            end_section=row.op == "delete",
        )
    return table


def users_table(reports: list[LoadReport], cluster: str) -> Table:
    """The seed's load table: one row per virtual-user count (all op types together)."""
    first = reports[0] if reports else None
    table = Table(
        title=f"load · cluster {cluster} · {first.workers if first else 0} workers",
        title_justify="left",
    )
    table.add_column("concurrent users", justify="right")
    for name in ("ops", "throughput", "success rate", "mean response", "p50", "p95", "p99"):
        table.add_column(name, justify="right")
    for report in reports:
        total = report.total
        table.add_row(
            f"{report.users:,}",
            f"{total.ops:,}",
            f"{total.throughput:,.0f} ops/s",
            f"[red]{total.success_rate * 100:.2f}%[/]"
            if total.failed
            else f"{total.success_rate * 100:.2f}%",
            f"{total.mean_ms:,.1f} ms",
            f"{total.p50_ms:,.1f}",
            f"{total.p95_ms:,.1f}",
            f"{total.p99_ms:,.1f}",
        )
    return table


def bulk_table(result: BulkReport) -> Table:
    """The ``load --bulk`` table: rows per shard."""
    table = Table(title=f"bulk load · ring epoch {result.epoch}", title_justify="left")
    table.add_column("shard")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for shard, count in result.per_shard.items():
        share = count / result.rows if result.rows else 0.0
        table.add_row(shard, f"{count:,}", f"{share * 100:.1f}%")
    return table


def ledger_table(result: VerifyReport, paths: list[Path]) -> Table:
    """Counts of the ledger check, then the first problems found."""
    table = Table(title=f"ledger check · {', '.join(map(str, paths))}", title_justify="left")
    for name in ("keys", "ops", "present", "deleted", "uncertain"):
        table.add_column(name, justify="right")
    for name in ("lost", "stale", "resurrected", "misplaced"):
        table.add_column(name, justify="right")
    bad = [result.lost, result.stale, result.resurrected, result.misplaced]
    table.add_row(
        f"{result.keys:,}",
        f"{result.ops:,}",
        f"{result.present:,}",
        f"{result.absent:,}",
        f"{result.uncertain:,}",
        *(f"[red]{n:,}[/]" if n else "0" for n in bad),
    )
    return table


# ------------------------------------------------------------ verify-replication

_RESULT_STYLE = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[dim]skip[/]"}


def checks_summary_table(report: Report) -> Table:
    """The 80-column ``verify-replication`` table: a row per node, its checks counted, the
    names of those that failed (each failure is printed in full under the table)."""
    table = Table(
        title=f"cluster {report.cluster}: {verify_summary(report)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("shard", no_wrap=True)
    table.add_column("node", no_wrap=True)
    table.add_column("passed", justify="right", no_wrap=True)
    table.add_column("result")
    nodes: dict[str, list[Check]] = {}
    for check in report.checks:
        nodes.setdefault(check.node, []).append(check)
    shard = None
    for node, checks in nodes.items():
        failed = [c.check for c in checks if not c.ok]
        skipped = sum(c.skipped for c in checks)
        if failed:
            result = f"[bold red]FAIL[/] {escape(', '.join(failed))}"
        else:
            result = "[green]ok[/]" + (f" [dim]({skipped} skipped)[/]" if skipped else "")
        passed = sum(c.ok and not c.skipped for c in checks)
        cells = (checks[0].shard if checks[0].shard != shard else "", node)
        table.add_row(*cells, f"{passed}/{len(checks)}", result)
        shard = checks[0].shard
    return table


def checks_table(report: Report) -> Table:
    """The ``verify-replication`` table: node, check, result, detail; one section per shard."""
    table = Table(title=f"cluster {report.cluster}: {verify_summary(report)}", title_justify="left")
    for column in ("node", "check", "result", "detail"):
        table.add_column(column)
    shard: str | None = None
    for check in report.checks:
        if shard is not None and check.shard != shard:
            table.add_section()
        shard = check.shard
        detail = escape(check.detail)
        table.add_row(
            check.node,
            check.check,
            _RESULT_STYLE[check.result],
            f"[dim]{detail}[/]" if check.skipped else detail,
        )
    return table


def verify_summary(report: Report) -> str:
    """One line: how many checks passed, failed and were skipped, and how long it took."""
    failed = len(report.failures)
    skipped = sum(c.skipped for c in report.checks)
    total = len(report.checks)
    head = (
        f"{total - failed - skipped} of {total} checks passed"
        if failed
        else (f"all {total - skipped} checks passed")
    )
    parts = [head]
    if failed:
        parts.append(f"{failed} failed")
    if skipped:
        parts.append(f"{skipped} skipped")
    return f"{', '.join(parts)} in {report.seconds:.2f} s"


def check_facts(check: Check) -> dict[str, Any]:
    """One check as JSON data."""
    return {
        "shard": check.shard,
        "node": check.node,
        "check": check.check,
        "ok": check.ok,
        "result": check.result,
        "detail": check.detail,
        "seconds": None if check.seconds is None else round(check.seconds, 4),
    }


def verify_facts(report: Report) -> dict[str, Any]:
    """The ``verify-replication -o json`` document."""
    return {
        "ok": report.ok,
        "cluster": report.cluster,
        "seconds": round(report.seconds, 3),
        "deep": report.deep,
        "limits": report.limits.model_dump(),
        "checks": [check_facts(c) for c in report.checks],
    }


def junit_xml(report: Report) -> bytes:
    """A JUnit XML report: a suite per shard, a test case per check, failures with the detail."""
    root = ET.Element("testsuites", name=f"shardctl verify-replication {report.cluster}")
    suites: dict[str, list[Check]] = {}
    for check in report.checks:
        suites.setdefault(check.shard, []).append(check)
    stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
    for shard, checks in suites.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{report.cluster}.{shard}",
            tests=str(len(checks)),
            failures=str(sum(not c.ok for c in checks)),
            errors="0",
            skipped=str(sum(c.skipped for c in checks)),
            time=f"{sum(c.seconds or 0.0 for c in checks):.3f}",
            timestamp=stamp,
        )
        for check in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=shard,
                name=f"{check.node}: {check.check}",
                time=f"{check.seconds or 0.0:.3f}",
            )
            if check.skipped:
                ET.SubElement(case, "skipped", message=check.detail)
            elif not check.ok:
                failure = ET.SubElement(case, "failure", message=check.detail, type=check.check)
                failure.text = check.line
    _totals(root)
    root.set("time", f"{report.seconds:.3f}")  # wall time; checks ran in parallel
    return _xml_bytes(root)


def junit_error(cluster: str, message: str) -> bytes:
    """A JUnit XML report of one failed test case: the cluster could not be checked at all."""
    root = ET.Element("testsuites", name=f"shardctl verify-replication {cluster}")
    suite = ET.SubElement(root, "testsuite", name=cluster, tests="1", failures="0", errors="1")
    case = ET.SubElement(suite, "testcase", classname=cluster, name="verify-replication")
    error = ET.SubElement(case, "error", message=first_line(message), type="unreachable")
    error.text = message
    _totals(root)
    return _xml_bytes(root)


def _totals(root: ET.Element) -> None:
    for field in ("tests", "failures", "errors", "skipped"):
        root.set(field, str(sum(int(s.get(field, "0")) for s in root)))
    root.set("time", f"{sum(float(s.get('time', '0')) for s in root):.3f}")


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"
