"""``shardctl monitor`` against real engines: automatic failover under ledgered Router traffic,
two monitors at once, a frozen primary, a monitor killed in the middle of a failover."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from shardctl.state import catalog
from shardctl.state import monitor as kept
from tests.clusters import interruptible, pause, sdk_container
from tests.integration.conftest import ClusterFactory, run_shardctl
from tests.traffic import check_ledger, preload, traffic

AUTOMATIC = {"mode": "automatic", "detect_seconds": 2}


class Running:
    """A ``shardctl monitor -o json`` subprocess and the events it printed."""

    def __init__(self, path: Path, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shardctl", "monitor", "-f", str(path), "-o", "json", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )
        self.events: list[dict[str, Any]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.append(json.loads(line))

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signal it and wait; its exit code and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=150)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.reader.join(timeout=10)
        assert self.process.stderr is not None
        stderr = self.process.stderr.read()
        for event in self.events:  # shown by pytest when the test fails
            print(event["at"], event["shard"], event["kind"], event["message"], event["command"])
        print(stderr)
        return code, stderr


def acting_primary(cluster: Cluster, shard: str) -> str:
    record = catalog.read_any(cluster.topology, cluster.credentials()).record()
    return dict(record.primaries).get(shard, f"{shard}-primary")


def monotonic_of(stamp: str) -> float:
    """An event's ``at`` (ISO 8601, UTC) on this process's ``time.monotonic()`` clock."""
    return datetime.fromisoformat(stamp).timestamp() - (time.time() - time.monotonic())


def wait_acting(cluster: Cluster, shard: str, node: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if acting_primary(cluster, shard) == node:
                return
        except DatabaseUnavailable:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{node} never became {shard}'s acting primary")


def in_recovery(cluster: Cluster, name: str) -> bool | None:
    """None when the node does not answer."""
    try:
        node = cluster.topology.node(name)
        with pg.connect(node, cluster.credentials(), "postgres", timeout=2) as conn:
            row = conn.execute("SELECT pg_catalog.pg_is_in_recovery()").fetchone()
    except (DatabaseUnavailable, psycopg.OperationalError):  # down, or going down mid-query
        return None
    assert row is not None
    return bool(row[0])


def streams(cluster: Cluster, name: str) -> bool:
    try:
        node = cluster.topology.node(name)
        with pg.connect(node, cluster.credentials(), "postgres", timeout=2) as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_wal_receiver "
                "WHERE status = 'streaming')"
            ).fetchone()
    except (DatabaseUnavailable, psycopg.OperationalError):  # the re-join may stop it meanwhile
        return False
    return bool(row and row[0])


def failovers(cluster: Cluster, node: str) -> list[kept.Failover]:
    with pg.connect(cluster.topology.node(node), cluster.credentials(), "app") as conn:
        return kept.read_failovers(conn)


def key_on(cluster: Cluster, shard: str) -> uuid.UUID:
    ring = catalog.read_any(cluster.topology, cluster.credentials()).record().ring()
    while True:
        key = uuid.uuid4()
        if ring.node_for(key) == shard:
            return key


PREFERRED = {"mode": "sync", "durability": "preferred", "degrade_after": 1}


def test_sync_required_primary_killed_two_monitors_one_promotion(
    cluster_factory: ClusterFactory,
) -> None:
    """shard-0 sync/required is failed over; shard-1 (sync/preferred) takes writes all along,
    and the monitors apply its durability policy when its standby goes and returns."""
    made = cluster_factory(shards=2, up=False, replication="sync", failover=AUTOMATIC)
    path = made.topology.path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["shards"][1]["replication"] = PREFERRED
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with Cluster.load(path) as cluster:
        cluster.up(timeout=180)
        _two_monitors(cluster, path)


def wait_event(monitors: list[Running], kind: str, shard: str, text: str) -> None:
    deadline = time.monotonic() + 60
    while not [
        e for m in monitors for e in m.kinds(kind) if e["shard"] == shard and text in e["message"]
    ]:
        assert time.monotonic() < deadline, [m.events[-5:] for m in monitors]
        time.sleep(0.1)


def _two_monitors(cluster: Cluster, path: Path) -> None:
    preloaded = preload(cluster, 500)
    monitors = [Running(path, "--interval", "0.5"), Running(path, "--interval", "0.5")]
    old = cluster.topology.node("shard-0-primary")
    container = sdk_container(cluster, old)
    other = key_on(cluster, "shard-1")
    other_acks: list[float] = []
    stop = threading.Event()
    try:
        # A sync shard left with no standby holds its commits until the old primary is
        # re-cloned: the writers wait for it (a longer deadline) instead of giving up.
        with traffic(cluster, preloaded, threads=2, deadline=180) as writers:

            def write_other() -> None:  # the other shard, through a Router of its own
                with Router(cluster, epoch_check_interval=0.5) as router:
                    router.execute(other, "INSERT INTO users (id) VALUES (%s)", (other,))
                    while not stop.is_set():
                        router.execute(
                            other, "UPDATE users SET first_name = 'x' WHERE id = %s", (other,)
                        )
                        other_acks.append(time.monotonic())
                        time.sleep(0.05)

            beside = threading.Thread(target=write_other)
            beside.start()
            time.sleep(1.5)
            container.kill()
            killed_at = time.monotonic()
            wait_acting(cluster, "shard-0", "shard-0-replica-1")
            promoted_at = time.monotonic()
            container.start()  # by hand, as an operator might, while the monitor re-joins it
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = in_recovery(cluster, "shard-0-primary")
                assert state is not False, "the fenced old primary accepted writes"
                if state and streams(cluster, "shard-0-primary"):
                    break
                time.sleep(0.2)
            assert streams(cluster, "shard-0-primary"), "the old primary was never re-joined"
            acked = sum(w.acknowledged for w in writers)
            time.sleep(2.0)
            assert sum(w.acknowledged for w in writers) > acked  # writes flow again
            # shard-1 is preferred: without its standby the monitor degrades it (it acknowledges
            # as async, writes go on); with the standby back, sync is restored.
            standby = sdk_container(cluster, cluster.topology.node("shard-1-replica-1"))
            standby.stop()
            wait_event(monitors, "durability", "shard-1", "degraded")
            degraded_at = time.monotonic()
            time.sleep(1.0)
            assert any(at > degraded_at for at in other_acks)
            standby.start()
            wait_event(monitors, "durability", "shard-1", "sync restored")
            restored_at = time.monotonic()
            time.sleep(1.0)
            assert any(at > restored_at for at in other_acks)
            stop.set()
            beside.join(timeout=60)
        assert [w.failed for w in writers] == [[], []]
        # The other shard took writes while shard-0 had no primary.
        assert any(killed_at < at < promoted_at for at in other_acks)
        check_ledger(cluster, writers, preloaded)  # nothing excused: sync, required
        history = failovers(cluster, "shard-0-replica-1")
        assert [(h.shard, h.old_primary, h.new_primary) for h in history] == [
            ("shard-0", "shard-0-primary", "shard-0-replica-1")
        ]
        assert "nothing acknowledged" in history[0].possibly_lost
        status = run_shardctl("status", "-f", path, "-o", "json")
        facts = json.loads(status.stdout)
        assert facts["monitor"]["last_seen_seconds"] is not None
        assert facts["failover"]["shard-0"] == "automatic"
        assert [f["new_primary"] for f in facts["failovers"]] == ["shard-0-replica-1"]
    finally:
        stop.set()
        results = [monitors[0].stop(signal.SIGTERM), monitors[1].stop(signal.SIGINT)]
    for monitor, (code, stderr) in zip(monitors, results, strict=True):
        assert code == 0, stderr
        assert monitor.kinds("stopped"), monitor.events[-3:]
        assert not monitor.kinds("bug")
    promotions = [e for m in monitors for e in m.kinds("promoted")]
    assert len(promotions) == 1, promotions
    assert writable_in(cluster, "shard-0") == ["shard-0-replica-1"]


def writable_in(cluster: Cluster, shard: str) -> list[str]:
    return [
        n.name for n in cluster.topology.shard_nodes(shard) if in_recovery(cluster, n.name) is False
    ]


def test_async_frozen_primary_is_killed_then_promoted_and_a_killed_one_too(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(shards=2, failover=AUTOMATIC)
    path = cluster.topology.path
    preloaded = preload(cluster, 500)
    monitor = Running(path, "--interval", "0.5")
    frozen = sdk_container(cluster, cluster.topology.node("shard-0-primary"))
    killed = sdk_container(cluster, cluster.topology.node("shard-1-primary"))
    try:
        with traffic(cluster, preloaded, threads=2) as writers:
            time.sleep(1.5)
            pause(frozen)
            wait_acting(cluster, "shard-0", "shard-0-replica-1")
            frozen.reload()
            assert frozen.status == "exited" or streams(cluster, "shard-0-primary")
            deadline = time.monotonic() + 60
            while not monitor.kinds("promoted"):  # published everywhere: then the next one
                assert time.monotonic() < deadline, monitor.events[-5:]
                time.sleep(0.1)
            killed.kill()
            killed_at = time.monotonic()
            wait_acting(cluster, "shard-1", "shard-1-replica-1")
            time.sleep(1.0)
        failed = [f for w in writers for f in w.failed]
        assert failed == [], failed[:3]
        # Async: only what the old primaries acknowledged before they died may be missing. A
        # frozen one dies at the monitor's kill, not at the freeze: the engine thaws a paused
        # container to let the SIGKILL land, and its backends can commit and acknowledge what
        # waited in their sockets in that instant (seen: an insert sent 7 s into the freeze).
        died = monotonic_of(monitor.kinds("killed")[0]["at"])
        check_ledger(
            cluster, writers, preloaded, may_lose=[("shard-0", died), ("shard-1", killed_at)]
        )
    finally:
        code, stderr = monitor.stop()
    assert code == 0, stderr
    assert not monitor.kinds("bug")
    assert monitor.kinds("killed")[0]["shard"] == "shard-0"
    promoted = {e["shard"]: e for e in monitor.kinds("promoted")}
    assert set(promoted) == {"shard-0", "shard-1"}
    for event in promoted.values():
        assert event["possibly_lost"].startswith("cannot know"), event


KILL_MONITOR_AFTER = Path(__file__).with_name("kill_monitor_after.py")


def test_monitor_killed_mid_failover_converges_and_manual_only_reports(
    cluster_factory: ClusterFactory,
) -> None:
    made = cluster_factory(shards=2, up=False, failover=AUTOMATIC)
    path = made.topology.path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["shards"][1]["failover"] = {"mode": "manual"}  # the per-shard override
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with Cluster.load(path) as cluster:
        cluster.up(timeout=180)
        _killed_mid_failover(cluster, path)


def _killed_mid_failover(cluster: Cluster, path: Path) -> None:
    for shard in ("shard-0", "shard-1"):
        container = sdk_container(cluster, cluster.topology.node(f"{shard}-primary"))
        container.kill()
    died = subprocess.run(
        [sys.executable, str(KILL_MONITOR_AFTER), str(path), "promoted"],  # shard-0's
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert died.returncode == 137, died.stdout + died.stderr
    # Promoted, not yet published: the catalog still names the dead primary.
    assert in_recovery(cluster, "shard-0-replica-1") is False
    assert acting_primary(cluster, "shard-0") == "shard-0-primary"
    deadline = time.monotonic() + 120
    while True:
        again = run_shardctl("monitor", "--once", "-f", path, "-o", "json")
        events = [json.loads(line) for line in again.stdout.splitlines()]
        if acting_primary(cluster, "shard-0") == "shard-0-replica-1":
            break
        assert time.monotonic() < deadline, again.stdout + again.stderr
    promoted = [e["shard"] for e in events if e["kind"] == "promoted"]
    assert promoted == ["shard-0"], again.stdout + again.stderr
    assert writable_in(cluster, "shard-0") == ["shard-0-replica-1"]
    # shard-1 is manual: reported every pass with the command, never promoted.
    once = run_shardctl("monitor", "--once", "-f", path, "-o", "json")
    assert once.returncode == 1, once.stdout + once.stderr
    reports = [json.loads(line) for line in once.stdout.splitlines()]
    manual = [e for e in reports if e["shard"] == "shard-1" and e["kind"] == "report"]
    assert manual and manual[0]["command"] == "shardctl failover shard-1", reports
    assert "manual" in manual[0]["message"]
    assert in_recovery(cluster, "shard-1-replica-1") is True
