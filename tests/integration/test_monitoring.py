"""Monitoring against the real parts: promtool on the alert rules, and a real Prometheus
(Debian's, started here on 127.0.0.1 with a config this test writes) scraping
``shardctl metrics --listen`` of a live 2 x 1 cluster, asked through its HTTP API.

promtool and prometheus come from ``scripts/prometheus.sh`` (run by scripts/test.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shardctl.config.credentials import Login
from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.util import fanout
from tests.clusters import free_base_port, frozen, run_shardctl, sdk_container
from tests.integration.conftest import ClusterFactory
from tests.integration.test_resharding import run_killed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
RULES_TEST = ROOT / "monitoring" / "alerts.test.yml"

SCRAPE_TIMEOUT = 4.0
"""``shardctl metrics --timeout``: below Prometheus' scrape timeout (:data:`INTERVAL`)."""
INTERVAL = 5
"""Prometheus' scrape interval and timeout, in seconds."""

POOLER_IMAGE = os.environ.get("SHARDCTL_POOLER_IMAGE", "shardctl-test/pgbouncer:1")
POOLER_OFFSET = 40

Series = list[tuple[dict[str, str], float]]


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/prometheus.sh (scripts/test.sh does)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_alert_rules_check_and_each_alert_fires_on_its_series() -> None:
    promtool = tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr

    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    }
    fired: dict[str, set[str]] = {}
    for case in yaml.safe_load(RULES_TEST.read_text(encoding="utf-8"))["tests"]:
        for check in case["alert_rule_test"]:
            for expected in check["exp_alerts"]:
                labels = expected["exp_labels"]
                fired.setdefault(check["alertname"], set()).add(labels.get("node", ""))
    assert set(fired) == alerts, f"alerts never shown firing: {alerts - set(fired)}"
    # A stopped replica (up 0) is the alert about that node, not its neighbours.
    assert fired["ShardctlNodeDown"] == {"s0-replica-1"}


# ------------------------------------------------------------------ a real Prometheus


