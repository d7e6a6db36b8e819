-- +goose Up
-- The reservation a consume committed (POST /v1/reservations/{id}/commit),
-- NULL for plain consumes and resets. Nullable with no default: adding it
-- rewrites nothing.
ALTER TABLE usage_ledger ADD COLUMN reservation_id text;

-- +goose Down
ALTER TABLE usage_ledger DROP COLUMN reservation_id;
