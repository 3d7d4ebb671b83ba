-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS forge_migrations (
    source      text        NOT NULL,
    version     integer     NOT NULL,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, version)
);

-- name: try_lock_migrations
SELECT pg_try_advisory_lock(%(key)s);

-- name: lock_migrations
SELECT pg_advisory_lock(%(key)s);

-- name: unlock_migrations
SELECT pg_advisory_unlock(%(key)s);

-- name: list_applied_migrations
SELECT source, version, name, checksum, applied_at FROM forge_migrations
ORDER BY source, version;

-- name: migrations_table_exists
SELECT to_regclass('forge_migrations') IS NOT NULL;

-- name: record_migration
INSERT INTO forge_migrations (source, version, name, checksum)
VALUES (%(source)s, %(version)s, %(name)s, %(checksum)s);

-- name: forget_migration
DELETE FROM forge_migrations WHERE source = %(source)s AND version = %(version)s;
