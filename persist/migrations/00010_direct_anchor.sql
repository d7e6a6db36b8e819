-- +goose Up
-- direct_anchor: the subject was provisioned here directly, while Redis
-- was unreachable, with an anchor chosen without seeing Redis; Redis may
-- hold another one for it, with usage under that anchor's month still in
-- the pending stream. The flusher moves such usage to this row's anchor
-- (Flusher.followAnchors). Partial index: few subjects ever have it.
ALTER TABLE subjects ADD COLUMN direct_anchor boolean NOT NULL DEFAULT false;
CREATE INDEX subjects_direct_anchor ON subjects (subject) WHERE direct_anchor;

-- +goose Down
DROP INDEX subjects_direct_anchor;
ALTER TABLE subjects DROP COLUMN direct_anchor;
