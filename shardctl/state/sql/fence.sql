-- The resharding and fencing protocol's objects on every primary, in schema shardctl:
-- the fence (moving, changes, check_key, assert_owner, guard, the guard triggers' re-arming)
-- and the reshard's record (reshard, copied). Run whole by shardctl.state.ddl.install, on
-- every `up` and before every reshard: every statement is idempotent.
--
-- The literals here are the protocol's constants in shardctl.state.fence (the range states
-- 'capturing', 'fenced', 'moved'; the SQLSTATE 'SC001'; the trigger "shardctl_guard"), and a
-- unit test holds them equal (tests/unit/state/test_ddl.py). Sent as one simple query, with
-- no parameters: a % or a brace here is SQL, not a placeholder.
CREATE SCHEMA IF NOT EXISTS shardctl;
CREATE TABLE IF NOT EXISTS shardctl.moving (
    reshard_id bigint NOT NULL,
    lo         text COLLATE "C" NOT NULL,
    hi         text COLLATE "C",
    target     text NOT NULL,
    state      text NOT NULL CHECK (state IN ('capturing', 'fenced', 'moved')),
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
    report     jsonb NOT NULL DEFAULT '{}',
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
    IF found.state IN ('fenced', 'moved') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SC001',
            MESSAGE = format('shardctl: key %s is not owned by this shard', k),
            HINT = format('it moved to %s; refresh the ring and retry there', found.target);
    ELSIF found.state = 'capturing' AND capture_table IS NOT NULL THEN
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
                                    '{}'::shardctl.span_multirange)::text
                      FROM shardctl.moving m);
    g      record;
    old_in text := 'false';
    new_in text := 'false';
    either text := 'false';
BEGIN
    FOR g IN SELECT tbl, key FROM shardctl.guarded
              WHERE armed IS DISTINCT FROM spans
                AND EXISTS (SELECT FROM pg_class c WHERE c.oid = tbl) ORDER BY tbl LOOP
        IF spans <> '{}' THEN
            new_in := format('md5((NEW.%I)::text) <@ %L::shardctl.span_multirange',
                             g.key, spans);
            old_in := format('md5((OLD.%I)::text) <@ %L::shardctl.span_multirange',
                             g.key, spans);
            either := format('%s OR %s', old_in, new_in);
        END IF;
        EXECUTE format('CREATE OR REPLACE TRIGGER "shardctl_guard" BEFORE INSERT ON %s FOR EACH ROW '
                       'WHEN (%s) EXECUTE FUNCTION shardctl.guard(%L, %L)',
                       g.tbl, new_in, g.key, spans);
        EXECUTE format('CREATE OR REPLACE TRIGGER "shardctl_guard_update" BEFORE UPDATE ON %s '
                       'FOR EACH ROW WHEN (%s) EXECUTE FUNCTION shardctl.guard(%L, %L)',
                       g.tbl, either, g.key, spans);
        EXECUTE format('CREATE OR REPLACE TRIGGER "shardctl_guard_delete" BEFORE DELETE ON %s FOR EACH ROW '
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
