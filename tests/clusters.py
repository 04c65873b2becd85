"""Throw-away clusters on a real Docker engine, for the integration tests and the benchmarks.

Plain functions with no pytest in sight, so ``benchmarks/`` can use them as well as
``tests/integration/conftest.py`` (which wraps them in fixtures). Each cluster gets its own
name, ports and secrets file, and :func:`running` removes it, volumes included, even on failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from shardctl.config.topology import Node
from shardctl.db import pg
from shardctl.ops.cluster import Cluster

if TYPE_CHECKING:
    from docker.models.containers import Container as SdkContainer

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"
"""The example schema (``users``) every test cluster is made with."""
TEST_IMAGE = os.environ.get("SHARDCTL_TEST_IMAGE", "shardctl-test/postgres:15")


def interruptible() -> None:
    """``preexec_fn`` for a CLI run a test will Ctrl-C: SIGINT back to its default. A background
    job of a non-interactive shell inherits SIGINT ignored (a terminal's or a service's process
    does not), and Python installs its KeyboardInterrupt handler only where SIGINT is not
    ignored: the signal the test sends would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MADE: set[str] = set()
"""Names of the clusters this process made (the session's end checks that none is left)."""

POOLER_OFFSET = 1000
"""The default ``pooler.port_offset``: a pooled node's PgBouncer listens this far above it."""


LOCKS = Path(os.environ.get("SHARDCTL_TEST_LOCKS", "/tmp/shardctl-test-locks"))
"""Lock files that reserve ports and simulated-host slots across concurrent test processes."""
PORT_CELL = 50
"""Ports are reserved in cells of this many, from :data:`FIRST_PORT` up to :data:`LAST_PORT`."""
FIRST_PORT, LAST_PORT = 20000, 31000
_held: list[int] = []
"""File descriptors of the locks this process holds; released only when it exits."""
_held_lock = threading.Lock()


def _reserve(name: str) -> bool:
    """Take the lock file ``name`` for the rest of this process; False when another holds it."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCKS / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def free_base_port(span: int) -> int:
    """A base port with ``span`` ports above it (and above it + :data:`POOLER_OFFSET`) that no
    other test process here can be given: the cells covering both ranges are reserved by lock
    files held until this process exits, and each port is checked free as well.

    Below the kernel's ephemeral range (32768 and up here): a port found free there can be taken
    as the source port of any outgoing connection before the cluster publishes on it."""
    cells = -(-span // PORT_CELL)
    offset = POOLER_OFFSET // PORT_CELL
    count = (LAST_PORT - FIRST_PORT) // PORT_CELL - offset - cells
    start = (os.getpid() * 7) % count  # spread processes out; the locks decide
    with _held_lock:
        for step in range(count):
            first = (start + step) % count
            wanted = [first + i for i in range(cells)] + [first + offset + i for i in range(cells)]
            taken: list[int] = []
            for cell in wanted:
                if not _reserve(f"ports-{cell}"):
                    break
                taken.append(cell)
            base = FIRST_PORT + first * PORT_CELL
            ports = [base + i for i in range(span)] + [
                base + POOLER_OFFSET + i for i in range(span)
            ]
            if len(taken) == len(wanted) and all(_port_free(port) for port in ports):
                return base
            # A cell that is ours but busy stays ours (never handed out again): it is in use.
    raise RuntimeError(f"no free port range of {span} found (locks in {LOCKS})")


_slot: list[int] = []


def _host_slot() -> int:
    """The slot of this process, taken on first use."""
    if not _slot:
        _slot.append(host_slot())
    return _slot[0]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def host_slot() -> int:
    """This process's slot for simulated hosts (names and addresses), reserved until it exits."""
    with _held_lock:
        for slot in range(28):
            if _reserve(f"hosts-{slot}"):
                return slot
    raise RuntimeError(f"every simulated-host slot is taken (locks in {LOCKS})")


