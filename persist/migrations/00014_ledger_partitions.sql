-- +goose Up
-- The ledger partitioned by the month of created_at (UTC), so that its
-- retention (QUOTAD_LEDGER_RETENTION_MONTHS) drops whole partitions instead
-- of deleting rows. Unique keys of a partitioned table must hold its
-- partition key: the key becomes (event_id, created_at), which is as
-- unique as event_id alone because an event's created_at is its own time,
-- the same in every copy of it (Redis's event, a direct write, a replay).
-- The months of the existing rows (at most the last 24) and the next two
-- get partitions; rows outside them go to the default partition. Every
-- row is copied once, in this transaction: with a very large ledger, run
-- `quotad migrate` before rolling out (other instances wait on the
-- migration lock meanwhile).
ALTER TABLE usage_ledger RENAME TO usage_ledger_unpartitioned;
ALTER INDEX usage_ledger_pkey RENAME TO usage_ledger_unpartitioned_pkey;
ALTER INDEX usage_ledger_created_brin RENAME TO usage_ledger_unpartitioned_created_brin;
ALTER INDEX usage_ledger_subject_created RENAME TO usage_ledger_unpartitioned_subject_created;
CREATE TABLE usage_ledger (LIKE usage_ledger_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (created_at);
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY (event_id, created_at);
CREATE INDEX usage_ledger_created_brin ON usage_ledger USING brin (created_at);
CREATE INDEX usage_ledger_subject_created ON usage_ledger (subject, created_at, event_id);
CREATE TABLE usage_ledger_default PARTITION OF usage_ledger DEFAULT;
-- +goose StatementBegin
DO $$
DECLARE
    m    timestamp; -- a month's start, UTC
    last timestamp;
BEGIN
    SELECT greatest(date_trunc('month', coalesce(min(created_at), now()) AT TIME ZONE 'UTC'),
                    date_trunc('month', now() AT TIME ZONE 'UTC') - interval '24 months'),
           date_trunc('month', greatest(now(), coalesce(max(created_at), now())) AT TIME ZONE 'UTC') + interval '2 months'
        INTO m, last FROM usage_ledger_unpartitioned;
    WHILE m <= last LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF usage_ledger FOR VALUES FROM (%L) TO (%L)',
            'usage_ledger_' || to_char(m, 'YYYY_MM'), m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC');
        m := m + interval '1 month';
    END LOOP;
END $$;
-- +goose StatementEnd
INSERT INTO usage_ledger SELECT * FROM usage_ledger_unpartitioned;
DROP TABLE usage_ledger_unpartitioned;

-- +goose Down
CREATE TABLE usage_ledger_unpartitioned (LIKE usage_ledger INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
INSERT INTO usage_ledger_unpartitioned SELECT * FROM usage_ledger;
DROP TABLE usage_ledger;
ALTER TABLE usage_ledger_unpartitioned RENAME TO usage_ledger;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_pkey PRIMARY KEY (event_id);
CREATE INDEX usage_ledger_created_brin ON usage_ledger USING brin (created_at);
CREATE INDEX usage_ledger_subject_created ON usage_ledger (subject, created_at, event_id);
