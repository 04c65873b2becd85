"""``rebalance``, ``remove-shard``: plans and what a finished reshard did."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from shardctl.cli.views.data import SHARE_DIGITS
from shardctl.ops.reshard.coordinator import State
from shardctl.state.plan import ASSUMED_ROWS_PER_SECOND, Plan, estimate_seconds
from shardctl.util.text import size_text


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
