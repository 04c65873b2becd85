"""Role changes under load: the write pause a switchover causes at the Router, and the time from
``failover`` to the first successful write, against the same writes in steady state.

    python benchmarks/failover.py [--writers W] [--rounds R]
    python benchmarks/failover.py --monitor [--writers W] [--rounds R]

Brings up its own 2-shard x 1-replica cluster (test image) and removes it afterwards. Writer
threads insert through one ``Router`` all along, recording when each insert started and ended.
Each round: a switchover of shard-0 through the library (``Cluster.switchover``) and back, then
a ``docker kill`` of shard-1's primary, ``Cluster.failover`` and ``up`` to re-join it.

Measured, per round:

- switchover write pause at the Router: the longest a shard-0 insert took while the switchover
  ran, against the longest one in the same length of steady traffic before it (the baseline);
- the fence-to-publish pause the switchover reports (the server side of the same pause);
- failover to first write: from the moment ``failover`` starts (the operator's decision) to the
  first shard-1 insert acknowledged afterwards; and from the kill to that write.

With ``--monitor``: automatic failover. The cluster says ``failover: {mode: automatic}`` with
the defaults (detect_seconds 5), a ``Monitor`` runs in this process with its default interval,
and each round ``docker kill``s shard-1's acting primary and waits for the monitor to re-join it.
Measured, per round: from the kill (requested) to the first shard-1 insert the new primary
acknowledged, split into detection (to the monitor's first failed probe), decision (to its
decision to promote: ``detect_seconds``), promotion (to the failover published; itself split
into the lock and checks, fencing the old primary on disk with ``pg_promote``, and writing the
epoch) and Router follow (to the first acknowledged write). ``--profile FILE`` writes a
wall-clock cProfile of the monitor thread there.
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import pstats
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from _cluster import temp_cluster

from shardctl import Router
from shardctl.ops.cluster import Cluster
from shardctl.ops.monitor.events import Event
from shardctl.ops.monitor.loop import Monitor
from shardctl.ops.rolechange import Step
from shardctl.ring.hashing import Ring
from shardctl.state import catalog

INSERT = "INSERT INTO users (id, first_name) VALUES (%s, 'bench') ON CONFLICT (id) DO NOTHING"


@dataclass
class Writes:
    """(shard, started, ended) of every acknowledged insert, from every writer thread."""

    done: list[tuple[str, float, float]] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def longest(self, shard: str, start: float, end: float) -> float:
        """The longest insert on ``shard`` that was in flight at some moment in [start, end]."""
        with self.lock:
            spans = [e - s for sh, s, e in self.done if sh == shard and e >= start and s <= end]
        return max(spans, default=0.0)

    def first_after(self, shard: str, moment: float) -> float | None:
        with self.lock:
            ends = [e for sh, s, e in self.done if sh == shard and e > moment and s >= moment - 60]
        return min(ends, default=None)


def writer(router: Router, owner: Ring, writes: Writes, stop: threading.Event) -> None:
    while not stop.is_set():
        key = uuid.uuid4()
        started = time.monotonic()
        try:
            router.execute(key, INSERT, (key,))
        except Exception:
            with writes.lock:
                writes.failed += 1
            continue
        with writes.lock:
            writes.done.append((owner.node_for(key), started, time.monotonic()))


def round_trip(cluster: Cluster, writes: Writes) -> dict[str, float]:
    """One switchover there and back, one failover and re-join; the numbers of this round."""
    out: dict[str, float] = {}
    time.sleep(1.0)
    steady_from = time.monotonic()
    time.sleep(1.5)
    steady_to = time.monotonic()
    out["steady_max_ms"] = writes.longest("shard-0", steady_from, steady_to) * 1000
    started = time.monotonic()
    change = cluster.switchover("shard-0")
    ended = time.monotonic()
    time.sleep(0.5)  # let the writes in flight at the end finish
    out["switchover_router_pause_ms"] = writes.longest("shard-0", started, ended) * 1000
    out["switchover_server_pause_ms"] = change.write_pause * 1000
    out["switchover_s"] = change.seconds
    back = cluster.switchover("shard-0", change.old_primary)
    out["switchback_server_pause_ms"] = back.write_pause * 1000

    cluster.follow_roles()
    primary = cluster.topology.shard_nodes("shard-1")[0]
    # By hand, through the SDK: shardctl itself never kills a node.
    cluster.engines.client(primary.placement).containers.get(primary.container).kill()
    killed = time.monotonic()
    time.sleep(0.5)
    decided = time.monotonic()
    cluster.failover("shard-1")
    deadline = time.monotonic() + 30
    first: float | None = None
    while first is None and time.monotonic() < deadline:
        time.sleep(0.02)
        first = writes.first_after("shard-1", decided)
    assert first is not None, "no write reached shard-1 within 30 s of the failover"
    out["failover_to_first_write_s"] = first - decided
    out["kill_to_first_write_s"] = first - killed
    cluster.up(timeout=180)  # re-clone the old primary as a replica
    cluster.follow_roles()
    return out


@dataclass
class Seen:
    """When (time.monotonic()) the monitor emitted each kind of event, per shard."""

    at: list[tuple[str, str | None, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, event: Event) -> None:
        with self.lock:
            self.at.append((event.kind, event.shard, time.monotonic()))
        print(f"#   {event.line()}", file=sys.stderr, flush=True)

    def step(self, step: Step) -> None:
        """The monitor's ``after_step`` hook: when each step of its failover ended."""
        with self.lock:
            self.at.append((step, None, time.monotonic()))

    def first(self, kind: str, shard: str | None, after: float) -> float | None:
        with self.lock:
            return min(
                (t for k, s, t in self.at if k == kind and s == shard and t > after), default=None
            )


