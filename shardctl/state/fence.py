"""The fence: which keys a primary refuses or records, and every object the protocol keeps there.

A primary gives ranges of the ring away by listing them in ``shardctl.moving``, each with a
target and a :class:`RangeState`. Three BEFORE ROW guard triggers per sharded table (INSERT,
UPDATE, DELETE) call ``shardctl.guard``, which looks the written key up there:

- a ``capturing`` range: the key is recorded in ``shardctl.changes`` in the writer's own
  transaction (whoever the writer is: Router, psql, another service);
- a ``fenced`` or ``moved`` range: the write is refused with SQLSTATE :data:`FENCE_SQLSTATE`
  (key not owned); a Router refreshes its ring and retries on the new owner.

**Free outside a reshard.** Each guard trigger has a ``WHEN`` clause, evaluated in C per row,
that tests the key's ring position against the listed ranges, baked in as a constant
multirange (``shardctl.span``); with none listed it is ``false``. ``shardctl.rearm`` rewrites
the clauses in the transaction that lists or lifts ranges (a statement trigger on
``shardctl.moving``), after locking the tables ``SHARE ROW EXCLUSIVE``: every in-flight write
finishes first and every later one sees the new clause. A change of state rewrites nothing.

``shardctl.assert_owner(key)`` refuses a key of a fenced or moved range even when no row is
written: :meth:`~shardctl.router.router.Router.execute` calls it after a statement that touched no
row
(so a stale Router is redirected), and ``run``, ``fetch(prefer="primary")`` and dual writes
open their transaction with it. It reads the range row ``FOR SHARE``, as ``guard`` does, so
fencing a range (:func:`set_state` to ``FENCED``) waits for every in-flight writer of that range
to finish: that is a cut-over's handshake. shardctl's own copy, re-sync and clean-up write with
:func:`trusted_writes`, which skips the triggers.

**Why this one module owns the whole protocol schema.** Everything the protocol puts on a
primary lives here: the DDL (the fence's ``moving``/``changes`` and the reshard's
``reshard``/``copied``, installed together by ``up`` as one idempotent script), the functions
``check_key``/``assert_owner``/``guard``, the SQLSTATE, the range states, every advisory-lock
key of the project, and the protocol's statements, named. The Router needs the fence's half
(moving ranges, re-sync of a key, key types) and must not depend on the coordinator, so the
module sits low: it imports only :mod:`shardctl.db.pg` and the topology, never
``shardctl.reshard`` or ``shardctl.cluster``. The coordinator (:mod:`shardctl.ops.reshard`) drives
it; a switchover can fence a whole old primary with the same calls (one range covering the
circle, :data:`CIRCLE_START`, given away ``FENCED``), and remove-shard can reuse the reshard.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
import psycopg.errors
from psycopg import sql

from shardctl.config.credentials import Credentials
from shardctl.config.schema import TableSpec
from shardctl.config.topology import Topology
from shardctl.db import pg
from shardctl.util.waiting import retrying

Conn = psycopg.Connection[Any]

FENCE_SQLSTATE = "SC001"
"""SQLSTATE a primary raises for a write to a key it does not (or no longer) own.

Raised by ``shardctl.check_key`` (the trigger and ``assert_owner``); the Router turns it into
:class:`~shardctl.errors.KeyNotOwned`, refreshes its ring and retries on the new owner.
"""


NOT_PRIMARY_SQLSTATE = "25006"
"""``read_only_sql_transaction``: a write reached a server in recovery. From the node a Router
believes is a primary, that is a former primary a switchover or failover demoted (its data
directory holds ``standby.signal``): the Router re-reads the catalog and retries, as for
:data:`FENCE_SQLSTATE`."""


class RangeState(StrEnum):
    """Where a range a primary gives away stands (``shardctl.moving.state``)."""

    CAPTURING = "capturing"
    """Still owned here; every write to it is recorded in ``shardctl.changes``."""
    FENCED = "fenced"
    """Writes refused (cut-over in progress); may go back to CAPTURING if the cut-over fails."""
    MOVED = "moved"
    """Owned by the target for good; writes refused here forever."""


CIRCLE_START = "0" * 32
"""The lowest ring position: a range from here with no end covers the whole circle."""

# ------------------------------------------------------------------ advisory locks
# Every advisory-lock key shardctl takes, in one place so that no two features collide.

CATALOG_INSTALL_LOCK = 0x5C_A7A1_06
"""``pg_advisory_xact_lock``: one installer of the ring catalog at a time per database."""
FENCE_INSTALL_LOCK = 0x5C_A7A1_07
"""``pg_advisory_xact_lock``: one installer of this module's schema at a time per database."""
COORDINATOR_LOCK = 0x5C_A7A1_08
"""Session ``pg_try_advisory_lock`` on the first primary: one reshard coordinator at a time."""
ROLE_CHANGE_LOCK = 0x5C_A7A1_09
"""Session ``pg_try_advisory_lock`` on a shard's primary, held by a switchover from before it
fences the primary until the primary is stopped: ``up`` lifts only a fence nobody holds."""