def make_topology(directory: Path, shards: int = 2, replicas: int = 1, **extra: object) -> Path:
    """Write a small test topology (users table, test image, unique name and ports)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    MADE.add(name)
    shutil.copy(SCHEMA, directory / "schema.sql")
    data: dict[str, object] = {
        "cluster": name,
        "image": TEST_IMAGE,
        "base_port": free_base_port(shards * 10 + 10),
        "schema": "schema.sql",
        "tables": [{"name": "users", "key": "id"}],
        "credentials": {"secrets_file": "secrets.json"},
        "shards": [{"name": f"shard-{i}", "replicas": replicas} for i in range(shards)],
    }
    data.update(extra)
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def running(path: Path) -> Iterator[Cluster]:
    """The cluster of ``path``, up; brought down with its volumes afterwards, even on failure."""
    cluster = Cluster.load(path)
    try:
        cluster.up(timeout=180)
        yield cluster
    finally:
        try:
            cluster.down(volumes=True)
        finally:
            cluster.close()


def run_shardctl(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (exit codes, stderr and all), as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "shardctl", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**_child_environment(), **(env or {})},
    )


def _child_environment() -> dict[str, str]:
    """This process's environment without ``COLUMNS``/``LINES``: pytest's readline import sets
    them to the terminal's size, and the CLI, piped, would wrap its tables at that width instead
    of the 200 columns a CI log gets."""
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


# ------------------------------------------------------------------ simulated hosts

SECOND_HOST = Path(__file__).resolve().parent.parent / "scripts" / "second-host.sh"


@dataclass(frozen=True)
class Host:
    """A Docker engine in its own network namespace (scripts/second-host.sh): a simulated host."""

    name: str
    endpoint: str
    address: str

    def engine(self) -> dict[str, str]:
        """This host as an entry of a topology's ``engines:`` (ports published on its address)."""
        return {"endpoint": self.endpoint, "advertise": self.address, "bind_address": self.address}

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) its engine; idempotent."""
        _second_host("--name", self.name, "--address", self.address)

    def stop(self) -> None:
        """Lose the host: its engine and containers stop, its address stops answering."""
        _second_host("--name", self.name, "--stop")

    def down(self) -> None:
        """Remove everything it had: containers, engine, data, namespace."""
        _second_host("--name", self.name, "--down")


def _second_host(*args: str) -> str:
    """Run scripts/second-host.sh, one call at a time among the test processes here.

    The script sets up a namespace "lan" shared by every simulated host and removes it with its
    last host: a host removed in one process while another process's host is being started could
    take the lan from under it (tests run in parallel workers, see docs/testing.md)."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCKS / "second-host", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other process's call (at most minutes)
        done = subprocess.run(
            [str(SECOND_HOST), *args], capture_output=True, text=True, check=False, timeout=300
        )
    finally:
        os.close(fd)  # releases the lock
    if done.returncode != 0:
        raise RuntimeError(f"second-host.sh {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@contextmanager
def simulated_hosts(count: int = 2) -> Iterator[list[Host]]:
    """``count`` simulated hosts on 10.213.7.0/24, removed afterwards even on failure.

    Every host is a namespace engine: an engine outside the namespaces cannot reach them (see
    scripts/second-host.sh), and replication must flow both ways. Names and addresses come from
    this process's reserved slot (:func:`host_slot`), so concurrent runs never share a host.
    """
    slot = _host_slot()
    hosts = [
        Host(
            name=f"sc{slot:02d}{chr(ord('a') + i)}",
            endpoint=f"unix:///run/shardctl-hosts/sc{slot:02d}{chr(ord('a') + i)}/docker.sock",
            address=f"10.213.7.{10 + slot * 8 + i}",
        )
        for i in range(count)
    ]
    try:
        for host in hosts:
            host.down()  # a leftover of an interrupted run
            host.start()
        yield hosts
    finally:
        failures: list[RuntimeError] = []
        for host in hosts:
            try:
                host.down()
            except RuntimeError as exc:  # the other hosts still go; then this one fails
                failures.append(exc)
        if failures:
            raise failures[0]


def split_topology(folder: Path, hosts: list[Host], *, one_engine: bool = False) -> Path:
    """A 2 x 1 topology on hosts a and b: shard-0 a -> b, shard-1 b -> a (or all on a)."""
    a, b = hosts
    path = make_topology(folder, 2, 1)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["engines"] = {"a": a.engine(), "b": b.engine()}
    # The hosts publish on their own addresses, beyond loopback: that needs a decision.
    data["allow_plaintext"] = True
    if one_engine:
        data["shards"] = [{"name": s, "engine": "a"} for s in ("shard-0", "shard-1")]
    else:
        data["spread"] = "hosts"
        data["shards"] = [
            {"name": "shard-0", "engine": "a", "replica_engines": ["b"]},
            {"name": "shard-1", "engine": "b", "replica_engines": ["a"]},
        ]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def backup_samples(path: Path) -> dict[tuple[str, str], float]:
    """``metrics --once``: the ``shardctl_backup_*`` samples, (name, shard) -> value (shard ""
    for the cluster's own, such as the repository's room)."""
    from prometheus_client.parser import text_string_to_metric_families

    once = run_shardctl("metrics", "--once", "-f", path)
    assert once.returncode == 0, once.stdout + once.stderr
    return {
        (s.name, s.labels.get("shard", "")): s.value
        for family in text_string_to_metric_families(once.stdout)
        for s in family.samples
        if s.name.startswith("shardctl_backup_")
    }


def sdk_container(cluster: Cluster, node: Node, *, pooler: bool = False) -> SdkContainer:
    """The Docker SDK's object for ``node``'s container (``pooler``: its PgBouncer's), for tests
    that work it by hand (pause, kill, exec); shardctl itself only sees its own records."""
    record = cluster.engines.container(node, pooler=pooler)
    assert record is not None, f"{node.name} has no container"
    return cluster.engines.client(node.placement).containers.get(record.id)


def pgdata_of(cluster: Cluster, node: Node) -> str:
    """The data directory of ``node``'s container (its PGDATA)."""
    record = cluster.engines.container(node)
    assert record is not None, f"{node.name} has no container"
    return record.environment["PGDATA"]


def pause(container: SdkContainer) -> None:
    """``docker pause``, tried again when the kernel's freezer gives up on a busy container
    ("unable to freeze": runc thaws it, so it runs on) -- seen at load average 20."""
    for attempt in range(5):
        try:
            container.pause()
            return
        except Exception as exc:  # docker.errors.APIError; the SDK is imported lazily here
            if "unable to freeze" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2)


