-- +goose Up
-- idempotency.event_id: the event that took the key. A flush that meets a
-- key Postgres holds for another event (taken on the direct path while
-- Redis was unreachable, or taken twice in Redis) counts its own event as
-- a duplicate: Postgres decides which one counts. NULL on rows from
-- before: any event meeting them is another one.
ALTER TABLE idempotency ADD COLUMN event_id text;
-- counters.reset_ms, reset_seq: the pending-stream position of the last
-- reset applied to the row (a Redis stream id, <ms>-<seq>; a reset taken
-- on the direct path: its time and the largest seq). A flush counts only
-- the events after it, however late a batch holding earlier ones arrives.
-- Constant defaults: adding them rewrites nothing.
ALTER TABLE counters ADD COLUMN reset_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE counters ADD COLUMN reset_seq bigint NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE counters DROP COLUMN reset_seq;
ALTER TABLE counters DROP COLUMN reset_ms;
ALTER TABLE idempotency DROP COLUMN event_id;
