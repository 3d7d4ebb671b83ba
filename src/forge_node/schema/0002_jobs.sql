-- The job queue. A job's life:
--
--   pending --claim--> running --returns--> completed
--      ^                  |  \--raises, attempts left--> pending (run_at = now() + backoff)
--      |                  |  \--raises, none left / PermanentError--> dead
--      |                  |  \--cancel requested--> cancelled
--      |                  \--its node declared dead / its worker restarted--> pending or dead
--      +--drain: claimed but not started, or not finished in time (attempt given back)
--   pending --cancel--> cancelled;  dead | cancelled --retry--> pending
--
-- Every change of a running job is fenced on (id, node_id, attempts): a node presumed dead
-- cannot overwrite the outcome of the node that took its job over.
CREATE TABLE forge_jobs (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type              text        NOT NULL,
    args              jsonb       NOT NULL DEFAULT '{}',
    status            text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'completed', 'dead', 'cancelled')),
    capability        text,
    priority          integer     NOT NULL DEFAULT 0,
    attempts          integer     NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    timeout_secs      double precision,
    node_id           uuid,
    run_at            timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    progress          smallint,
    progress_message  text,
    result            jsonb,
    last_error        text,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    idempotency_key   text
);

-- claim_jobs: one ordered index scan per capability (NULL: jobs for any worker).
CREATE INDEX forge_jobs_pending ON forge_jobs (capability, priority DESC, run_at, id)
    WHERE status = 'pending';
CREATE INDEX forge_jobs_running ON forge_jobs (node_id) WHERE status = 'running';
CREATE INDEX forge_jobs_finished ON forge_jobs (completed_at)
    WHERE status IN ('completed', 'dead', 'cancelled');
CREATE INDEX forge_jobs_type ON forge_jobs (type, id);
-- An idempotency key names at most one unfinished job.
CREATE UNIQUE INDEX forge_jobs_idempotency ON forge_jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('pending', 'running');
