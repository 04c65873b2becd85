"""``replication: sync`` through the loss of a whole host, for real: two simulated hosts
(scripts/second-host.sh), shard-0 a -> b and shard-1 b -> a, ledgered inserts through one
Router on each shard while host b is lost, failed over, and brought back.

``durability: preferred`` keeps shard-0 writable as async once the degradation delay passes;
``required`` blocks its writes until b returns. Either way ``failover shard-1`` completes, and
nothing acknowledged is lost. Then a frozen host engine and a paused primary: every command
ends within its deadline with one clear line.

Under ``shardctl monitor`` (``failover: automatic``), host b lost: the ``sync``/``required``
shard whose primary was on b is promoted on a (its synchronous standby); the ``async`` one is
not (no engine can confirm its primary is down), and the monitor says why and what to run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from shardctl.state import catalog
from tests.clusters import (
    Host,
    frozen,
    make_topology,
    sdk_container,
    simulated_hosts,
    split_topology,
)
from tests.integration.conftest import run_shardctl
from tests.integration.test_monitor import Running, acting_primary, wait_acting
from tests.traffic import rows_by_shard

COMMAND_BOUND = 120.0
"""Seconds any one command may take here before the test calls it hung (the documented
bounds are far below: docs/failover.md#deadlines)."""


@dataclass
class Inserter:
    """Inserts new keys of one shard through a Router until stopped; a ledger of what was
    acknowledged, and when each failed attempt started."""

    router: Router
    shard: str
    acked: dict[uuid.UUID, float] = field(default_factory=dict)
    """Key -> when its insert was acknowledged (time.monotonic())."""
    failed: list[tuple[float, str]] = field(default_factory=list)
    """(when the attempt started, why it failed)."""

    def key(self) -> uuid.UUID:
        while True:
            key = uuid.uuid4()
            if self.router.owner(key) == self.shard:
                return key

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key, started = self.key(), time.monotonic()
            try:
                self.router.execute(
                    key,
                    "INSERT INTO users (id, first_name) VALUES (%s, 'ledger') "
                    "ON CONFLICT (id) DO NOTHING",
                    (key,),
                )
            except Exception as exc:  # recorded: the test says which failures are allowed
                self.failed.append((started, f"{type(exc).__name__}: {exc}"))
                continue
            self.acked[key] = time.monotonic()
            time.sleep(0.02)  # two cores for everything

    def acked_after(self, moment: float) -> int:
        return sum(1 for at in list(self.acked.values()) if at > moment)

    def failed_after(self, moment: float) -> list[str]:
        return [why for started, why in list(self.failed) if started > moment]


@contextmanager
def inserting(
    cluster: Cluster, shards: tuple[str, ...] = ("shard-0", "shard-1")
) -> Iterator[dict[str, Inserter]]:
    """One inserter per shard, sharing one Router, for the block."""
    router = Router(cluster, max_size=2 * len(shards), epoch_check_interval=0.5)
    inserters = {s: Inserter(router, s) for s in shards}
    stop = threading.Event()
    threads = [threading.Thread(target=i.run, args=(stop,)) for i in inserters.values()]
    for thread in threads:
        thread.start()
    try:
        yield inserters
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        router.close()


def assert_ledger_kept(cluster: Cluster, inserters: dict[str, Inserter]) -> int:
    """Every acknowledged insert is on its shard's acting primary; how many there were."""
    rows = rows_by_shard(cluster)
    for shard, inserter in inserters.items():
        lost = [k for k in inserter.acked if str(k) not in rows[shard]]
        assert lost == [], f"{shard}: acknowledged inserts lost: {lost[:5]}"
    return sum(len(i.acked) for i in inserters.values())


def shardctl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real CLI, called hung past :data:`COMMAND_BOUND`."""
    return run_shardctl(*args, timeout=COMMAND_BOUND)


def status_of(path: Path) -> tuple[int, dict[str, dict[str, object]], str]:
    done = shardctl("status", "-f", path, "-o", "json")
    nodes = {str(n["node"]): n for n in json.loads(done.stdout)["nodes"]}
    return done.returncode, nodes, done.stderr


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[Host]]:
    with simulated_hosts(2) as made:
        yield made


@contextmanager
def sync_cluster(hosts: list[Host], folder: Path, replication: object) -> Iterator[Cluster]:
    """A split cluster (shard-0 a -> b, shard-1 b -> a) with ``replication``, up; down after."""
    for host in hosts:
        host.start()
    path = split_topology(folder, hosts)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["replication"] = replication
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cluster = Cluster.load(path)
    try:
        cluster.up(timeout=240)
        yield cluster
    finally:
        for host in hosts:
            host.start()
        with suppress(Exception):
            cluster.down(volumes=True)
        cluster.close()


def test_preferred_degrades_to_async_fails_over_and_restores_sync(
    hosts: list[Host], tmp_path: Path
) -> None:
    b = hosts[1]
    policy = {"mode": "sync", "durability": "preferred", "degrade_after": 2}
    with sync_cluster(hosts, tmp_path, policy) as cluster:
        path = cluster.topology.path
        with inserting(cluster) as inserters:
            time.sleep(1.5)
            assert all(i.acked and not i.failed for i in inserters.values())

            b.stop()
            code, nodes, _ = status_of(path)  # shard-0 without a standby: the delay starts
            assert code == 1
            assert nodes["shard-0-replica-1"]["state"] == "unreachable"
            time.sleep(2.5)
            code, nodes, notes = status_of(path)  # past the delay: shard-0 goes async
            degraded_at = time.monotonic()
            assert code == 1
            problem = str(nodes["shard-0-primary"]["problem"])
            assert problem.startswith("sync: degraded: acknowledging writes as async"), problem
            assert "shard-0-replica-1" in problem and f"host {b.address} unreachable" in problem
            assert "shard-0: degraded" in notes
            verified = shardctl("verify-replication", "-f", path)
            assert verified.returncode == 1
            assert "shard-0-primary: sync: degraded" in verified.stderr
            time.sleep(2.0)
            s0 = inserters["shard-0"]
            assert s0.acked_after(degraded_at) > 10  # shard-0 takes writes, as async
            assert s0.failed_after(degraded_at) == []

            failed_over = shardctl("failover", "shard-1", "--yes", "-f", path)
            assert failed_over.returncode == 0, failed_over.stdout + failed_over.stderr
            assert "shard-1-primary -> shard-1-replica-1" in failed_over.stdout
            assert "possibly lost: nothing acknowledged" in failed_over.stdout
            assert "shard-1: degraded" in failed_over.stderr  # alone on a: async at once
            promoted_at = time.monotonic()
            time.sleep(3.0)
            s1 = inserters["shard-1"]
            assert s1.acked_after(promoted_at) > 10  # shard-1 takes writes on host a
            assert s1.failed_after(promoted_at + 1.0) == []

            b.start()
            up = shardctl("up", "-f", path)
            assert up.returncode == 0, up.stdout + up.stderr
            restored_at = time.monotonic()
            code, nodes, _ = status_of(path)
            assert code == 0, nodes  # both shards synchronous again
            assert nodes["shard-1-primary"]["role"] == "replica"  # the old primary re-joined
            assert nodes["shard-1-primary"]["actual_role"] == "replica"
            time.sleep(1.5)
            assert s0.acked_after(restored_at) > 10 and s0.failed_after(restored_at) == []
        assert assert_ledger_kept(cluster, inserters) > 100

        # shard-0 degraded again (its replica stopped), then its primary lost (frozen) while
        # the replica is back but cannot stream: a failover says what it may have lost.
        fresh = Cluster.load(path)
        replica = sdk_container(fresh, fresh.topology.node("shard-0-replica-1"))
        replica.stop()
        shardctl("status", "-f", path)
        time.sleep(2.5)
        assert "shard-0: degraded" in shardctl("status", "-f", path).stderr
        with frozen(fresh, "shard-0", rescue_after=COMMAND_BOUND):
            replica.start()
            failed_over = shardctl("failover", "shard-0", "--yes", "-f", path)
        fresh.close()
        assert failed_over.returncode == 0, failed_over.stdout + failed_over.stderr
        assert "possibly lost: writes acknowledged since" in failed_over.stdout
        assert "shard-0 was degraded" in failed_over.stdout


def test_required_blocks_writes_until_the_standby_returns_and_nothing_hangs(
    hosts: list[Host], tmp_path: Path
) -> None:
    b = hosts[1]
    with sync_cluster(hosts, tmp_path, "sync") as cluster:
        path = cluster.topology.path
        with inserting(cluster) as inserters:
            time.sleep(1.5)
            assert all(i.acked and not i.failed for i in inserters.values())

            b.stop()
            lost_at = time.monotonic()
            code, nodes, _ = status_of(path)
            assert code == 1
            problem = str(nodes["shard-0-primary"]["problem"])
            assert problem.startswith("sync: writes block"), problem
            assert "shard-0-replica-1" in problem and "third host" in problem
            assert nodes["shard-0-primary"]["health"] == "writes blocked"
            time.sleep(3.0)
            s0 = inserters["shard-0"]
            assert s0.acked_after(lost_at + 2.0) == 0  # blocked: the guarantee

            failed_over = shardctl("failover", "shard-1", "--yes", "-f", path)
            assert failed_over.returncode == 0, failed_over.stdout + failed_over.stderr
            assert "possibly lost: nothing acknowledged" in failed_over.stdout
            assert "commits wait until `shardctl up`" in failed_over.stderr

            b.start()
            up = shardctl("up", "-f", path)
            assert up.returncode == 0, up.stdout + up.stderr
            back_at = time.monotonic()
            time.sleep(2.0)
            assert s0.acked_after(back_at) > 10  # writes resume
            assert inserters["shard-1"].acked_after(back_at) > 10
        assert assert_ledger_kept(cluster, inserters) > 50
        assert shardctl("verify-replication", "-f", path).returncode == 0

        # A frozen host engine (b's: shard-1's replica, shard-0's), then a paused primary.
        with frozen_engine(b):
            for command in (
                ("status", "-o", "json"),
                ("verify-replication",),
                ("rebalance", "--plan"),
                ("failover", "shard-1", "--yes"),  # its primary answers (on a): refused
                ("up",),
                ("down",),
            ):
                done = shardctl(*command, "-f", path)
                one_clear_line(done)
                if command[0] in ("status", "verify-replication"):
                    assert done.returncode == 1, done.stdout + done.stderr
                    assert "engine b does not answer" in done.stdout + done.stderr
                if command[0] in ("up", "down"):
                    assert done.returncode == 3 and "engine b" in done.stderr, done.stderr
        fresh = Cluster.load(path)
        with frozen(fresh, "shard-0", rescue_after=COMMAND_BOUND):
            for command in (
                ("status",),
                ("verify-replication",),
                ("rebalance", "--plan"),
                ("switchover", "shard-0", "--yes"),
                ("remove-shard", "shard-1", "--yes"),
            ):
                done = shardctl(*command, "-f", path)
                one_clear_line(done)
                assert done.returncode != 0, (command, done.stdout)
                if command[0] in ("switchover", "rebalance"):
                    assert "shard-0-primary" in done.stderr, done.stderr
            up = shardctl("up", "-f", path)  # repairs: unpauses it
            assert up.returncode == 0, up.stderr
        assert shardctl("verify-replication", "-f", path).returncode == 0
        fresh.close()


def host_engine_pid(host: Host) -> int:
    return int(Path(f"/run/shardctl-hosts/{host.name}/dockerd.pid").read_text().strip())


@contextmanager
def frozen_engine(host: Host) -> Iterator[None]:
    """The host's Docker engine stopped in its tracks (SIGSTOP): its socket accepts and never
    answers; its containers run on."""
    pid = host_engine_pid(host)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def one_clear_line(done: subprocess.CompletedProcess[str]) -> None:
    """An error is one line (two with a hint), never a traceback."""
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode not in (0, 1):
        assert done.stderr.strip().count("\n") <= 1, done.stderr


def test_monitor_promotes_the_sync_shard_of_a_lost_host_and_only_reports_the_async_one(
    hosts: list[Host], tmp_path: Path
) -> None:
    """shard-0 a -> b async (stays up), shard-1 b -> a sync/required, shard-2 b -> a async."""
    a, b = hosts
    for host in hosts:
        host.start()
    path = make_topology(tmp_path, 3, 1)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["engines"] = {"a": a.engine(), "b": b.engine()}
    data["allow_plaintext"] = True  # published on the hosts' own addresses
    data["spread"] = "hosts"
    data["failover"] = {"mode": "automatic", "detect_seconds": 2}
    data["shards"] = [
        {"name": "shard-0", "engine": "a", "replica_engines": ["b"]},
        {"name": "shard-1", "engine": "b", "replica_engines": ["a"], "replication": "sync"},
        {"name": "shard-2", "engine": "b", "replica_engines": ["a"]},
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    cluster = Cluster.load(path)
    monitor: Running | None = None
    try:
        cluster.up(timeout=240)
        monitor = Running(path, "--interval", "0.5")
        with inserting(cluster, ("shard-0", "shard-1", "shard-2")) as inserters:
            deadline = time.monotonic() + 60
            while not all(i.acked for i in inserters.values()) or not any(
                e["kind"] == "started" for e in monitor.events
            ):
                assert time.monotonic() < deadline, monitor.events
                time.sleep(0.2)
            time.sleep(2.0)  # a few passes: the monitor sees shard-1's synchronous standby

            b.stop()
            lost_at = time.monotonic()
            wait_acting(cluster, "shard-1", "shard-1-replica-1", timeout=COMMAND_BOUND)
            promoted_at = time.monotonic()
            s0 = inserters["shard-0"]
            assert s0.acked_after(lost_at) > 0 and s0.failed_after(lost_at) == []
            deadline = time.monotonic() + 30
            while not [e for e in monitor.kinds("report") if e["shard"] == "shard-2"]:
                assert time.monotonic() < deadline, monitor.events[-5:]
                time.sleep(0.2)
            assert acting_primary(cluster, "shard-2") == "shard-2-primary"

            time.sleep(1.0)
            returned_at = time.monotonic()
            b.start()  # the host is back: its containers restart with its engine
            deadline = time.monotonic() + 180
            while not [e for e in monitor.kinds("rejoined") if e["shard"] == "shard-1"]:
                assert time.monotonic() < deadline, monitor.events[-5:]
                time.sleep(0.5)
            back_at = time.monotonic()
            deadline = time.monotonic() + 60
            while not all(i.acked_after(back_at) for i in inserters.values()):
                assert time.monotonic() < deadline, {s: len(i.acked) for s, i in inserters.items()}
                time.sleep(0.2)
            assert s0.failed_after(lost_at) == []  # the shard on the surviving host never failed
        assert assert_ledger_kept(cluster, inserters) > 50
        roles = Cluster.load(path)
        roles.follow_roles()
        view = catalog.read(roles.topology, roles.credentials())
        agreed, problems = view.agrees, view.problems
        roles.close()
        # Promoted, shard-1 has no standby until its old primary is re-cloned (durability
        # required): it acknowledges nothing meanwhile, and writes resume after the re-join.
        s1 = inserters["shard-1"]
        assert not [at for at in s1.acked.values() if promoted_at < at < returned_at]
    finally:
        if monitor is not None:
            code, stderr = monitor.stop()
        for host in hosts:
            host.start()
        with suppress(Exception):
            cluster.down(volumes=True)
        cluster.close()
    assert code == 0, stderr
    assert not monitor.kinds("bug")
    promoted = monitor.kinds("promoted")
    assert [(e["shard"], e["new_primary"]) for e in promoted] == [("shard-1", "shard-1-replica-1")]
    assert "nothing acknowledged" in promoted[0]["possibly_lost"]
    assert "engine does not answer" in monitor.kinds("promote")[0]["message"]
    report = next(e for e in monitor.kinds("report") if e["shard"] == "shard-2")
    assert "async" in report["message"] and "engine does not answer" in report["message"]
    assert report["command"] == "shardctl failover shard-2"
    notes = [e["message"] for e in monitor.kinds("note") if e["shard"] == "shard-1"]
    assert any("could not be reached to fence" in n for n in notes), notes
    # shard-2's primary (on b) missed the epoch: published to the others all the same; it had
    # the current epoch again once it answered (copied by the monitor, or the re-join's epoch).
    assert any("could not be written to shard-2-primary" in n for n in notes), notes
    assert agreed, problems