ROLE_CHANGE = 0
"""The operation id (``shardctl.moving.reshard_id``) of a role change's fence; reshards count
from 1."""

# ------------------------------------------------------------------ the schema


def _states(*states: RangeState) -> sql.Composable:
    return sql.SQL(", ").join(sql.Literal(s.value) for s in states)


SCHEMA_SQL = sql.SQL(
    """
CREATE SCHEMA IF NOT EXISTS shardctl;
CREATE TABLE IF NOT EXISTS shardctl.moving (
    reshard_id bigint NOT NULL,
    lo         text COLLATE "C" NOT NULL,
    hi         text COLLATE "C",
    target     text NOT NULL,
    state      text NOT NULL CHECK (state IN ({all_states})),
    copied     boolean NOT NULL DEFAULT false,
    PRIMARY KEY (reshard_id, lo)
);
CREATE INDEX IF NOT EXISTS moving_lo ON shardctl.moving (lo);
CREATE TABLE IF NOT EXISTS shardctl.changes (
    id     bigserial PRIMARY KEY,
    target text NOT NULL,
    tbl    text NOT NULL,
    key    text NOT NULL
);
CREATE TABLE IF NOT EXISTS shardctl.reshard (
    id         bigint PRIMARY KEY,
    phase      text NOT NULL,
    flipped    boolean NOT NULL DEFAULT false,
    plan       jsonb NOT NULL,
    report     jsonb NOT NULL DEFAULT '{{}}',
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Who started a reshard, for `shardctl status` (added later: existing clusters get it too).
ALTER TABLE shardctl.reshard
    ADD COLUMN IF NOT EXISTS started_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN IF NOT EXISTS started_by text NOT NULL
        DEFAULT current_setting('application_name');
CREATE TABLE IF NOT EXISTS shardctl.copied (
    reshard_id bigint NOT NULL,
    chunk      text NOT NULL,
    rows       bigint NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (reshard_id, chunk)
);
-- Not granted to anyone: it runs inside guard() and assert_owner(), already with their owner's
-- rights and search_path (a SET of its own would cost every written row once more).
CREATE OR REPLACE FUNCTION shardctl.check_key(k text, capture_table text) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER AS $fn$
DECLARE
    pos   text := md5(k) COLLATE "C";
    found record;
BEGIN
    -- FOR SHARE: marking the range fenced waits until this transaction ends.
    SELECT m.state, m.target INTO found FROM shardctl.moving m
     WHERE m.lo <= pos AND (m.hi IS NULL OR pos < m.hi)
     ORDER BY m.lo DESC LIMIT 1
     FOR SHARE;
    IF found.state IN ({refused}) THEN
        RAISE EXCEPTION USING
            ERRCODE = {sqlstate},
            MESSAGE = format('shardctl: key %s is not owned by this shard', k),
            HINT = format('it moved to %s; refresh the ring and retry there', found.target);
    ELSIF found.state = {capturing} AND capture_table IS NOT NULL THEN
        INSERT INTO shardctl.changes (target, tbl, key) VALUES (found.target, capture_table, k);
    END IF;
END
$fn$;
CREATE OR REPLACE FUNCTION shardctl.assert_owner(k text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$ SELECT shardctl.check_key(k, NULL) $fn$;
CREATE OR REPLACE FUNCTION shardctl.guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    old_key text;
    new_key text;
    k       text;
    pos     text;
BEGIN
    -- key::text, the ring's contract (shardctl.ring), as the WHEN clause computes it: not
    -- to_jsonb's text, which spells a timestamp, a float or a char(n) otherwise. OLD is NULL
    -- in an INSERT trigger and NEW in a DELETE trigger.
    EXECUTE format('SELECT ($1).%1$I::text, ($2).%1$I::text', TG_ARGV[0])
       INTO old_key, new_key USING OLD, NEW;
    -- A snapshot taken before a range was listed (REPEATABLE READ, SERIALIZABLE) does not see
    -- the range this trigger is armed for (TG_ARGV[1], from the catalog, always current): its
    -- write would escape capture, or a fence. Refused as a serialization failure (retried).
    IF TG_NARGS > 1 AND current_setting('transaction_isolation') <> 'read committed' THEN
        FOREACH k IN ARRAY ARRAY[old_key, new_key] LOOP
            pos := md5(k) COLLATE "C";
            IF pos <@ TG_ARGV[1]::shardctl.span_multirange AND NOT EXISTS (
                SELECT FROM shardctl.moving m
                 WHERE m.lo <= pos AND (m.hi IS NULL OR pos < m.hi)) THEN
                RAISE EXCEPTION USING
                    ERRCODE = '40001',
                    MESSAGE = format('shardctl: key %s: the transaction''s snapshot predates '
                                     'a reshard or switchover of its range; retry it', k);
            END IF;
        END LOOP;
    END IF;
    IF old_key IS NOT NULL THEN
        PERFORM shardctl.check_key(old_key, TG_TABLE_NAME);
    END IF;
    IF new_key IS NOT NULL AND new_key IS DISTINCT FROM old_key THEN
        PERFORM shardctl.check_key(new_key, TG_TABLE_NAME);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$fn$;
-- The guard triggers fire only for keys in a range listed above (any state): a WHEN clause,
-- evaluated in C per row, tests the key's ring position against those ranges, baked into the
-- trigger as a constant. Outside a reshard a write pays one md5 and one binary search, not a
-- PL/pgSQL call. rearm() rewrites the clause whenever the listed ranges change.
DO $do$ BEGIN
    CREATE TYPE shardctl.span AS RANGE (subtype = text, collation = "C");
EXCEPTION WHEN duplicate_object THEN NULL;
END $do$;
CREATE TABLE IF NOT EXISTS shardctl.guarded (
    tbl   regclass PRIMARY KEY,
    key   text NOT NULL,
    armed text
);
CREATE OR REPLACE FUNCTION shardctl.lock_guarded() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    g record;
BEGIN
    -- Tables before rows: a writer holds its table, then reads a range FOR SHARE (guard);
    -- taking the tables first here means a range listed or lifted never waits in a cycle.
    -- A table dropped since it was registered (regclass holds no dependency) is skipped: its
    -- number would fail LOCK TABLE, and with it every range listed or lifted here.
    FOR g IN SELECT tbl FROM shardctl.guarded
              WHERE EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl) ORDER BY tbl LOOP
        EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', g.tbl);
    END LOOP;
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE FUNCTION shardctl.rearm() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    spans  text := (SELECT coalesce(range_agg(shardctl.span(m.lo, m.hi, '[)')),
                                    '{{}}'::shardctl.span_multirange)::text
                      FROM shardctl.moving m);
    g      record;
    old_in text := 'false';
    new_in text := 'false';
    either text := 'false';
BEGIN
    FOR g IN SELECT tbl, key FROM shardctl.guarded
              WHERE armed IS DISTINCT FROM spans
                AND EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl) ORDER BY tbl LOOP
        IF spans <> '{{}}' THEN
            new_in := format('md5((NEW.%I)::text) <@ %L::shardctl.span_multirange',
                             g.key, spans);
            old_in := format('md5((OLD.%I)::text) <@ %L::shardctl.span_multirange',
                             g.key, spans);
            either := format('%s OR %s', old_in, new_in);
        END IF;
        EXECUTE format('CREATE OR REPLACE TRIGGER {guard} BEFORE INSERT ON %s FOR EACH ROW '
                       'WHEN (%s) EXECUTE FUNCTION shardctl.guard(%L, %L)',
                       g.tbl, new_in, g.key, spans);
        EXECUTE format('CREATE OR REPLACE TRIGGER {guard_update} BEFORE UPDATE ON %s '
                       'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION shardctl.guard(%L, %L)',
                       g.tbl, either, g.key, spans);
        EXECUTE format('CREATE OR REPLACE TRIGGER {guard_delete} BEFORE DELETE ON %s FOR EACH ROW '
                       'WHEN (%s) EXECUTE FUNCTION shardctl.guard(%L, %L)',
                       g.tbl, old_in, g.key, spans);
        UPDATE shardctl.guarded SET armed = spans WHERE tbl = g.tbl;
    END LOOP;
END
$fn$;
CREATE OR REPLACE FUNCTION shardctl.rearm_after() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM shardctl.rearm();
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE TRIGGER moving_lock BEFORE INSERT OR DELETE ON shardctl.moving
    FOR EACH STATEMENT EXECUTE FUNCTION shardctl.lock_guarded();
CREATE OR REPLACE TRIGGER moving_rearm AFTER INSERT OR DELETE ON shardctl.moving
    FOR EACH STATEMENT EXECUTE FUNCTION shardctl.rearm_after();
-- shardctl's own writes run with session_replication_role = replica: these must fire anyway.
ALTER TABLE shardctl.moving ENABLE ALWAYS TRIGGER moving_lock;
ALTER TABLE shardctl.moving ENABLE ALWAYS TRIGGER moving_rearm;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA shardctl FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA shardctl FROM PUBLIC;
REVOKE ALL ON SCHEMA shardctl FROM PUBLIC;
"""
).format(
    all_states=_states(*RangeState),
    refused=_states(RangeState.FENCED, RangeState.MOVED),
    capturing=sql.Literal(RangeState.CAPTURING.value),
    sqlstate=sql.Literal(FENCE_SQLSTATE),
    guard=sql.Identifier("shardctl_guard"),
    guard_update=sql.Identifier("shardctl_guard_update"),
    guard_delete=sql.Identifier("shardctl_guard_delete"),
)
"""Every table and function of the protocol (idempotent; run by ``up`` on every primary).

``guard`` and ``assert_owner`` run as their owner (``SECURITY DEFINER``, the superuser that ran
``up``) with a fixed ``search_path``, and ``check_key`` inside them: the trigger records a
writer's key in ``shardctl.changes``, and ``assert_owner`` reads the range ``FOR SHARE``,
although the application role that writes may neither write ``shardctl.changes`` nor lock
``shardctl.moving`` itself. Nothing in the schema is
granted to PUBLIC (functions are, by default): :func:`grant_app` grants the application role
exactly what a Router needs."""

