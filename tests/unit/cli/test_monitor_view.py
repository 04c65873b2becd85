"""What status shows of the monitor: one line above the table, and its JSON."""

from __future__ import annotations

from datetime import UTC, datetime

from shardctl.cli.views import monitor as render
from shardctl.ops.monitor.events import Event
from shardctl.state.monitor import Beat, Failover, View

NOW = datetime(2026, 12, 7, 1, 2, 3, 456000, tzinfo=UTC)


def test_nothing_is_shown_without_an_automatic_shard_or_a_monitor() -> None:
    assert render.monitor_lines(render.MonitorFacts({"shard-0": "manual"}, None)) == []


def test_an_automatic_shard_without_a_monitor_says_never_seen() -> None:
    facts = render.MonitorFacts({"shard-0": "automatic", "shard-1": "manual"}, View((), (), "x"))
    (line,) = render.monitor_lines(facts)
    assert "never seen" in line and "failover automatic: shard-0" in line
    doc = render.monitor_facts(facts)
    assert doc["monitor"]["last_seen_seconds"] is None
    assert doc["failover"] == {"shard-0": "automatic", "shard-1": "manual"}


def test_the_heartbeat_and_the_last_failover_are_shown() -> None:
    beat = Beat("h:1:2", "h", NOW, NOW, 0.4)
    failover = Failover(3, NOW, "shard-0", "shard-0-primary", "shard-0-replica-1", "r", "x", "m")
    facts = render.MonitorFacts({"shard-0": "automatic"}, View((beat,), (failover,), "n"))
    lines = render.monitor_lines(facts)
    assert "last seen 0.4s ago (h)" in lines[0]
    assert "shard-0-primary -> shard-0-replica-1" in lines[1]
    doc = render.monitor_facts(facts)
    assert doc["monitor"]["last_seen_seconds"] == 0.4
    assert doc["failovers"][0]["epoch"] == 3 and doc["failovers"][0]["possibly_lost"] == "x"


def test_an_event_is_one_timestamped_line_or_one_json_object() -> None:
    event = Event("report", "why not", "shard-0", "shardctl failover shard-0", at=NOW)
    assert event.line() == (
        "2026-12-07T01:02:03.456Z shard-0 report: why not -- run: shardctl failover shard-0"
    )
    assert event.facts()["command"] == "shardctl failover shard-0"
    assert event.facts()["at"] == NOW.isoformat()
