"""The operator's view through the real CLI on a real cluster: what is in flight, in 80 columns,
one exit-code policy, clean interrupts.

One small cluster (1 shard x 1 replica, then a shard joins without replicas) carries the whole
story: status on 80 columns, a reshard killed mid-way shown by status, --plan and distribution,
Ctrl-C in rebalance, --abort, and a stopped cluster answering every command with exit 3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

from shardctl.db import pg
from shardctl.docker.clients import list_over_socket, local_socket
from shardctl.ops.cluster import Cluster
from shardctl.state import locks
from tests.clusters import imported_by, interruptible
from tests.integration.conftest import ClusterFactory, run_shardctl
from tests.integration.test_resharding import run_killed

NARROW = {"COLUMNS": "80"}
SLOWLY = ("--rows-per-chunk", "100", "--throttle", "0.5")
NOT_RUNNING = "error: the cluster `{}` is not running: run `shardctl up`"


def lines_fit(text: str, width: int = 80) -> bool:
    return all(len(line) <= width for line in text.splitlines())


def _status_lists_over_the_socket_as_the_sdk_does(cluster: Cluster) -> None:
    """status asks a local engine for the containers over its socket, without the Docker SDK
    (nor requests, nor pydantic: a valid topology needs none); the SDK lists the same. Piped,
    its table is plain text: no rich either (shardctl.cli.plain)."""
    placement = cluster.topology.nodes[0].placement
    socket_path = local_socket(placement)
    assert socket_path is not None  # the tests' engine is a unix socket
    label = f"shardctl.cluster={cluster.topology.cluster}"
    raw = list_over_socket(
        socket_path, urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
    )
    assert isinstance(raw, list)
    sdk = cluster.engines.client(placement).api.containers(all=True, filters={"label": label})
    assert sorted((r["Names"][0], r["State"]) for r in raw) == sorted(
        (r["Names"][0], r["State"]) for r in sdk
    )
    assert len(raw) == len(cluster.topology.nodes)
    modules = imported_by("status", "-f", cluster.topology.path.as_posix(), env=NARROW)
    loaded = {m.split(".")[0] for m in modules}
    assert "psycopg" in loaded  # it did read the nodes
    # nothing in flight: no reshard plan read, no ring built, no fence (shardctl.state)
    assert (
        modules & {"shardctl.state.plan", "shardctl.ring.hashing", "shardctl.state.fence"} == set()
    )
    assert loaded & {"docker", "requests", "urllib3", "pydantic", "cryptography", "rich"} == set()


def test_in_flight_work_is_shown_and_every_command_agrees(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(shards=1, replicas=1, ring={"algorithm": "md5", "vnodes": 32})
    path = cluster.topology.path
    name = cluster.topology.cluster

    status = run_shardctl("status", "-f", path, env=NARROW)
    assert status.returncode == 0, status.stderr
    assert lines_fit(status.stdout), status.stdout
    assert "shard-0-replica-1" in status.stdout and "in flight" not in status.stdout
    assert not any(line.endswith(" ") for line in status.stdout.splitlines())
    _status_lists_over_the_socket_as_the_sdk_does(cluster)
    wide = run_shardctl("status", "-o", "wide", "-f", path)
    assert "LSN" in wide.stdout and "slot" in wide.stdout
    as_json = json.loads(run_shardctl("status", "-o", "json", "-f", path).stdout)
    assert [n["node"] for n in as_json["nodes"]] == ["shard-0-primary", "shard-0-replica-1"]
    assert as_json["in_flight"] == []
    verify = run_shardctl("verify-replication", "-f", path, env=NARROW)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert lines_fit(verify.stdout), verify.stdout

    assert run_shardctl("load", "--bulk", "--rows", "3000", "-f", path).returncode == 0
    nothing = run_shardctl("rebalance", "-f", path)  # no tty, no --yes: nothing to do comes first
    assert nothing.returncode == 0 and nothing.stderr.startswith("nothing to rebalance"), nothing
    for flag in ("--abort", "--resume"):
        idle = run_shardctl("rebalance", flag, "-f", path)
        assert idle.returncode == 0 and "no reshard is running" in idle.stderr, idle
    joined = run_shardctl("add-shard", "shard-1", "--replicas", "0", "-f", path)
    assert joined.returncode == 0, joined.stderr

    # A reshard killed after its copy: status, --plan and distribution all show it.
    assert run_killed(path, "copying").returncode == 137
    status = run_shardctl("status", "-f", path, env=NARROW)
    assert status.returncode == 0, status.stderr
    head = status.stdout.splitlines()
    assert head[0].startswith("in flight: reshard 1: verifying, ranges ")
    assert head[1].startswith("  started ") and " by " in head[1]
    assert "shardctl rebalance --resume" in head[2]
    assert lines_fit(status.stdout), status.stdout
    facts = json.loads(run_shardctl("status", "-o", "json", "-f", path).stdout)
    [operation] = facts["in_flight"]
    assert (operation["kind"], operation["id"], operation["phase"]) == ("reshard", 1, "verifying")
    assert operation["ranges_done"] == operation["ranges_total"] > 0
    assert operation["rows_copied"] == operation["rows_total"] > 0
    assert f"rows {operation['rows_copied']:,}/{operation['rows_total']:,}" in head[0]
    assert operation["started_at"] and "@" in operation["started_by"]
    plan = run_shardctl("rebalance", "--plan", "-f", path)
    assert plan.returncode == 0, plan.stderr
    assert "plan of reshard 1 (in progress)" in plan.stdout and "plan 2" not in plan.stdout
    planned = json.loads(run_shardctl("rebalance", "--plan", "-o", "json", "-f", path).stdout)
    assert planned["id"] == 1 and planned["in_progress"]["id"] == 1
    spread = run_shardctl("distribution", "-f", path)
    assert spread.returncode == 1
    assert "reshard 1 is in progress (verifying)" in spread.stderr
    assert run_shardctl("rebalance", "--abort", "-f", path).returncode == 0

    # Ctrl-C in a running rebalance: where it stands, the exact commands, exit 130.
    slow = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "rebalance", "--yes", "-f", str(path), *SLOWLY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    wait_for_copy(Path(path), slow)
    slow.send_signal(signal.SIGINT)
    _, err = slow.communicate(timeout=60)
    assert slow.returncode == 130, err
    assert "interrupted" in err and "shardctl rebalance --resume" in err and "--abort" in err
    assert "in flight: reshard 2: copying" in err and "Traceback" not in err
    assert run_shardctl("rebalance", "--abort", "-f", path).returncode == 0

    # A switchover that died with its fence up: shown, naming `shardctl up`.
    primary = cluster.topology.shard_nodes("shard-0")[0]
    with pg.connect(primary, cluster.credentials(), "app") as conn:
        conn.execute(
            "INSERT INTO shardctl.moving (reshard_id, lo, hi, target, state) "
            "VALUES (%s, '0', NULL, 'shard-0', 'fenced')",
            (locks.ROLE_CHANGE,),
        )
    fenced = run_shardctl("status", "-f", path, env=NARROW)
    assert "in flight: role change on shard-0" in fenced.stdout and "`shardctl up`" in fenced.stdout
    assert run_shardctl("up", "-f", path).returncode == 0  # lifts the abandoned fence
    assert "in flight" not in run_shardctl("status", "-f", path).stdout

    # Stopped: every command says so the same way, exit 3.
    for container in cluster.engines.cluster_containers(cluster.topology):
        cluster.engines.stop(container, timeout=5)
    for args in (
        ["status"],
        ["verify-replication"],
        ["ring"],
        ["distribution"],
        ["rebalance", "--plan"],
        ["add-shard", "shard-2"],
        ["load", "--ops", "5"],
        ["switchover", "shard-0", "--yes"],
    ):
        stopped = run_shardctl(*args, "-f", path)
        assert stopped.returncode == 3, (args, stopped.stderr)
        errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
        assert errors == [NOT_RUNNING.format(name)], (args, stopped.stderr)


def wait_for_copy(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until the reshard in progress has copied some rows (read as status reads it)."""
    deadline = time.monotonic() + timeout
    with Cluster.load(path) as cluster:  # with the shard that joined
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()
            if any(op.phase == "copying" and op.rows_copied for op in cluster.in_flight()):
                return
            time.sleep(0.2)
    raise AssertionError("the reshard copied nothing")


