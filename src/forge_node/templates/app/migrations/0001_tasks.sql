CREATE TABLE tasks (
    id          bigserial   PRIMARY KEY,
    title       text        NOT NULL,
    words       integer,                 -- set by the count_words job
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE task_counts (
    counted_at  timestamptz PRIMARY KEY, -- the cron's tick
    tasks       bigint      NOT NULL
);

-- @down
DROP TABLE task_counts;
DROP TABLE tasks;