GUARD_TRIGGER = "shardctl_guard"

# ------------------------------------------------------------------ named statements
# The protocol's statements, by what they do; the comment above each names its %s parameters.

# (table, trigger name): the guard as this version makes it (a WHEN clause on key::text, the
# ranges as its second argument; an earlier one placed keys by their to_jsonb text)
HAS_GUARD = (
    "SELECT 1 FROM pg_catalog.pg_trigger "
    "WHERE tgrelid = %s::regclass AND tgname = %s AND tgqual IS NOT NULL AND tgnargs = 2 "
    "AND pg_catalog.pg_get_triggerdef(oid) NOT LIKE '%%to_jsonb%%'"
)
# (table, key column)
REGISTER_GUARDED = (
    "INSERT INTO shardctl.guarded (tbl, key) VALUES (%s::regclass, %s) ON CONFLICT (tbl) "
    "DO UPDATE SET key = EXCLUDED.key, armed = CASE WHEN shardctl.guarded.key = EXCLUDED.key "
    "THEN shardctl.guarded.armed END"
)
# (table)
DISARM = "UPDATE shardctl.guarded SET armed = NULL WHERE tbl = %s::regclass"
# no parameters
REARM = "SELECT shardctl.rearm()"
# (operation, lo, hi, target, state)
GIVE_AWAY = (
    "INSERT INTO shardctl.moving (reshard_id, lo, hi, target, state) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)
# (state, operation); SET_STATE_FROM adds (only from this state)
SET_STATE = "UPDATE shardctl.moving SET state = %s WHERE reshard_id = %s"
SET_STATE_FROM = SET_STATE + " AND state = %s"
# (operation)
MARK_COPIED = "UPDATE shardctl.moving SET copied = true WHERE reshard_id = %s"
# (operation)
TAKE_BACK = "DELETE FROM shardctl.moving WHERE reshard_id = %s"
# (RangeState.MOVED, ROLE_CHANGE, operation): what earlier reshards gave away here for good
GIVEN_AWAY_BEFORE = (
    "SELECT reshard_id, lo, hi, target FROM shardctl.moving "
    "WHERE state = %s AND reshard_id <> %s AND reshard_id <> %s ORDER BY lo"
)
# (operation, lo)
FORGET_RANGE = "DELETE FROM shardctl.moving WHERE reshard_id = %s AND lo = %s"
# (RangeState.CAPTURING)
MOVING_COPIED = "SELECT lo, hi, target FROM shardctl.moving WHERE state = %s AND copied ORDER BY lo"
# (target, batch size)
NEXT_CHANGES = "SELECT id, tbl, key FROM shardctl.changes WHERE target = %s ORDER BY id LIMIT %s"
# (ids)
DELETE_CHANGES = "DELETE FROM shardctl.changes WHERE id = ANY(%s)"
# (targets)
FORGET_CHANGES = "DELETE FROM shardctl.changes WHERE target = ANY(%s)"
# no parameters
LATEST_RESHARD = (
    "SELECT id, phase, flipped, plan, report FROM shardctl.reshard ORDER BY id DESC LIMIT 1"
)
# (id, phase, flipped, plan as json, report as json)
RECORD_RESHARD = (
    "INSERT INTO shardctl.reshard (id, phase, flipped, plan, report) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
    "phase = EXCLUDED.phase, flipped = EXCLUDED.flipped, "
    "report = EXCLUDED.report, updated_at = now()"
)
# (operation, chunk)
CHUNK_COPIED = "SELECT 1 FROM shardctl.copied WHERE reshard_id = %s AND chunk = %s"
# (operation, chunk, rows, bytes)
RECORD_CHUNK = (
    "INSERT INTO shardctl.copied (reshard_id, chunk, rows, bytes) VALUES (%s, %s, %s, %s)"
)
# (operation)
FORGET_CHUNKS = "DELETE FROM shardctl.copied WHERE reshard_id = %s"
# (a session lock: COORDINATOR_LOCK or ROLE_CHANGE_LOCK)
TRY_SESSION_LOCK = "SELECT pg_catalog.pg_try_advisory_lock(%s)"
RELEASE_SESSION_LOCK = "SELECT pg_catalog.pg_advisory_unlock(%s)"
# (an install lock: CATALOG_INSTALL_LOCK or FENCE_INSTALL_LOCK)
XACT_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"


# ------------------------------------------------------------------ installing


def install(conn: Conn, tables: Sequence[TableSpec]) -> None:
    """Create the protocol's tables and functions, and the guard triggers of each sharded table
    (armed for the ranges listed here; an older, unconditional guard is replaced)."""
    conn.execute(SCHEMA_SQL)
    for table in tables:
        current = conn.execute(HAS_GUARD, (table.name, GUARD_TRIGGER)).fetchone()
        conn.execute(REGISTER_GUARDED, (table.name, table.key))
        if not current:
            conn.execute(DISARM, (table.name,))
    # Rewrites only the triggers whose ranges differ (creating a trigger locks the table
    # against writes for a moment: on every `up`, only when something changed).
    conn.execute(REARM)


ROUTER_READS = ("ring", "moving")
"""The tables of the ``shardctl`` schema a Router reads (the ring and acting roles; the ranges
it dual-writes): SELECT only. They hold no secret."""
ROUTER_CALLS = ("assert_owner(text)",)
"""The functions of the ``shardctl`` schema a Router calls (the trigger needs no grant: a
trigger function's privileges are checked when the trigger is made, not when it fires)."""

# (sharded table) -> the sequences its columns draw defaults from (serial, identity)
TABLE_SEQUENCES = (
    "SELECT d.objid::regclass::text FROM pg_catalog.pg_depend d "
    "JOIN pg_catalog.pg_class c ON c.oid = d.objid AND c.relkind = 'S' "
    "WHERE d.refobjid = %s::regclass AND d.deptype IN ('a', 'i')"
)


def grant_app(conn: Conn, tables: Sequence[TableSpec], app_user: str) -> None:
    """Give the application role what a Router and ``load`` need, and nothing else: read and
    write the sharded tables (no TRUNCATE: it fires no trigger), read the ring and the moving
    ranges, call ``assert_owner``."""
    role = sql.Identifier(app_user)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA shardctl TO {}").format(role))
    for name in ROUTER_READS:
        conn.execute(
            sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(sql.Identifier("shardctl", name), role)
        )
    for function in ROUTER_CALLS:
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION shardctl.{} TO {}").format(sql.SQL(function), role)
        )
    for table in tables:
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {} TO {}").format(
                sql.Identifier(table.name), role
            )
        )
        for (sequence,) in conn.execute(TABLE_SEQUENCES, (table.name,)).fetchall():
            conn.execute(
                sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(sequence), role)
            )


