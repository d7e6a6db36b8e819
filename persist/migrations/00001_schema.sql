-- +goose Up
CREATE TABLE plans (
    name       text PRIMARY KEY,
    limits     jsonb NOT NULL,             -- {"credits": {"limit": 2500, "period": "month", "overage": false}}
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subjects (
    subject      text PRIMARY KEY,         -- "anon:<id>" or "user:<id>"
    plan         text NOT NULL REFERENCES plans (name),
    cycle_anchor timestamptz NOT NULL,     -- month periods start on this day and time of day
    overrides    jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per (subject, meter, period): the source of truth for usage.
CREATE TABLE counters (
    subject      text NOT NULL,
    meter        text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz,              -- NULL for the lifetime period
    used         bigint NOT NULL CHECK (used >= 0),
    -- l2_stale: changed here directly (Redis was unreachable, or quotad ran
    -- with QUOTAD_TIERS=postgres), so Redis's copy must be dropped and
    -- reloaded before Redis serves this counter again.
    l2_stale     boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, meter, period_start)
);
CREATE INDEX counters_l2_stale ON counters (subject) WHERE l2_stale;

-- One row per consume (kind 'consume') or reset (kind 'reset'). event_id is
-- the key so that writing the same event twice (a replayed flush) is a
-- no-op; ids start with their time, so the index grows at its right edge.
CREATE TABLE usage_ledger (
    event_id           text PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('consume', 'reset')),
    subject            text NOT NULL,
    meter              text NOT NULL,
    period_start       timestamptz NOT NULL,
    amount             bigint NOT NULL,
    mode               text,
    model              text,
    input_tokens       bigint,
    output_tokens      bigint,
    cache_write_tokens bigint,
    cache_read_tokens  bigint,
    idempotency_key    text,
    created_at         timestamptz NOT NULL
);
CREATE INDEX usage_ledger_subject_time ON usage_ledger (subject, created_at);

-- First answers of idempotent consumes, kept 24 hours.
CREATE TABLE idempotency (
    subject      text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    applied      boolean,                  -- NULL while the first request is in flight
    amount       bigint,
    used         bigint,
    -- l2_stale: taken here directly (Redis was unreachable), so Redis does
    -- not know the key yet; it is copied there when Redis answers again.
    l2_stale     boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, key)
);
CREATE INDEX idempotency_l2_stale ON idempotency (subject) WHERE l2_stale;

-- USD per million tokens.
CREATE TABLE prices (
    model       text PRIMARY KEY,
    input       numeric NOT NULL,
    output      numeric NOT NULL,
    cache_write numeric NOT NULL,
    cache_read  numeric NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         bigserial PRIMARY KEY,
    hash       bytea NOT NULL UNIQUE,      -- sha256 of the key; the key itself is never stored
    scope      text NOT NULL CHECK (scope IN ('service', 'admin')),
    name       text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE api_keys, prices, idempotency, usage_ledger, counters, subjects, plans;
