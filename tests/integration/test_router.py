"""The Router and the catalog against real 2 shards x 1 replica clusters.

Most tests share one cluster on which the ring stays at epoch 1 (one restarts a primary).
The tests that publish new epochs share a second cluster of their own and assert epochs
relative to the one they find, so no result depends on the order the tests run in.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from shardctl import Router
from shardctl.db import pg
from shardctl.errors import DatabaseUnavailable, KeyNotOwned
from shardctl.ops.cluster import Cluster
from shardctl.ring import sql as ringsql
from shardctl.ring.hashing import Ring, position_hex
from shardctl.router.pools import DOWN_FOR
from shardctl.state import catalog
from shardctl.util.waiting import NotYet, wait_for
from tests.clusters import frozen, sdk_container
from tests.integration.conftest import make_topology, running


@pytest.fixture(scope="module")
def router(shared_cluster: Cluster) -> Iterator[Router]:
    with Router(shared_cluster) as r:
        yield r


def connect(cluster: Cluster, node: str) -> psycopg.Connection[tuple[object, ...]]:
    return pg.connect(
        cluster.topology.node(node), cluster.credentials(), cluster.topology.spec.database
    )


def test_up_writes_the_catalog_on_every_primary(shared_cluster: Cluster) -> None:
    view = catalog.read(shared_cluster.topology, shared_cluster.credentials())
    assert view.agrees
    assert set(view.by_primary) == {"shard-0-primary", "shard-1-primary"}
    record = view.record()
    assert record.epoch == 1
    assert record.same_ring(catalog.initial_record(shared_cluster.topology))
    assert all(r == record or (r and r.same_ring(record)) for r in view.by_primary.values())
    # A second `up` changes nothing: no new epoch, nothing written.
    again = catalog.ensure(shared_cluster.topology, shared_cluster.credentials())
    assert (again.epoch, again.written, again.warnings) == (1, [], [])


def test_sql_and_python_agree_on_positions_and_owners(shared_cluster: Cluster) -> None:
    uuids = [uuid.uuid4() for _ in range(300)]
    ints = [0, 1, -1, 42, 2**31 - 1, -(2**63), 2**63 - 1, *range(1000, 1100)]
    texts = ["", "a", "user:1", "ünïcødé ☃", "with space", "tab\tand\nnewline", "'quote"]
    ring = Ring(["shard-0", "shard-1", "shard-2"], vnodes=50, algorithm="md5")
    owner, params = ringsql.owner(sql.SQL("k"), ring)
    with connect(shared_cluster, "shard-0-primary") as conn:
        for values, cast in ((uuids, "uuid"), (ints, "bigint"), (texts, "text")):
            query = sql.SQL(
                "SELECT k::text, md5(k::text), shardctl.ring_position(k::text) "
                "FROM unnest(%s::{}[]) AS k"
            ).format(sql.SQL(cast))
            rows = conn.execute(query, (values,)).fetchall()
            assert len(rows) == len(values)
            for value, (text, md5, function) in zip(values, rows, strict=True):
                assert text == str(value)
                assert md5 == function == position_hex(value), value
        owners = conn.execute(
            sql.SQL("SELECT k::text, {} FROM unnest(%(keys)s::uuid[]) AS k").format(owner),
            {**params, "keys": uuids},
        ).fetchall()
    assert {k: o for k, o in owners} == {str(u): ring.node_for(u) for u in uuids}


def test_writes_land_on_their_ring_owner(router: Router) -> None:
    keys = [uuid.uuid4() for _ in range(200)]
    for key in keys:
        assert router.execute(key, "INSERT INTO users (id, email) VALUES (%s, 'r@x')", (key,)) == 1
    wanted = set(map(str, keys))
    by_shard = router.scatter_by_shard("SELECT id::text FROM users WHERE email = 'r@x'")
    placed = {k: shard for shard, rows in by_shard.items() for (k,) in rows if k in wanted}
    assert placed == {str(k): router.owner(k) for k in keys}
    assert set(placed.values()) == {"shard-0", "shard-1"}


def test_scatter_concatenates_every_shard(router: Router) -> None:
    counts = router.scatter_by_shard("SELECT count(*) FROM users")
    assert list(counts) == ["shard-0", "shard-1"]
    flat = router.scatter("SELECT count(*) FROM users")
    assert [row[0] for row in flat] == [rows[0][0] for rows in counts.values()]


def test_fetch_from_a_replica_and_from_the_primary(router: Router) -> None:
    key = uuid.uuid4()
    router.execute(key, "INSERT INTO users (id, first_name) VALUES (%s, 'ada')", (key,))
    query = "SELECT first_name FROM users WHERE id = %s"
    assert router.fetch(key, query, (key,), prefer="primary") == [("ada",)]
    assert router.fetch(key, "SELECT pg_is_in_recovery()", prefer="replica") == [(True,)]
    assert router.fetch(key, "SELECT pg_is_in_recovery()", prefer="primary") == [(False,)]

    def replicated() -> None:
        if router.fetch(key, query, (key,)) != [("ada",)]:
            raise NotYet("not on the replica yet")

    wait_for(replicated, timeout=10, what="the row on the replica", on_timeout=AssertionError)
    assert router.run(key, lambda c: c.execute(query, (key,)).fetchall()) == [("ada",)]


def test_non_transient_errors_are_raised_as_they_are(router: Router) -> None:
    key = uuid.uuid4()
    started = time.monotonic()
    with pytest.raises(psycopg.errors.SyntaxError):
        router.execute(key, "INSERT INTO users VALUES (")
    router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,))
    with pytest.raises(psycopg.errors.UniqueViolation):
        router.execute(key, "INSERT INTO users (id) VALUES (%s)", (key,))
    assert time.monotonic() - started < 5  # not retried


def test_writes_survive_a_primary_restart(shared_cluster: Cluster, router: Router) -> None:
    acked: list[uuid.UUID] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            key = uuid.uuid4()
            try:
                router.execute(
                    key,
                    "INSERT INTO users (id, email) VALUES (%s, 'restart@x') "
                    "ON CONFLICT (id) DO NOTHING",
                    (key,),
                )
                acked.append(key)
            except Exception as exc:  # counted: the test expects none
                errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        container = sdk_container(shared_cluster, shared_cluster.topology.node("shard-0-primary"))
        assert container is not None
        before = len(acked)
        container.restart(timeout=5)
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert len(acked) > before
    stored = {
        k
        for (k,) in router.scatter("SELECT id FROM users WHERE email = 'restart@x'")
        if isinstance(k, uuid.UUID)
    }
    assert set(acked) <= stored


@pytest.fixture(scope="module")
def epoch_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster of its own for the tests that publish new ring epochs."""
    with running(make_topology(tmp_path_factory.mktemp("epochs"))) as cluster:
        yield cluster