def ensure(topology: Topology, credentials: Credentials) -> None:
    """Install the fence on every primary, and the application role's grants (idempotent;
    done by ``up``, after the ring catalog)."""

    def one(conn: Conn) -> None:
        with conn.transaction():
            conn.execute(XACT_LOCK, (FENCE_INSTALL_LOCK,))
            install(conn, topology.spec.tables)
            grant_app(conn, topology.spec.tables, topology.spec.credentials.app_user)
        lift_abandoned_role_fence(conn)

    pg.on_nodes(
        topology,
        credentials,
        topology.primaries(),
        one,
        timeout=10.0,
        strict=True,
        doing="installing the reshard fence",
    )


def lift_abandoned_role_fence(conn: Conn) -> bool:
    """Lift the fence of a switchover that died before stopping this primary (no switchover
    holds :data:`ROLE_CHANGE_LOCK` here); True when there was one."""
    row = conn.execute(TRY_SESSION_LOCK, (ROLE_CHANGE_LOCK,)).fetchone()
    if row is None or not row[0]:
        return False  # a switchover is running: its fence is not abandoned
    try:
        return conn.execute(TAKE_BACK, (ROLE_CHANGE,)).rowcount > 0
    finally:
        conn.execute(RELEASE_SESSION_LOCK, (ROLE_CHANGE_LOCK,))


