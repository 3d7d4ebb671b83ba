-- Jobs for any worker carry the capability '*' instead of NULL: `capability = '*'` is an
-- equality, so claim_jobs reads the pending index in order (the first rows it needs) instead
-- of sorting every due job on each claim.
UPDATE forge_jobs SET capability = '*' WHERE capability IS NULL;
ALTER TABLE forge_jobs ALTER COLUMN capability SET DEFAULT '*',
                       ALTER COLUMN capability SET NOT NULL;

-- `jobs list --type` reads the primary key backwards; an index on type cost every claim and
-- every completion one more index insert.
DROP INDEX forge_jobs_type;