@pytest.fixture
def fence(epoch_cluster: Cluster) -> Iterator[list[str]]:
    """Make primaries refuse every insert into users with SC001, as the reshard fence does."""
    fenced: list[str] = []
    yield fenced
    for node in fenced:
        with connect(epoch_cluster, node) as conn:
            conn.execute("DROP TRIGGER IF EXISTS test_fence ON users")


def install_fence(cluster: Cluster, node: str, fenced: list[str]) -> None:
    with connect(cluster, node) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.test_fence() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION USING ERRCODE = 'SC001', MESSAGE = 'not owned here'; END$$"
        )
        conn.execute(
            "CREATE OR REPLACE TRIGGER test_fence BEFORE INSERT ON users "
            "FOR EACH ROW EXECUTE FUNCTION public.test_fence()"
        )
    fenced.append(node)


def test_a_fenced_write_refreshes_the_ring_and_follows_the_key(
    epoch_cluster: Cluster, fence: list[str]
) -> None:
    topology, credentials = epoch_cluster.topology, epoch_cluster.credentials()
    with Router(epoch_cluster, epoch_check_interval=3600) as stale:
        start = stale.epoch  # this cluster's other test publishes epochs too, in either order
        old = stale.ring
        # Two nodes in the other order: every key changes owner, whatever order ``old`` has.
        new = Ring(list(reversed(old.nodes)), algorithm=old.algorithm)
        key = next(k for k in iter(uuid.uuid4, None) if old.node_for(k) == "shard-0")
        assert new.node_for(key) == "shard-1"

        install_fence(epoch_cluster, "shard-0-primary", fence)
        catalog.publish(
            topology, credentials, catalog.RingRecord.from_ring(new, start + 1, created_by="test")
        )
        # The stale router does not know the new epoch; shard-0 refuses, the router re-reads the
        # catalog and retries on shard-1, and the caller sees no error.
        stale.execute(key, "INSERT INTO users (id, email) VALUES (%s, 'fenced@x')", (key,))
        assert stale.epoch == start + 1
        where = stale.scatter_by_shard("SELECT id FROM users WHERE email = 'fenced@x'")
        assert where == {"shard-1": [(key,)], "shard-0": []}

    # A router that keeps meeting the fence gives up at its deadline, with KeyNotOwned.
    install_fence(epoch_cluster, "shard-1-primary", fence)
    with Router(epoch_cluster, deadline=0.5) as router:
        other = uuid.uuid4()
        with pytest.raises(KeyNotOwned) as refused:
            router.execute(other, "INSERT INTO users (id) VALUES (%s)", (other,))
        assert refused.value.key == other