# ------------------------------------------------------------------ ranges given away


@dataclass(frozen=True)
class Moving:
    """A range a source is giving away: ``[start, end)`` to target (no end: to the top)."""

    source: str
    start_hex: str
    end_hex: str | None
    target: str

    def contains(self, position_hex: str) -> bool:
        """Whether a key at ``position_hex`` lies in this range."""
        return self.start_hex <= position_hex and (
            self.end_hex is None or position_hex < self.end_hex
        )


def give_away(conn: Conn, operation: int, ranges: Iterable[Moving], state: RangeState) -> None:
    """List ``ranges`` as given away by the primary ``conn`` reaches, in ``state``; ranges
    already listed for ``operation`` stay as they are (so a resumed step changes nothing).

    ``CAPTURING`` starts recording their writes; ``FENCED`` refuses them at once (a switchover
    fencing an old primary gives away one range from :data:`CIRCLE_START` with no end).
    """
    with conn.transaction():  # one re-arming of the guard triggers for them all
        for moving in ranges:
            conn.execute(
                GIVE_AWAY, (operation, moving.start_hex, moving.end_hex, moving.target, state.value)
            )


def set_state(
    conn: Conn, operation: int, state: RangeState, *, only: RangeState | None = None
) -> int:
    """Move the ranges ``operation`` gives away here to ``state`` (only those in ``only``, if
    given); how many changed. To ``FENCED`` it waits for every in-flight writer of them."""
    if only is None:
        return conn.execute(SET_STATE, (state.value, operation)).rowcount
    return conn.execute(SET_STATE_FROM, (state.value, operation, only.value)).rowcount


