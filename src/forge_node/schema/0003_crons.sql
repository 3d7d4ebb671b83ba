-- One row per fired cron tick. The primary key is what makes a tick fire exactly once across
-- the cluster: a leader inserts the row and enqueues the tick's job in one transaction, so
-- two leaders that briefly overlap cannot both fire it.
CREATE TABLE forge_cron_ticks (
    cron           text        NOT NULL,
    scheduled_for  timestamptz NOT NULL,
    job_id         bigint,
    node_id        uuid        NOT NULL,
    fired_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cron, scheduled_for)
);