def _wait(what: str, probe: Callable[[], float | None], timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.02)
    faulthandler.dump_traceback(all_threads=True)  # where the monitor is, if it is stuck
    raise AssertionError(f"no {what} within {timeout:g} s")


def monitor_round(cluster: Cluster, writes: Writes, seen: Seen) -> dict[str, float]:
    """One automatic failover of shard-1 (its acting primary killed) and the re-join after."""
    time.sleep(1.0)
    # The acting primary as the catalog names it now (it changes every round), and the monitor
    # watching it as healthy: a kill of anything else would never be noticed.
    cluster.follow_roles()
    primary = cluster.topology.shard_nodes("shard-1")[0]
    container = cluster.engines.client(primary.placement).containers.get(primary.container)
    print(f"#   killing {primary.name}", file=sys.stderr, flush=True)
    # Before the call: under load `docker kill` may return after the monitor already saw it.
    killed = time.monotonic()
    container.kill()
    container.reload()
    assert container.status != "running", f"{primary.name} still runs after the kill"
    suspect = _wait("failed probe", lambda: seen.first("suspect", "shard-1", killed), 60)
    decided = _wait("decision", lambda: seen.first("promote", "shard-1", killed))
    published = _wait("publish", lambda: seen.first(Step.PUBLISHED, None, killed))
    promoted = _wait("promotion", lambda: seen.first("promoted", "shard-1", killed))
    fenced = seen.first("step", "shard-1", decided) or decided
    promoting = seen.first(Step.PROMOTED, None, decided) or published
    # Acknowledged by the new primary: after its promotion (an insert in flight at the kill may
    # still be acknowledged by the old one while `docker kill` runs).
    first = _wait("write", lambda: writes.first_after("shard-1", promoting))
    _wait("re-join", lambda: seen.first("rejoined", "shard-1", killed), timeout=180)
    return {
        "kill_to_first_write_s": first - killed,
        "detection_s": suspect - killed,
        "decision_s": decided - suspect,
        "promotion_s": published - decided,
        "  lock_and_checks_s": fenced - decided,
        "  fence_and_pg_promote_s": promoting - fenced,
        "  publish_s": published - promoting,
        "router_follow_s": max(0.0, first - published),
        "published_to_reported_s": promoted - published,
    }