def test_ctrl_c_in_up_stops_and_says_what_exists(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(shards=1, replicas=1, up=False)
    path = cluster.topology.path
    started = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "up", "-f", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 60
    while not cluster.engines.cluster_containers(cluster.topology):
        assert time.monotonic() < deadline, "up created nothing"
        time.sleep(0.1)
    started.send_signal(signal.SIGINT)
    _, err = started.communicate(timeout=120)
    assert started.returncode == 130, err
    err = " ".join(err.split())  # wrapped at the width the child was given (xdist: COLUMNS)
    assert "interrupted" in err and "Run `shardctl up` again" in err and "Traceback" not in err
    made = len(cluster.engines.cluster_containers(cluster.topology))
    assert f"{made} of 2 containers exist" in err
    time.sleep(2)  # nothing more is created after the message
    assert len(cluster.engines.cluster_containers(cluster.topology)) == made
    again = run_shardctl("up", "-f", path)
    assert again.returncode == 0, again.stderr
    assert Path(path).exists()


INTERRUPTED_BEFORE_SECRETS = """
import sys
from docker.models.containers import Container

def put_archive(self, *args, **kwargs):  # the Ctrl-C lands before the secrets are in
    raise KeyboardInterrupt

Container.put_archive = put_archive
from shardctl.cli import main
main(sys.argv[1:])
"""


def test_up_interrupted_before_the_secrets_are_in_leaves_no_container_behind(
    cluster_factory: ClusterFactory,
) -> None:
    """A Ctrl-C between creating a container and copying its secrets in: that container would
    start without them and never answer, and ``up`` again would only start it (seen once as
    ``test_ctrl_c_in_up_stops_and_says_what_exists`` timing out in its second ``up``)."""
    cluster = cluster_factory(shards=1, replicas=0, up=False)
    path = cluster.topology.path
    first = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_BEFORE_SECRETS, "up", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert first.returncode == 130, first.stderr
    assert "0 of 1 containers exist" in first.stderr
    assert cluster.engines.cluster_containers(cluster.topology) == []
    again = run_shardctl("up", "-f", path, timeout=120)
    assert again.returncode == 0, again.stderr
