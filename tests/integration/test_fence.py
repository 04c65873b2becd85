"""The fence's guard triggers armed for exactly the listed ranges (issue 14), on a real primary.

One 1 shard x 0 replica cluster for the whole module: ranges are listed by hand with the
fence's own calls (no real reshard runs here), and writes are made by the application role,
through a Router and not.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from shardctl.config.credentials import Login
from shardctl.config.schema import TableSpec
from shardctl.db import pg
from shardctl.errors import KeyNotOwned
from shardctl.ops.cluster import Cluster
from shardctl.ring import hashing as ring
from shardctl.ring.hashing import Move, hex_bounds
from shardctl.router.router import Router
from shardctl.state import ddl, fence
from shardctl.state.fence import FENCE_SQLSTATE, RangeState
from tests.clusters import make_topology, running

pytestmark = pytest.mark.integration

OPERATION = 9_998
"""The reshard id this module's ranges use."""
HIGH = Move(*hex_bounds("8" * 32, None), "shard-0", "shard-9")
"""Half the circle: every key whose md5 starts with 8 or above."""
GUARDS = ("shardctl_guard", "shardctl_guard_update", "shardctl_guard_delete")
TRIGGERS = (
    "SELECT tgname, pg_catalog.pg_get_triggerdef(oid), xmin::text FROM pg_catalog.pg_trigger "
    "WHERE tgrelid = 'users'::regclass AND tgname LIKE 'shardctl%%' ORDER BY tgname"
)


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module (CI time): each case lists its ranges and takes them back
    (and forgets their captured changes) before it ends, pass or fail."""
    with running(make_topology(tmp_path_factory.mktemp("fence"), shards=1, replicas=0)) as made:
        yield made


@pytest.fixture
def admin(one_shard: Cluster) -> Iterator[psycopg.Connection[Any]]:
    node = one_shard.topology.shard_nodes("shard-0")[0]
    with pg.connect(node, one_shard.credentials(), one_shard.topology.spec.database) as conn:
        yield conn


def app_connection(cluster: Cluster) -> psycopg.Connection[Any]:
    node = cluster.topology.shard_nodes("shard-0")[0]
    info = pg.conninfo(node, cluster.credentials(), cluster.topology.spec.database, login=Login.APP)
    return psycopg.connect(info, autocommit=True)


def high(key: uuid.UUID) -> bool:
    return hashlib.md5(str(key).encode()).hexdigest() >= HIGH.start_hex


def triggers(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str]]:
    return [(str(n), str(d), str(x)) for n, d, x in conn.execute(TRIGGERS).fetchall()]


def test_the_guards_are_armed_for_the_listed_ranges_only(
    one_shard: Cluster, admin: psycopg.Connection[Any]
) -> None:
    idle = triggers(admin)
    assert [name for name, _, _ in idle] == sorted(GUARDS)
    assert all("WHEN (false)" in definition for _, definition, _ in idle)
    # `up` again installs nothing new: the triggers are not rewritten (no table lock).
    ddl.ensure(one_shard.topology, one_shard.credentials())
    assert triggers(admin) == idle

    keys = [uuid.uuid4() for _ in range(40)]
    fence.give_away(admin, OPERATION, [HIGH], RangeState.MOVED)
    try:
        armed = triggers(admin)
        assert all(HIGH.start_hex in definition for _, definition, _ in armed)
        with app_connection(one_shard) as app:
            for key in keys:
                try:
                    app.execute("INSERT INTO users (id) VALUES (%s)", (key,))
                except psycopg.Error as exc:
                    assert exc.sqlstate == FENCE_SQLSTATE
                    assert high(key)
                else:
                    assert not high(key)
        # A statement that touches no row fires no trigger: the Router asks after it.
        moved = next(k for k in keys if high(k))
        kept = next(k for k in keys if not high(k))
        with Router(one_shard, retry_timeout=0.3) as router:
            update = "UPDATE users SET first_name = 'x' WHERE id = %s"
            with pytest.raises(KeyNotOwned):
                router.execute(moved, update, (moved,))
            assert router.execute(kept, update, (kept,)) == 1
            absent = next(k for k in (uuid.uuid4() for _ in range(100)) if not high(k))
            assert router.execute(absent, update, (absent,)) == 0
        # A change of state alone rewrites nothing.
        fence.set_state(admin, OPERATION, RangeState.FENCED)
        assert triggers(admin) == armed
    finally:
        fence.take_back(admin, OPERATION)
    assert all("WHEN (false)" in definition for _, definition, _ in triggers(admin))
    with app_connection(one_shard) as app:
        moved = next(k for k in (uuid.uuid4() for _ in range(100)) if high(k))
        app.execute("INSERT INTO users (id) VALUES (%s)", (moved,))  # taken back: accepted


def test_up_replaces_an_unconditional_guard_and_keeps_capturing(
    one_shard: Cluster, admin: psycopg.Connection[Any]
) -> None:
    # The guard as versions before issue 14 made it: one trigger for every row.
    admin.execute(
        "CREATE OR REPLACE TRIGGER shardctl_guard BEFORE INSERT OR UPDATE OR DELETE ON users "
        "FOR EACH ROW EXECUTE FUNCTION shardctl.guard('id')"
    )
    ddl.ensure(one_shard.topology, one_shard.credentials())
    assert all("WHEN (false)" in definition for _, definition, _ in triggers(admin))
    fence.give_away(admin, OPERATION, [HIGH], RangeState.CAPTURING)
    try:
        keys = [uuid.uuid4() for _ in range(20)]
        with app_connection(one_shard) as app:
            for key in keys:
                app.execute("INSERT INTO users (id) VALUES (%s)", (key,))
        logged = {
            str(k)
            for (k,) in admin.execute(
                "SELECT key FROM shardctl.changes WHERE target = %s", (HIGH.target,)
            ).fetchall()
        }
        assert logged == {str(k) for k in keys if high(k)}
    finally:
        fence.take_back(admin, OPERATION)
        fence.forget_changes(admin, [HIGH.target])


def test_the_guard_places_a_key_by_its_text_as_the_ring_does(
    one_shard: Cluster, admin: psycopg.Connection[Any]
) -> None:
    # The ring's contract is md5(key::text) (Python: md5(str(key))). to_jsonb spells a timestamp
    # with a "T", so a guard placing keys by it captured and refused the wrong keys.
    spec = TableSpec(name="events", key="at")
    admin.execute("CREATE TABLE events (at timestamp PRIMARY KEY, v int)")
    ddl.install(admin, [spec])
    ddl.grant_app(admin, [spec], one_shard.topology.spec.credentials.app_user)
    at = datetime(2024, 1, 2, 3, 4, 5)
    here = ring.position_hex(at)
    assert here == ring.position_hex("2024-01-02 03:04:05")
    just_it = Move(int(here, 16), int(here, 16) + 1, "shard-0", "shard-9")
    fence.give_away(admin, OPERATION, [just_it], RangeState.CAPTURING)
    try:
        with app_connection(one_shard) as app:
            app.execute("INSERT INTO events (at, v) VALUES (%s, 1)", (at,))
            app.execute("INSERT INTO events (at, v) VALUES (%s, 1)", (at + timedelta(seconds=1),))
        logged = admin.execute("SELECT tbl, key FROM shardctl.changes").fetchall()
        assert logged == [("events", "2024-01-02 03:04:05")]
        fence.set_state(admin, OPERATION, RangeState.MOVED)
        with app_connection(one_shard) as app, pytest.raises(psycopg.Error) as refused:
            app.execute("UPDATE events SET v = 2 WHERE at = %s", (at,))
        assert refused.value.sqlstate == FENCE_SQLSTATE
    finally:
        fence.take_back(admin, OPERATION)
        fence.forget_changes(admin, [just_it.target])


def test_a_dropped_table_does_not_block_listing_or_lifting_ranges(
    one_shard: Cluster, admin: psycopg.Connection[Any]
) -> None:
    # shardctl.guarded names tables by regclass, which keeps no dependency: a table once
    # sharded and then dropped stayed listed, and LOCK TABLE of its number failed every
    # give_away and take_back here (a switchover's fence and its lifting included).
    admin.execute("CREATE TABLE scratch (id text PRIMARY KEY)")
    ddl.install(admin, [TableSpec(name="scratch", key="id")])
    admin.execute("DROP TABLE scratch")
    fence.give_away(admin, OPERATION, [HIGH], RangeState.FENCED)
    try:
        assert all(HIGH.start_hex in definition for _, definition, _ in triggers(admin))
    finally:
        fence.take_back(admin, OPERATION)
    assert all("WHEN (false)" in definition for _, definition, _ in triggers(admin))


def test_a_snapshot_older_than_the_listing_cannot_write_past_the_capture(
    one_shard: Cluster, admin: psycopg.Connection[Any]
) -> None:
    # In REPEATABLE READ the guard's read of shardctl.moving uses the transaction's snapshot:
    # one taken before the range was listed saw no range, and the write escaped the change log.
    moved = next(k for k in (uuid.uuid4() for _ in range(100)) if high(k))
    with app_connection(one_shard) as app:
        app.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(psycopg.errors.SerializationFailure), app.transaction():
            app.execute("SELECT count(*) FROM users").fetchone()  # the snapshot
            fence.give_away(admin, OPERATION, [HIGH], RangeState.CAPTURING)
            app.execute("INSERT INTO users (id) VALUES (%s)", (moved,))
        # Retried, with a snapshot that sees the range: captured.
        with app.transaction():
            app.execute("INSERT INTO users (id) VALUES (%s)", (moved,))
    try:
        logged = admin.execute("SELECT key FROM shardctl.changes").fetchall()
        assert logged == [(str(moved),)]
    finally:
        fence.take_back(admin, OPERATION)
        fence.forget_changes(admin, [HIGH.target])
