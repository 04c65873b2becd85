"""What ``status`` shows of ``shardctl monitor``: a line above the table, and its JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shardctl.cli.plain import styler
from shardctl.state.monitor import View


@dataclass(frozen=True)
class MonitorFacts:
    """What ``status`` shows of ``shardctl monitor``: each shard's failover mode, and the
    heartbeats and automatic failovers the catalog holds (None: no node answered)."""

    modes: dict[str, str]
    view: View | None


def monitor_lines(facts: MonitorFacts, *, markup: bool = True) -> list[str]:
    """``monitor: last seen 0.4s ago (host) · failover automatic: shard-0`` (rich markup;
    plain text without ``markup``); nothing when no shard is automatic and no monitor ever
    ran."""
    automatic = [s for s, mode in facts.modes.items() if mode == "automatic"]
    last = facts.view.last_seen if facts.view is not None else None
    if not automatic and last is None:
        return []
    styled = styler(markup)
    if last is None:
        seen = styled("never seen", "bold yellow")
    else:
        assert facts.view is not None
        seen = f"last seen {last:.1f}s ago ({styled(facts.view.beats[0].host, None)})"
    modes = f"failover automatic: {', '.join(automatic)}" if automatic else "failover: manual"
    lines = [f"monitor: {seen} · {modes}"]
    if facts.view is not None and facts.view.failovers:
        f = facts.view.failovers[-1]
        lines.append(
            f"last automatic failover: {f.at:%Y-%m-%d %H:%M:%S} {styled(f.shard, None)} "
            f"{styled(f.old_primary, None)} -> {styled(f.new_primary, None)}"
        )
    return lines


def monitor_facts(facts: MonitorFacts) -> dict[str, Any]:
    """The monitor's part of ``status -o json``."""
    view = facts.view
    return {
        "monitor": {
            "last_seen_seconds": None
            if view is None or view.last_seen is None
            else round(view.last_seen, 3),
            "heartbeats": [
                {
                    "id": b.id,
                    "host": b.host,
                    "started_at": b.started_at.isoformat(),
                    "seen_at": b.seen_at.isoformat(),
                    "age_seconds": round(b.age_seconds, 3),
                }
                for b in (view.beats if view is not None else ())
            ],
        },
        "failover": facts.modes,
        "failovers": [
            {
                "epoch": f.epoch,
                "at": f.at.isoformat(),
                "shard": f.shard,
                "old_primary": f.old_primary,
                "new_primary": f.new_primary,
                "reason": f.reason,
                "possibly_lost": f.possibly_lost,
                "by": f.by,
            }
            for f in (view.failovers if view is not None else ())
        ],
    }
