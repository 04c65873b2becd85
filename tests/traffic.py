"""Live, ledgered traffic through the Router, and the check that the cluster kept every
acknowledged write: shared by the resharding and failover tests."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from shardctl.db import pg
from shardctl.ops.cluster import Cluster
from shardctl.router.router import Router
from shardctl.state import catalog
from tests.clusters import run_shardctl

DELETED = None


@dataclass
class Writer:
    """One thread's keys, and the value each holds after its last acknowledged operation."""

    router: Router
    seed: int
    keys: list[uuid.UUID]
    ledger: dict[uuid.UUID, str | None] = field(default_factory=dict)
    acknowledged: int = 0
    failed: list[str] = field(default_factory=list)
    max_latency: float = 0.0
    acked_at: dict[uuid.UUID, float] = field(default_factory=dict)
    """When each key's last operation was acknowledged (time.monotonic())."""
    sent_at: dict[uuid.UUID, float] = field(default_factory=dict)
    """When each key's last acknowledged operation was started (time.monotonic())."""
    first_sent_at: dict[uuid.UUID, float] = field(default_factory=dict)
    """When each key's first acknowledged operation (its insert) was started."""
    first_acked_at: dict[uuid.UUID, float] = field(default_factory=dict)
    """When each key's first operation was acknowledged: an asynchronous failover that lost it
    leaves every later UPDATE of the key a no-op that is acknowledged all the same."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.live = list(self.keys)
        self.n = 0

    def run(self, stop: threading.Event) -> None:
        rng, live = self.rng, self.live
        while not stop.is_set():
            self.n += 1
            n = self.n
            op = rng.random()
            started = time.monotonic()
            value: str | None
            try:
                if op < 0.4 or not live:
                    key = uuid.UUID(int=rng.getrandbits(128), version=4)
                    value = f"w{self.seed}-{n}"
                    # Idempotent, as the Router asks of retried writes: an INSERT whose commit
                    # was cut off by a primary's death may have committed before the retry.
                    self.router.execute(
                        key,
                        "INSERT INTO users (id, first_name) VALUES (%s, %s) "
                        "ON CONFLICT (id) DO NOTHING",
                        (key, value),
                    )
                    live.append(key)
                elif op < 0.8:
                    key = rng.choice(live)
                    value = f"w{self.seed}-{n}"
                    self.router.execute(
                        key,
                        "UPDATE users SET first_name = %s, updated_at = now() WHERE id = %s",
                        (value, key),
                    )
                else:
                    key = live.pop(rng.randrange(len(live)))
                    value = DELETED
                    self.router.execute(key, "DELETE FROM users WHERE id = %s", (key,))
            except Exception as exc:  # recorded: the test asserts there were none
                self.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            self.max_latency = max(self.max_latency, time.monotonic() - started)
            self.ledger[key] = value
            self.acked_at[key] = time.monotonic()
            self.first_acked_at.setdefault(key, self.acked_at[key])
            self.sent_at[key] = started
            self.first_sent_at.setdefault(key, started)
            self.acknowledged += 1


def preload(cluster: Cluster, count: int) -> list[uuid.UUID]:
    """Insert ``count`` users directly on their ring owners with COPY."""
    ring = catalog.read(cluster.topology, cluster.credentials()).ring()
    keys = [uuid.uuid4() for _ in range(count)]
    for primary in cluster.topology.primaries():
        with (
            pg.connect(primary, cluster.credentials(), "app") as conn,
            conn.cursor().copy("COPY users (id, first_name) FROM STDIN") as copy,
        ):
            for key in keys:
                if ring.node_for(key) == primary.shard:
                    copy.write_row((key, "preloaded"))
    return keys


def rows_by_shard(cluster: Cluster) -> dict[str, dict[str, str | None]]:
    """Every row's first_name, per shard's acting primary (fresh topology: includes added
    shards, and the roles as the catalog has them now)."""
    fresh = Cluster.load(cluster.topology.path)
    fresh.follow_roles()
    topology = fresh.topology
    found: dict[str, dict[str, str | None]] = {}
    for primary in topology.primaries():
        with pg.connect(primary, cluster.credentials(), "app") as conn:
            found[primary.shard] = {
                # first_name is nullable text: a str or None
                str(k): cast(str | None, v)
                for k, v in conn.execute("SELECT id::text, first_name FROM users")
            }
    return found


def check_ledger(
    cluster: Cluster,
    writers: list[Writer],
    preloaded: list[uuid.UUID],
    *,
    may_lose: tuple[str, float] | list[tuple[str, float]] | None = None,
) -> tuple[int, int]:
    """Guarantees 1 to 3: every key on exactly its owner, with its last acknowledged value.

    ``may_lose`` = (shard, moment), or a list of them: an asynchronous failover of that shard at
    that moment may have lost writes acknowledged just before it -- and only those, which are
    told by having been sent before the moment (the writer records an acknowledgement late when
    its thread waits for a core).
    """
    ring = catalog.read_any(cluster.topology, cluster.credentials()).record().ring()
    shards = rows_by_shard(cluster)
    where: dict[str, list[str]] = {}
    for shard, rows in shards.items():
        for key in rows:
            where.setdefault(key, []).append(shard)
    duplicated = [k for k, s in where.items() if len(s) > 1]
    misplaced = [k for k, s in where.items() if ring.node_for(uuid.UUID(k)) not in s]
    assert duplicated == [], f"keys on more than one shard: {duplicated[:5]}"
    assert misplaced == [], f"keys off their ring owner: {misplaced[:5]}"
    expected: dict[str, str | None] = {str(k): "preloaded" for k in preloaded}
    for writer in writers:
        expected.update({str(k): v for k, v in writer.ledger.items()})
    # A lost key: its first acknowledged write (the insert) is what went missing (later
    # updates of a missing row are no-ops acknowledged all the same). A stale value or a key
    # back from the dead: its last acknowledged write (the update or delete) is. A write may
    # have been acknowledged by the old primary if it was sent before the moment: its
    # acknowledgement is only known to lie between its sending and the time the writer thread
    # got to record it, which a busy machine can put after the moment (seen at load 20).
    first = {str(k): at for writer in writers for k, at in writer.first_sent_at.items()}
    # A preloaded key's insert is its preload, before every moment: lost with it when it had not
    # reached the replica, its later updates then no-ops acknowledged after the moment.
    first.update({str(k): 0.0 for k in preloaded})
    last = {str(k): at for writer in writers for k, at in writer.sent_at.items()}

    windows = [may_lose] if isinstance(may_lose, tuple) else list(may_lose or [])

    def excused(key: str, sent: dict[str, float]) -> bool:
        return any(
            ring.node_for(uuid.UUID(key)) == shard and sent.get(key, 0.0) <= moment
            for shard, moment in windows
        )

    lost = [k for k, v in expected.items() if v is not DELETED and k not in where]
    ghosts = [k for k, v in expected.items() if v is DELETED and k in where]
    stale = [
        k
        for k, v in expected.items()
        if v is not DELETED and k in where and shards[where[k][0]][k] != v
    ]
    lost = [k for k in lost if not excused(k, first)]
    ghosts, stale = ([k for k in keys if not excused(k, last)] for keys in (ghosts, stale))

    def shown(keys: list[str], sent: dict[str, float]) -> list[str]:
        """Each key with its owner, the value found and expected, and when its write was sent
        against each window's moment."""
        lines = []
        for key in keys[:5]:
            owner = ring.node_for(uuid.UUID(key))
            found = shards[where[key][0]].get(key, "<missing>") if key in where else "<missing>"
            after = ", ".join(
                f"sent {sent.get(key, 0.0) - moment:+.3f}s after {shard}'s moment"
                for shard, moment in windows
            )
            lines.append(f"{key} on {owner}: {found!r} != {expected[key]!r} ({after})")
        return lines

    assert lost == [], f"acknowledged writes lost: {shown(lost, first)}"
    assert ghosts == [], f"deleted keys came back: {shown(ghosts, last)}"
    assert stale == [], f"stale values: {shown(stale, last)}"
    return len(where), sum(1 for v in expected.values() if v is not DELETED)


