"""``history``: what happened to the cluster, one row per event."""

from __future__ import annotations

from rich import box
from rich.table import Table

from shardctl.state.history import Event


def history_table(cluster: str, events: list[Event]) -> Table:
    """Newest first: time (local), what, detail, who, how long, outcome, write pause."""
    table = Table(
        title=f"cluster {cluster}: {len(events)} event(s)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("time", "event", "detail", "by"):
        table.add_column(column, no_wrap=column != "detail")
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("outcome")
    table.add_column("write pause", justify="right", no_wrap=True)
    for event in events:
        kind = event.kind if event.mode == "manual" else f"{event.kind} ({event.mode})"
        ok = event.outcome == "done"
        table.add_row(
            f"{event.at.astimezone():%Y-%m-%d %H:%M:%S}",
            kind,
            event.detail,
            event.by,
            "-" if event.seconds is None else f"{event.seconds:,.1f} s",
            event.outcome if ok else f"[yellow]{event.outcome}[/]",
            "-" if event.write_pause_ms is None else f"{event.write_pause_ms:,.0f} ms",
        )
    return table
