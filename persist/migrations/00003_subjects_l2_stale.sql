-- +goose Up
-- l2_stale on subjects, as on counters: the settings changed here and
-- Redis's copy (q:{S}:s) may still hold the old ones (the change was made
-- while Redis was unreachable, or its copy to Redis has not happened yet).
-- The recovery after an outage drops the copies of stale subjects. Adding
-- a column with a constant default rewrites nothing.
ALTER TABLE subjects ADD COLUMN l2_stale boolean NOT NULL DEFAULT false;
CREATE INDEX subjects_l2_stale ON subjects (subject) WHERE l2_stale;

-- +goose Down
DROP INDEX subjects_l2_stale;
ALTER TABLE subjects DROP COLUMN l2_stale;