def test_a_router_notices_a_new_epoch_by_itself(epoch_cluster: Cluster) -> None:
    topology, credentials = epoch_cluster.topology, epoch_cluster.credentials()
    with Router(epoch_cluster, epoch_check_interval=0.2) as router:
        start = router.epoch
        ring = Ring(["shard-0", "shard-1"], algorithm=topology.spec.ring.algorithm.value)
        catalog.publish(
            topology, credentials, catalog.RingRecord.from_ring(ring, start + 1, created_by="t")
        )

        def newer() -> None:
            # Any call past the interval starts a check of the epoch (in the background).
            if router.epoch != start + 1:
                raise NotYet(f"still at epoch {router.epoch}")

        wait_for(newer, timeout=5, what="the new epoch", on_timeout=AssertionError)


def test_a_frozen_primary_fails_its_operations_at_the_deadline_and_only_those(
    shared_cluster: Cluster,
) -> None:
    """`docker pause`: TCP still answers through Docker's proxy, the server never does. Every
    operation on that shard ends at the deadline, a statement already in flight included;
    the other shard's operations go on at their usual speed."""
    with Router(shared_cluster, deadline=2.0) as router:
        ring = router.ring
        mine = next(k for k in iter(uuid.uuid4, None) if ring.node_for(k) == "shard-0")
        other = next(k for k in iter(uuid.uuid4, None) if ring.node_for(k) == "shard-1")
        router.execute(mine, "INSERT INTO users (id) VALUES (%s)", (mine,))  # pools are warm
        in_flight: list[float] = []

        def slow_read() -> None:
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                router.fetch(
                    mine,
                    "SELECT pg_sleep(1.5), id FROM users WHERE id = %s",
                    (mine,),
                    prefer="primary",
                )
            in_flight.append(time.monotonic() - started)

        reader = threading.Thread(target=slow_read)
        reader.start()
        primary = shared_cluster.topology.shard_nodes("shard-0")[0]

        def sleeping() -> None:
            with pg.connect(primary, shared_cluster.credentials(), "postgres") as conn:
                found = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(1.5)%%'"
                ).fetchone()
            if found is None or found[0] == 0:
                raise NotYet("no pg_sleep in pg_stat_activity yet")

        # Freeze once the slow read is running on the server: a fact, not a guessed sleep.
        wait_for(
            sleeping, timeout=10, what="the slow read", on_timeout=AssertionError, interval=0.05
        )
        with frozen(shared_cluster, "shard-0", rescue_after=30):
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable) as failed:
                router.execute(mine, "UPDATE users SET email = 'x' WHERE id = %s", (mine,))
            elapsed = time.monotonic() - started
            assert "2s deadline" in str(failed.value)
            # The deadline, not connect_timeout (5 s) or more; margin for a loaded machine.
            assert 1.5 <= elapsed <= 4.5, elapsed
            quick = time.monotonic()
            router.execute(other, "INSERT INTO users (id) VALUES (%s)", (other,))
            assert time.monotonic() - quick < 3.0  # the other shard is not held to the deadline
            reader.join(timeout=10)
            assert in_flight and in_flight[0] <= 4.5, in_flight  # cut short, not for ever
            assert router._pools.watchdog.interrupted >= 1
        router.execute(mine, "UPDATE users SET email = 'back' WHERE id = %s", (mine,))


def test_a_replica_that_failed_is_skipped_for_reads_for_two_seconds(
    shared_cluster: Cluster,
) -> None:
    """docs/router.md: a replica that fails is skipped for reads for DOWN_FOR (2 s), its shard's
    primary answering instead; then it serves reads again. The failure here is the server
    closing the Router's pooled connections, so the replica itself stays healthy throughout:
    only the skip can explain reads answered by the primary."""
    replica = shared_cluster.topology.shard_nodes("shard-0")[1]
    with Router(shared_cluster, max_size=2, deadline=10) as router:
        key = next(k for k in iter(uuid.uuid4, None) if router.ring.node_for(k) == "shard-0")

        def answered_by_replica() -> bool:
            rows = router.fetch(key, "SELECT pg_is_in_recovery()")
            return bool(rows[0][0])

        assert answered_by_replica()  # warm: the replica's pool holds a connection now
        with pg.connect(replica, shared_cluster.credentials(), "postgres") as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = %s AND pid <> pg_backend_pid()",
                (shared_cluster.credentials().app_user,),
            )
        failed_at = time.monotonic()
        first = answered_by_replica()  # the dead connection fails; the primary answers
        second = answered_by_replica()  # the replica is fine again, but still skipped
        within = time.monotonic() - failed_at
        assert within < DOWN_FOR, within  # both reads fell inside the skip window
        assert (first, second) == (False, False)
        time.sleep(DOWN_FOR)

        def back() -> None:
            if not answered_by_replica():
                raise NotYet("reads still answered by the primary")

        # The window is over: the replica serves reads again (as soon as its pool has
        # reconnected, which a loaded machine may take a moment over).
        wait_for(back, timeout=30, what="reads from the replica again", on_timeout=AssertionError)