@contextmanager
def frozen(cluster: Cluster, shard: str, *, rescue_after: float = 60) -> Iterator[None]:
    """``docker pause`` of ``shard``'s primary for the block: it still accepts TCP, and never
    answers. Unpaused after ``rescue_after`` seconds at the latest, should the code under test
    hang, so that a cluster shared by a module comes back for the other tests."""
    container = sdk_container(cluster, cluster.topology.shard_nodes(shard)[0])
    pause(container)
    rescue = threading.Timer(rescue_after, container.unpause)
    rescue.start()
    try:
        yield
    finally:
        rescue.cancel()
        container.reload()
        if container.status == "paused":
            container.unpause()


@dataclass(frozen=True)
class WatchedLoad:
    """A ``shardctl load`` run, and what its primaries showed while it ran."""

    returncode: int
    stdout: str
    stderr: str
    most: dict[str, int]
    """Per primary, the most client backends of the application role seen at once."""
    max_connections: set[int]
    """The primaries' ``max_connections``."""


def load_watching_backends(cluster: Cluster, *args: str, timeout: float = 120) -> WatchedLoad:
    """Run ``shardctl load -f <cluster's topology> *args`` and, every 0.1 s while it runs,
    count the application role's client backends on each of ``cluster``'s primaries."""
    topology, credentials = cluster.topology, cluster.credentials()
    run = subprocess.Popen(
        [sys.executable, "-m", "shardctl", "load", "-f", str(topology.path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    primaries = topology.primaries()
    most = dict.fromkeys((n.name for n in primaries), 0)
    limits: set[int] = set()
    conns = [pg.connect(n, credentials, topology.spec.database) for n in primaries]
    try:
        while run.poll() is None:
            for node, conn in zip(primaries, conns, strict=True):
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE usename = %s),"
                    " current_setting('max_connections')::int FROM pg_stat_activity"
                    " WHERE backend_type = 'client backend'",
                    (credentials.app_user,),
                ).fetchone()
                assert row is not None
                most[node.name] = max(most[node.name], int(str(row[0])))
                limits.add(int(str(row[1])))
            time.sleep(0.1)
    finally:
        for conn in conns:
            conn.close()
        out, err = run.communicate(timeout=timeout)
    return WatchedLoad(run.returncode, out, err, most, limits)


_MODULES_PROBE = """
import json, sys
from shardctl.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
sys.__stderr__.write(json.dumps(sorted(sys.modules)))
"""


def imported_by(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Every module a fresh interpreter has imported after ``shardctl *args`` (what a command
    costs at start-up: the start-up tests read it)."""
    ran = subprocess.run(
        [sys.executable, "-c", _MODULES_PROBE, *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return set(json.loads(ran.stderr.strip().splitlines()[-1]))