def mark_copied(conn: Conn, operation: int) -> None:
    """Say the ranges ``operation`` gives away here are copied: Routers dual-write them now."""
    conn.execute(MARK_COPIED, (operation,))


def take_back(conn: Conn, operation: int) -> None:
    """Forget the ranges ``operation`` gave away here: capture stops and any fence lifts."""
    conn.execute(TAKE_BACK, (operation,))


def given_away_before(conn: Conn, source: str, operation: int) -> list[tuple[int, Moving]]:
    """The ranges reshards other than ``operation`` moved away from ``source`` (the shard
    ``conn`` reaches) for good, each with its reshard: refused here until taken back."""
    rows = conn.execute(
        GIVEN_AWAY_BEFORE, (RangeState.MOVED.value, ROLE_CHANGE, operation)
    ).fetchall()
    return [(int(op), Moving(source, lo, hi, target)) for op, lo, hi, target in rows]


def narrow(
    conn: Conn, operation: int, moved: Moving, keep: Sequence[tuple[str, str | None]]
) -> None:
    """Replace a range ``operation`` moved away for good by the pieces ``keep`` of it (each
    ``(lo, hi)``, no hi: to the top), in one transaction: the rest is this shard's again (a
    later reshard brings it back) and writes to it are no longer refused."""
    with conn.transaction():
        conn.execute(FORGET_RANGE, (operation, moved.start_hex))
        for lo, hi in keep:
            conn.execute(GIVE_AWAY, (operation, lo, hi, moved.target, RangeState.MOVED.value))


