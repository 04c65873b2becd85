"""``status`` piped prints its table without rich (shardctl.cli.plain): the same text as rich's
table, or rich itself when the plain writer cannot vouch for the text."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from shardctl.cli import plain
from shardctl.cli.views import cluster as views
from shardctl.cli.views import monitor as monitor_views
from shardctl.config.schema import Role
from shardctl.health.archiving import ArchiveState
from shardctl.health.facts import ActualRole, ContainerState
from shardctl.health.status import StatusRow
from shardctl.state.monitor import Beat, Failover, View


def row(shard: str, name: str, role: Role = Role.PRIMARY, **changes: object) -> StatusRow:
    fields: dict[str, object] = {
        "shard": shard,
        "name": name,
        "role": role,
        "declared_role": role,
        "engine": "local",
        "actual_role": ActualRole(role.value),
        "state": ContainerState.RUNNING,
        "address": "127.0.0.1",
        "port": 27100,
        "in_recovery": role is not Role.PRIMARY,
        "timeline": 1,
        "lsn": 51_000_000,
        "lag_bytes": 0 if role is not Role.PRIMARY else None,
        "lag_seconds": None,
        "slot": None if role is Role.PRIMARY else name.replace("-", "_"),
        "healthy": True,
        "problem": None,
    }
    fields.update(changes)
    return StatusRow(**fields)  # type: ignore[arg-type]


NOW = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
ARCHIVE = ArchiveState("shard-0", "shard-0-primary", "ok", 0, 1.0, 2.5)

CLUSTERS = {
    "healthy": [
        row("shard-0", "shard-0-primary"),
        row("shard-0", "shard-0-replica-1", Role.REPLICA),
        row("shard-1", "shard-1-primary"),
        row("shard-1", "shard-1-replica-1", Role.REPLICA, lag_bytes=3 << 20, lag_seconds=1.25),
    ],
    "unhealthy, switched over, pending restart, archiving": [
        row("shard-0", "shard-0-primary", archiving=ARCHIVE),
        row(
            "shard-0",
            "shard-0-replica-1",
            Role.REPLICA,
            declared_role=Role.PRIMARY,
            state=ContainerState.EXITED,
            in_recovery=None,
            timeline=None,
            lsn=None,
            healthy=False,
            problem="reachable: [red]not[/] answering \\[x] at 127.0.0.1:27101",
            health="unreachable [x]",
            pending_restart=("shared_buffers", "max_connections"),
        ),
    ],
    "a problem rich reads as an emoji code": [
        row("shard-0", "shard-0-primary", healthy=False, problem="a:warning:b", health="a:x:b"),
    ],
    "nothing but headers": [],
}

MONITOR = monitor_views.MonitorFacts(
    {"shard-0": "automatic"},
    View(
        (Beat("h:1:2", "host[1]", NOW, NOW, 0.4),),
        (Failover(3, NOW, "shard-0", "shard-0-primary", "shard-0-replica-1", "r", "x", "m"),),
        "n",
    ),
)


def rich_text(lines: list[str], table: Table, width: int) -> str:
    """What ``render.show`` prints piped: rich's rendering, trailing spaces removed."""
    out = io.StringIO()
    console = Console(file=out, width=width)
    console.print(Group(*(Text.from_markup(line) for line in lines), table))
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()) + "\n"


@pytest.mark.parametrize("name", list(CLUSTERS))
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("width", [200, 80, 40])
@pytest.mark.parametrize("monitor", [False, True])
def test_the_plain_status_table_is_rich_s_text_or_declines(
    name: str, wide: bool, width: int, monitor: bool
) -> None:
    rows = CLUSTERS[name]
    facts = MONITOR if monitor else monitor_views.MonitorFacts({}, None)
    above = monitor_views.monitor_lines(facts, markup=False)
    text = views.status_text("demo", rows, above, wide=wide, page=width)
    expected = rich_text(
        monitor_views.monitor_lines(facts), views.status_table("demo", rows, wide=wide), width
    )
    if text is not None:
        assert text == expected
    # what the plain writer leaves to rich: a table rich shrinks or wraps, emoji codes
    wrapped = any(len(line) > width for line in expected.splitlines()) or "…" in expected
    if name == "a problem rich reads as an emoji code":
        assert text is None and ":warning:" not in expected
    elif not wrapped and expected.count("\n") == len(rows) + len(above) + 5:
        assert text is not None
    if width == 40:
        assert text is None


def test_markup_in_a_text_is_shown_as_written() -> None:
    rows = CLUSTERS["unhealthy, switched over, pending restart, archiving"]
    text = views.status_text("demo", rows, [], wide=True, page=300)
    assert text is not None
    assert "reachable: [red]not[/] answering \\[x] at 127.0.0.1:27101" in text
    assert "pending: shared_buffers, max_connections" in text
    assert "ok, RPO 2.5s" in text and "replica*" in text


def test_a_terminal_or_forced_colour_is_left_to_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert plain.plain_page() == plain.DEFAULT_WIDTH
    monkeypatch.setenv("COLUMNS", "120")
    assert plain.plain_page() == 120
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert plain.plain_page() is None
