-- +goose NO TRANSACTION
-- +goose Up
-- Idempotency keys answer for 24 hours; the flusher deletes older rows
-- (Store.PruneIdempotency). Rows arrive in time order, so a BRIN index on
-- created_at finds the old ones for almost nothing per insert.
-- CONCURRENTLY: a big table keeps taking writes meanwhile; a build that
-- failed half-way is dropped first.
DROP INDEX CONCURRENTLY IF EXISTS idempotency_created_brin;
CREATE INDEX CONCURRENTLY idempotency_created_brin ON idempotency USING brin (created_at);

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS idempotency_created_brin;
