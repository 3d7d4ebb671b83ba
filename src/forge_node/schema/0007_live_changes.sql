-- Live queries read changes from a log instead of NOTIFY (0006): a transaction that NOTIFYs
-- takes a database-wide lock from its pre-commit to the end of its commit, so every writer
-- of a live table committed one after another (writers kept 55% of their inserts/s).
-- Dropping the old function drops its triggers; live.sync_triggers installs the new ones
-- right after the migrations, under the same lock.
DROP FUNCTION forge_live_notify() CASCADE;

-- One row per statement on a live table, stamped with the writer's transaction id. Gateway
-- workers read the rows committed since their last read (by snapshot, so a transaction that
-- commits late is not skipped); services/livechanges.py deletes rows every reader has seen.
-- Unlogged: no WAL for the writer to pay. A crash empties it, which the readers notice
-- (a new postmaster start time) and answer by re-running every live query.
CREATE UNLOGGED TABLE forge_live_changes (
    xid    xid8 NOT NULL DEFAULT pg_current_xact_id(),
    relid  oid  NOT NULL
);
CREATE INDEX forge_live_changes_xid ON forge_live_changes (xid);

CREATE FUNCTION forge_live_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO forge_live_changes (relid) VALUES (TG_RELID);
    RETURN NULL;
END
$$;