WRITER_DEADLINE = 60.0
"""The test writers' deadline per operation: generous, so that a loaded 2-core CI machine
turns a slow failover into a slow write, not a failed one (the Router's default is 10 s)."""


@contextmanager
def traffic(
    cluster: Cluster,
    keys: list[uuid.UUID],
    threads: int = 2,
    *,
    deadline: float = WRITER_DEADLINE,
    seed: int = 0,
) -> Iterator[list[Writer]]:
    """Ledgered writers inserting, updating and deleting through one Router until the block
    ends; each thread starts from its share of ``keys``. Several sessions on one cluster need
    a ``seed`` each (the writers' random keys and choices repeat for the same one) and
    ``keys`` of their own (an earlier session's deletes are not in this one's ledger).

    ``deadline`` bounds each operation, retries included. The tests that assert "no write
    failed" across a planned outage (a switchover, a failover, a host lost) rely on it being
    longer than that outage on a slow machine; the outage itself is measured and bounded by
    each test, not by this number."""
    router = Router(cluster, max_size=4, epoch_check_interval=0.5, deadline=deadline)
    writers = [Writer(router, seed + i, keys[i::threads]) for i in range(threads)]
    stop = threading.Event()
    running = [threading.Thread(target=w.run, args=(stop,)) for w in writers]
    for thread in running:
        thread.start()
    try:
        yield writers
    finally:
        stop.set()
        for thread in running:
            thread.join(timeout=60)
        router.close()


def assert_placed_and_replicated(path: Path) -> None:
    """After a reshard: `distribution` finds no misplaced key and `verify-replication --deep`
    finds every replica equal to its primary."""
    distribution = run_shardctl("distribution", "-f", path, "-o", "json")
    assert distribution.returncode == 0, distribution.stdout + distribution.stderr
    assert json.loads(distribution.stdout)["misplaced"] == 0
    deep = run_shardctl("verify-replication", "--deep", "-f", path)
    assert deep.returncode == 0, deep.stdout + deep.stderr