def profile_to(path: str | None, target: Callable[[], None]) -> Callable[[], None]:
    """``target`` run under cProfile (wall clock) when ``path`` is given; stats written there."""
    if path is None:
        return target

    def run() -> None:
        profiler = cProfile.Profile(time.perf_counter)
        try:
            profiler.runcall(target)
        finally:
            with open(path, "w", encoding="utf-8") as out:
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("cumulative").print_stats(r"shardctl|psycopg|docker", 60)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--monitor", action="store_true", help="automatic failover rounds")
    parser.add_argument(
        "--profile", metavar="FILE", help="with --monitor: cProfile (wall clock) of the monitor"
    )
    args = parser.parse_args()
    if args.monitor:
        automatic(args.writers, args.rounds, args.profile)
        return
    with temp_cluster(shards=2, replicas=1) as cluster:
        ring = catalog.read_any(cluster.topology, cluster.credentials()).record().ring()
        writes = Writes()
        stop = threading.Event()
        with Router(cluster, max_size=args.writers, epoch_check_interval=0.5) as router:
            threads = [
                threading.Thread(target=writer, args=(router, ring, writes, stop))
                for _ in range(args.writers)
            ]
            for thread in threads:
                thread.start()
            try:
                results = [round_trip(cluster, writes) for _ in range(args.rounds)]
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
        print(
            f"# {args.writers} writer threads, {len(writes.done):,} inserts, {writes.failed} failed"
        )
        table(results)


def table(results: list[dict[str, float]]) -> None:
    """One row per measure: each round, the median and the maximum."""
    print(
        f"{'measure':32} "
        + " ".join(f"{'round ' + str(i + 1):>10}" for i in range(len(results)))
        + f" {'median':>10} {'max':>10}"
    )
    for name in results[0]:
        values = [r[name] for r in results]
        seconds = name.endswith("_s")
        cells = " ".join(f"{v:10.3f}" if seconds else f"{v:10.0f}" for v in values)
        median, most = statistics.median(values), max(values)
        tail = f"{median:10.3f} {most:10.3f}" if seconds else f"{median:10.0f} {most:10.0f}"
        print(f"{name:32} {cells} {tail}")


def automatic(writers: int, rounds: int, profile: str | None = None) -> None:
    """``--monitor``: rounds of automatic failover with the monitor's defaults."""
    with temp_cluster(shards=2, replicas=1, failover={"mode": "automatic"}) as cluster:
        ring = catalog.read_any(cluster.topology, cluster.credentials()).record().ring()
        detect = cluster.topology.failover("shard-1").detect_seconds
        writes, seen, stop = Writes(), Seen(), threading.Event()
        watcher = Monitor(Cluster.load(cluster.topology.path), emit=seen.emit, after_step=seen.step)
        watching = threading.Thread(target=profile_to(profile, lambda: watcher.run(stop)))
        watching.start()
        with Router(cluster, max_size=writers, epoch_check_interval=0.5) as router:
            threads = [
                threading.Thread(target=writer, args=(router, ring, writes, stop))
                for _ in range(writers)
            ]
            for thread in threads:
                thread.start()
            try:
                results = [monitor_round(cluster, writes, seen) for _ in range(rounds)]
            finally:
                stop.set()
                for thread in [*threads, watching]:
                    thread.join()
        print(f"# {writers} writer threads, {len(writes.done):,} inserts, {writes.failed} failed")
        print(f"# monitor defaults: detect_seconds {detect:g}, interval 1 s")
        table(results)
        kill = statistics.median(r["kill_to_first_write_s"] for r in results)
        print(f"# median kill to first write / detect_seconds: {kill / detect:.2f}")


if __name__ == "__main__":
    main()