def get(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def wait(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    """``probe()`` once it is truthy; fail naming ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"gave up waiting {timeout:g}s for {what}; last: {last!r}")


@contextmanager
def metrics_server(cluster: Cluster, port: int, log: Path) -> Iterator[subprocess.Popen[str]]:
    """``shardctl metrics --listen 127.0.0.1:PORT`` for the cluster, stopped afterwards."""
    with log.open("w") as err:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardctl",
                "metrics",
                "-f",
                str(cluster.topology.path),
                "--listen",
                f"127.0.0.1:{port}",
                "--timeout",
                str(SCRAPE_TIMEOUT),
                "--rows-interval",
                "5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        try:
            wait(
                "shardctl metrics to serve",
                lambda: server.poll() is None and "shardctl_up" in get(metrics_url(port)),
            )
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert server.returncode in (0, -15), log.read_text()


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


@contextmanager
def prometheus(folder: Path, target: int) -> Iterator[int]:
    """A Prometheus on 127.0.0.1 scraping ``target`` every :data:`INTERVAL` s; its port."""
    port = free_port()
    config = {
        "global": {"scrape_interval": f"{INTERVAL}s", "scrape_timeout": f"{INTERVAL}s"},
        "scrape_configs": [
            {"job_name": "shardctl", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    log = (folder / "prometheus.log").open("w")
    server = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        wait("prometheus to be ready", lambda: "Ready" in get(f"http://127.0.0.1:{port}/-/ready"))
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def query(port: int, expr: str) -> Series:
    """The instant vector of ``expr``: (labels, value) per series."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.loads(get(url))
    assert answer["status"] == "success", answer
    return [(r["metric"], float(r["value"][1])) for r in answer["data"]["result"]]


def by_node(series: Series) -> dict[str, float]:
    return {labels["node"]: value for labels, value in series}


def test_prometheus_scrapes_a_live_cluster(cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    cluster = cluster_factory()  # 2 x 1
    path = cluster.topology.path
    port = free_port()
    nodes = [n.name for n in cluster.topology.nodes]
    with metrics_server(cluster, port, tmp_path / "metrics.log"), prometheus(tmp_path, port) as p:
        # An idle cluster: every node up, and no lag (received = replayed is zero lag).
        up = wait(
            "every node up in Prometheus",
            lambda: (
                by_node(query(p, "shardctl_up")) == dict.fromkeys(nodes, 1.0)
                and query(p, "shardctl_up")
            ),
        )
        assert {k for k in up[0][0] if not k.startswith("__")} == {
            "cluster", "shard", "node", "role", "job", "instance"
        }  # fmt: skip
        replicas = {n.name for n in cluster.topology.nodes if n.role.value == "replica"}
        # An idle primary still writes a little WAL (a running-transactions record every 15 s),
        # which one scrape may catch between the primary's probe and the replica's.
        idle = dict.fromkeys(replicas, 0.0)
        wait(
            "lag 0 in bytes and seconds",
            lambda: (
                by_node(query(p, "shardctl_replication_lag_bytes")) == idle
                and by_node(query(p, "shardctl_replication_lag_seconds")) == idle
            ),
            timeout=60,
        )
        assert by_node(query(p, "shardctl_replication_streaming")) == dict.fromkeys(replicas, 1.0)
        primaries = by_node(query(p, 'shardctl_primary{role="primary"}'))
        assert primaries == {"shard-0-primary": 1.0, "shard-1-primary": 1.0}
        assert [v for _, v in query(p, "shardctl_shard_primaries")] == [1.0, 1.0]
        assert [v for _, v in query(p, "shardctl_ring_epoch")] == [1.0]
        assert query(p, 'up{job="shardctl"}')[0][1] == 1.0

        # No secret anywhere in what is served.
        text = get(metrics_url(port))
        login = cluster.credentials()
        for secret in (login.superuser_password, login.replication_password, login.app_password):
            assert secret and secret not in text

        # A reshard in flight, killed after its copy: phase and progress.
        assert run_shardctl("load", "--bulk", "--rows", "3000", "-f", path).returncode == 0
        joined = run_shardctl("add-shard", "shard-2", "--replicas", "0", "-f", path)
        assert joined.returncode == 0, joined.stderr
        assert run_killed(Path(path), "copying").returncode == 137
        # Prometheus may have seen it copying first; killed, it waits to be verified.
        wait(
            "the reshard in flight, copied",
            lambda: query(p, 'shardctl_reshard_phase{phase="verifying"} == 1'),
        )
        [(labels, _)] = query(p, "shardctl_reshard_phase == 1")
        assert (labels["phase"], labels["id"]) == ("verifying", "1")
        assert [v for _, v in query(p, "shardctl_reshard_in_flight")] == [1.0]
        [(_, copied)] = query(p, "shardctl_reshard_copied_rows")
        [(_, planned)] = query(p, "shardctl_reshard_planned_rows")
        assert copied == planned > 0
        [(_, done)] = query(p, "shardctl_reshard_copied_ranges / shardctl_reshard_planned_ranges")
        assert done == 1.0
        wait(
            "rows counted in the background",
            lambda: sum(v for _, v in query(p, "shardctl_table_rows")) >= 3000,
        )
        assert run_shardctl("rebalance", "--abort", "-f", path).returncode == 0
        wait("no reshard in flight", lambda: query(p, "shardctl_reshard_in_flight == 0"))

        # A frozen primary: its up turns 0 and no scrape outlasts its timeout.
        with frozen(cluster, "shard-0", rescue_after=120):
            paused = time.time()
            wait(
                "the paused primary's up 0",
                lambda: by_node(query(p, "shardctl_up")).get("shard-0-primary") == 0.0,
            )
            for _ in range(2):
                started = time.monotonic()
                text = get(metrics_url(port), timeout=60)
                assert time.monotonic() - started < SCRAPE_TIMEOUT + 2.0
                assert 'node="shard-0-primary"' in text
            window = f"{max(INTERVAL * 2, int(time.time() - paused) + 1)}s"
            ups = by_node(query(p, "shardctl_up"))
            assert ups == {**dict.fromkeys(nodes, 1.0), "shard-0-primary": 0.0}
            # Prometheus saw every scrape succeed, each within shardctl's own deadline.
            assert query(p, f'min_over_time(up{{job="shardctl"}}[{window}])')[0][1] == 1.0
            longest = query(
                p, f'max_over_time(scrape_duration_seconds{{job="shardctl"}}[{window}])'
            )
            assert longest[0][1] < INTERVAL
            [(_, took)] = query(p, "max_over_time(shardctl_scrape_duration_seconds[30s])")
            assert took < SCRAPE_TIMEOUT + 1.0

        wait(
            "the primary back after the pause",
            lambda: by_node(query(p, "shardctl_up")) == dict.fromkeys(nodes, 1.0),
        )

        # A stopped replica: up 0 and not streaming, which is the node-down alert's series.
        replica = cluster.topology.node("shard-1-replica-1")
        sdk_container(cluster, replica).stop(timeout=5)
        wait(
            "the stopped replica's up 0",
            lambda: by_node(query(p, "shardctl_up")).get("shard-1-replica-1") == 0.0,
        )
        rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]
        expr = {r["alert"]: r["expr"] for r in rules}
        assert set(by_node(query(p, expr["ShardctlNodeDown"]))) == {"shard-1-replica-1"}
        assert set(by_node(query(p, expr["ShardctlReplicaNotStreaming"]))) == {"shard-1-replica-1"}

        # --once prints the same facts from the topology as it is now (shard-2 added), exit 0.
        once = run_shardctl("metrics", "--once", "-f", path)
        assert once.returncode == 0, once.stderr
        ups = {
            s.labels["node"]: s.value
            for family in text_string_to_metric_families(once.stdout)
            if family.name == "shardctl_up"
            for s in family.samples
        }
        expected = {**dict.fromkeys(nodes, 1.0), "shard-1-replica-1": 0.0, "shard-2-primary": 1.0}
        assert ups == expected
        for secret in (login.superuser_password, login.replication_password, login.app_password):
            assert secret and secret not in once.stdout + once.stderr


def once(path: Path | str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``shardctl metrics --once``: every sample by metric name (exit 0 asserted)."""
    ran = run_shardctl("metrics", "--once", "-f", path)
    assert ran.returncode == 0, ran.stderr
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(ran.stdout):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def test_a_full_pool_and_a_failover_in_the_metrics(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(
        shards=1,
        replicas=1,
        base_port=free_base_port(2 * POOLER_OFFSET),
        pooler={"image": POOLER_IMAGE, "pool_size": 1, "port_offset": POOLER_OFFSET},
    )
    path = cluster.topology.path
    primary = cluster.topology.node("shard-0-primary")
    login = cluster.credentials()
    app = pg.conninfo(primary, login, "app", login=Login.APP, via="pooler")

    # Transaction mode, one server connection: a transaction holds it, the next client waits.
    with psycopg.connect(app, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT 1")

        def wait_in_line() -> None:
            with psycopg.connect(app, autocommit=True) as conn:
                conn.execute("SELECT 1")

        waiter = fanout.Background({"waiter": wait_in_line})
        try:
            found = wait(
                "a client waiting on the pooler",
                lambda: (
                    (m := once(path))
                    and by_node(m["shardctl_pooler_clients_waiting"]).get(primary.name, 0) >= 1
                    and m
                ),
            )
            assert by_node(found["shardctl_pooler_up"]) == {
                "shard-0-primary": 1.0, "shard-0-replica-1": 1.0
            }  # fmt: skip
            # The pool being full does not make the pooler or its node look down.
            assert by_node(found["shardctl_up"])[primary.name] == 1.0
        finally:
            holder.execute("COMMIT")
            assert not isinstance(waiter.join(30)["waiter"], BaseException)

    # A failover: the promoted replica is the primary, labelled so, and the time is recorded.
    before = time.time()
    sdk_container(cluster, primary).stop(timeout=5)
    failed = run_shardctl("failover", "shard-0", "--yes", "-f", path)
    assert failed.returncode == 0, failed.stderr
    after = time.time()
    found = once(path)
    primaries = {(labels["node"], labels["role"]): v for labels, v in found["shardctl_primary"]}
    assert primaries == {("shard-0-replica-1", "primary"): 1.0, ("shard-0-primary", "replica"): 0.0}
    assert by_node(found["shardctl_up"]) == {"shard-0-primary": 0.0, "shard-0-replica-1": 1.0}
    [(_, failover)] = found["shardctl_last_failover_timestamp_seconds"]
    [(_, changed)] = found["shardctl_last_role_change_timestamp_seconds"]
    assert before - 5 <= failover == changed <= after + 5
    [(_, epoch)] = found["shardctl_ring_epoch"]
    assert epoch == 2.0