def forget_changes(conn: Conn, targets: Sequence[str]) -> None:
    """Drop the change log kept here for ``targets`` (their move is over or undone)."""
    conn.execute(FORGET_CHANGES, (list(targets),))


def moving_ranges(conn: Conn, source: str) -> list[Moving]:
    """The ranges ``source`` (the shard ``conn`` reaches) is capturing and has copied: those a
    Router dual-writes. Before its copy a range takes no dual writes: they would only collide
    with the copy, which brings those rows anyway (newer changes are in the change log)."""
    rows = conn.execute(MOVING_COPIED, (RangeState.CAPTURING.value,)).fetchall()
    return [Moving(source, lo, hi, target) for lo, hi, target in rows]


def trusted_writes(conn: Conn) -> None:
    """Let this transaction write without firing the guard (shardctl's own copy and clean-up)."""
    conn.execute("SET LOCAL session_replication_role = replica")


# ------------------------------------------------------------------ re-sync of keys


def key_type(conn: Conn, table: TableSpec) -> str:
    """The SQL type of a table's key column, as PostgreSQL spells it."""
    row = conn.execute(
        "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a "
        "WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped",
        (table.name, table.key),
    ).fetchone()
    if row is None:
        raise psycopg.ProgrammingError(f"table {table.name} has no column {table.key}")
    return str(row[0])


def keys_in(table: TableSpec, type_name: str, keys: Sequence[str]) -> sql.Composable:
    """``key IN (keys)``, the keys given as text and cast to the key's type.

    A literal rather than a parameter because COPY statements take no parameters.
    """
    return sql.SQL("{} IN (SELECT k::{} FROM pg_catalog.unnest({}::text[]) AS k)").format(
        sql.Identifier(table.key), sql.SQL(type_name), sql.Literal(list(keys))
    )


def pipe(
    source: Conn, copy_out: sql.Composed, into: psycopg.Cursor[Any], table: sql.Identifier
) -> int:
    """Stream ``copy_out`` (a binary COPY TO STDOUT) on the source into ``table`` through the
    target cursor ``into``; the bytes moved."""
    moved = 0
    with (
        source.cursor().copy(copy_out) as out,
        into.copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(table)) as copy_in,
    ):
        for block in out:
            moved += len(block)
            copy_in.write(block)
    return moved


RESYNC_ATTEMPTS = 5


def resync_keys(
    source: Conn,
    target: Conn,
    table: TableSpec,
    type_name: str,
    keys: Sequence[str],
    *,
    trusted: bool = True,
) -> None:
    """Make ``keys`` on the target equal to the source; call inside a source transaction.

    ``trusted`` (shardctl's drain, as the superuser) writes past the target's guard; a Router's
    dual write (the application role, which may not) goes through it, which lets it pass: the
    target gives away no range holding a key moving to it.

    The source rows are locked FOR SHARE, so their committed state cannot change under us.
    Another re-sync of the same key (a router's dual write, the drain) or the bulk copy may
    insert it on the target between our DELETE and COPY: both copied the same committed
    state, so we simply try again.
    """
    name = sql.Identifier(table.name)
    match = keys_in(table, type_name, keys)
    source.execute(sql.SQL("SELECT 1 FROM {} WHERE {} FOR SHARE").format(name, match))
    copy_out = sql.SQL("COPY (SELECT * FROM {} WHERE {}) TO STDOUT (FORMAT binary)").format(
        name, match
    )

    def replace() -> None:
        with target.transaction(), target.cursor() as cur:
            if trusted:
                trusted_writes(target)
            cur.execute(sql.SQL("DELETE FROM {} WHERE {}").format(name, match))
            pipe(source, copy_out, cur, name)

    retrying(replace, retry_on=psycopg.errors.UniqueViolation, attempts=RESYNC_ATTEMPTS)
