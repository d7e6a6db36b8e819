-- +goose Up
-- subject_usage is written by the rollup (persist/rollup.go), once per
-- interval per changed (subject, meter), not by a trigger inside every
-- write of counters. The limit triggers stay; they take the rollup's
-- advisory lock, so that a rollup reading limits from before a change
-- cannot write them over the change (the rollup's invariant 2).
DROP TRIGGER counters_updated ON counters;
DROP TRIGGER counters_inserted ON counters;
DROP FUNCTION subject_usage_from_counters();

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION subject_usage_limit_of_subject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(126943148143457); -- persist.rollupLock
    UPDATE subject_usage u SET lim = COALESCE(NEW.overrides -> u.meter ->> 'limit', p.limits -> u.meter ->> 'limit')::bigint
    FROM plans p WHERE p.name = NEW.plan AND u.subject = NEW.subject;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION subject_usage_limit_of_plan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(126943148143457); -- persist.rollupLock
    UPDATE subject_usage u SET lim = COALESCE(s.overrides -> u.meter ->> 'limit', NEW.limits -> u.meter ->> 'limit')::bigint
    FROM subjects s WHERE s.subject = u.subject AND s.plan = NEW.name;
    RETURN NULL;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION subject_usage_limit_of_subject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subject_usage u SET lim = COALESCE(NEW.overrides -> u.meter ->> 'limit', p.limits -> u.meter ->> 'limit')::bigint
    FROM plans p WHERE p.name = NEW.plan AND u.subject = NEW.subject;
    RETURN NULL;
END $$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION subject_usage_limit_of_plan() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM subject_usage u JOIN subjects s ON s.subject = u.subject
        WHERE s.plan = NEW.name ORDER BY u.subject, u.meter FOR UPDATE OF u;
    UPDATE subject_usage u SET lim = COALESCE(s.overrides -> u.meter ->> 'limit', NEW.limits -> u.meter ->> 'limit')::bigint
    FROM subjects s WHERE s.subject = u.subject AND s.plan = NEW.name;
    RETURN NULL;
END $$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION subject_usage_from_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO subject_usage AS u (subject, meter, period_start, period_end, used, lim)
    SELECT DISTINCT ON (n.subject, n.meter) n.subject, n.meter, n.period_start, n.period_end, n.used,
        COALESCE(s.overrides -> n.meter ->> 'limit', p.limits -> n.meter ->> 'limit')::bigint
    FROM written n
    LEFT JOIN subjects s ON s.subject = n.subject
    LEFT JOIN plans p ON p.name = s.plan
    ORDER BY n.subject, n.meter, n.period_start DESC
    ON CONFLICT (subject, meter) DO UPDATE SET period_start = EXCLUDED.period_start,
        period_end = EXCLUDED.period_end, used = EXCLUDED.used, lim = EXCLUDED.lim
        WHERE EXCLUDED.period_start >= u.period_start;
    RETURN NULL;
END $$;
-- +goose StatementEnd
CREATE TRIGGER counters_inserted AFTER INSERT ON counters
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION subject_usage_from_counters();
CREATE TRIGGER counters_updated AFTER UPDATE ON counters
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION subject_usage_from_counters();
