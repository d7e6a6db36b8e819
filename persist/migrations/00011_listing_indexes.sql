-- +goose NO TRANSACTION
-- +goose Up
-- GET /v1/subjects pages through subjects by id with a keyset cursor and
-- a prefix range, compared byte by byte (COLLATE "C") so that the order
-- and the prefix range do not depend on the database's collation.
--
-- GET /v1/subjects/{subject}/ledger and .../usage read one subject's
-- ledger rows, latest first or by day: without an index on the subject
-- they would scan the whole ledger. 00002 dropped an index like this one
-- for the flush's sake; reading a subject's history needs it back (its
-- cost per flushed event is in the commit that added this file).
-- CONCURRENTLY (hence no transaction): big tables keep taking writes
-- meanwhile; a build that failed half-way is dropped first.
DROP INDEX CONCURRENTLY IF EXISTS subjects_subject_c;
CREATE INDEX CONCURRENTLY subjects_subject_c ON subjects (subject COLLATE "C");
DROP INDEX CONCURRENTLY IF EXISTS usage_ledger_subject_created;
CREATE INDEX CONCURRENTLY usage_ledger_subject_created ON usage_ledger (subject, created_at, event_id);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS usage_ledger_subject_created;
DROP INDEX CONCURRENTLY IF EXISTS subjects_subject_c;
