-- +goose Up
-- A key past its expires_at no longer authenticates; NULL: never.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;

-- +goose Down
ALTER TABLE api_keys DROP COLUMN expires_at;
