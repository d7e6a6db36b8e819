package persist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quotad/quotad/quota"
)

const (
	selectPlans = `SELECT name, limits FROM plans ORDER BY name`
	selectPlan  = `SELECT name, limits FROM plans WHERE name = $1`
	upsertPlan  = `INSERT INTO plans (name, limits) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET limits = EXCLUDED.limits, updated_at = now()`

	selectSubject = `SELECT subject, plan, cycle_anchor, overrides FROM subjects WHERE subject = $1`
	// provisionSubject inserts a subject unless one exists and returns the
	// stored row either way. The no-op DO UPDATE makes RETURNING see the
	// existing row, so two instances provisioning at once agree on it. A
	// subject provisioned here (Redis unreachable) is stale in Redis: a
	// copy another instance provisioned there meanwhile is dropped when
	// Redis is back, so every instance ends up with this one; and usage
	// counted in Redis under that copy's anchor follows this one when it
	// is flushed (direct_anchor, see Flusher.followAnchors).
	provisionSubject = `INSERT INTO subjects (subject, plan, cycle_anchor, overrides, l2_stale, direct_anchor) VALUES ($1, $2, $3, $4, true, true)
		ON CONFLICT (subject) DO UPDATE SET subject = EXCLUDED.subject
		RETURNING subject, plan, cycle_anchor, overrides`
	// upsertSubject is an admin change: stale in Redis until the change
	// has been copied there (SubjectsSynced).
	upsertSubject = `INSERT INTO subjects (subject, plan, cycle_anchor, overrides, l2_stale) VALUES ($1, $2, $3, $4, true)
		ON CONFLICT (subject) DO UPDATE SET plan = EXCLUDED.plan, cycle_anchor = EXCLUDED.cycle_anchor,
			overrides = EXCLUDED.overrides, l2_stale = true, updated_at = now()`
	selectStaleSubjects = `SELECT subject, plan, cycle_anchor, overrides FROM subjects WHERE l2_stale LIMIT 100000`
	// subjectsSyncedSQL clears the flag only where the row still holds the
	// settings Redis was given: a change that came after them stays stale.
	subjectsSyncedSQL = `UPDATE subjects AS s SET l2_stale = false
		FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[]) AS k(subject, plan, cycle_anchor, overrides)
		WHERE s.subject = k.subject AND s.l2_stale AND s.plan = k.plan AND s.cycle_anchor = k.cycle_anchor
			AND s.overrides = k.overrides::jsonb`

	selectPrices = `SELECT model, input::text, output::text, cache_write::text, cache_read::text FROM prices ORDER BY model`
	upsertPrice  = `INSERT INTO prices (model, input, output, cache_write, cache_read)
		VALUES ($1, $2::numeric, $3::numeric, $4::numeric, $5::numeric)
		ON CONFLICT (model) DO UPDATE SET input = EXCLUDED.input, output = EXCLUDED.output,
			cache_write = EXCLUDED.cache_write, cache_read = EXCLUDED.cache_read, updated_at = now()`
)

// Plans implements quota.Plans.
func (s *Store) Plans(ctx context.Context) ([]quota.Plan, error) {
	rows, err := s.pool.Query(ctx, selectPlans)
	if err != nil {
		return nil, fmt.Errorf("select plans: %w", translate(err))
	}
	plans, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.Plan, error) {
		var p quota.Plan
		err := r.Scan(&p.Name, &p.Limits)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("select plans: %w", translate(err))
	}
	return plans, nil
}

// Plan implements quota.Plans.
func (s *Store) Plan(ctx context.Context, name string) (quota.Plan, error) {
	var p quota.Plan
	if err := s.pool.QueryRow(ctx, selectPlan, name).Scan(&p.Name, &p.Limits); err != nil {
		return quota.Plan{}, translate(err)
	}
	return p, nil
}

// PutPlan implements quota.Plans.
func (s *Store) PutPlan(ctx context.Context, p quota.Plan) error {
	_, err := s.pool.Exec(ctx, upsertPlan, p.Name, p.Limits)
	return translate(err)
}

// DeletePlan implements quota.Plans. The subjects' foreign key refuses
// the delete of a plan some subject has (quota.ErrConflict).
func (s *Store) DeletePlan(ctx context.Context, name string) (quota.Plan, error) {
	var p quota.Plan
	err := s.pool.QueryRow(ctx, `DELETE FROM plans WHERE name = $1 RETURNING name, limits`, name).Scan(&p.Name, &p.Limits)
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23503" { // foreign_key_violation
		return quota.Plan{}, fmt.Errorf("plan %q is the plan of some subjects; move them to another plan first: %w", name, quota.ErrConflict)
	}
	return p, translate(err)
}

// Subject implements quota.Subjects.
func (s *Store) Subject(ctx context.Context, id string) (quota.Subject, error) {
	return scanSubject(s.pool.QueryRow(ctx, selectSubject, id))
}

// ProvisionSubject implements quota.Subjects.
func (s *Store) ProvisionSubject(ctx context.Context, sub quota.Subject) (quota.Subject, error) {
	return scanSubject(s.pool.QueryRow(ctx, provisionSubject, sub.ID, sub.Plan, sub.CycleAnchor, overrides(sub)))
}

// PutSubject implements quota.Subjects.
func (s *Store) PutSubject(ctx context.Context, sub quota.Subject) error {
	_, err := s.pool.Exec(ctx, upsertSubject, sub.ID, sub.Plan, sub.CycleAnchor, overrides(sub))
	return translate(err)
}

// StaleSubjects lists subjects whose settings changed here since Redis's
// copy was last dropped or written (see the l2_stale column).
func (s *Store) StaleSubjects(ctx context.Context) ([]quota.Subject, error) {
	rows, err := s.pool.Query(ctx, selectStaleSubjects)
	if err != nil {
		return nil, translate(err)
	}
	subs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.Subject, error) { return scanSubject(r) })
	return subs, translate(err)
}

// SubjectsSynced marks subjects as matching Redis again, those whose row
// still holds the given settings.
func (s *Store) SubjectsSynced(ctx context.Context, subs []quota.Subject) error {
	ids, plans, anchors, overs := make([]string, len(subs)), make([]string, len(subs)), make([]time.Time, len(subs)), make([]string, len(subs))
	for i, sub := range subs {
		raw, err := json.Marshal(overrides(sub))
		if err != nil {
			return err
		}
		ids[i], plans[i], anchors[i], overs[i] = sub.ID, sub.Plan, sub.CycleAnchor, string(raw)
	}
	_, err := s.pool.Exec(ctx, subjectsSyncedSQL, ids, plans, anchors, overs)
	return translate(err)
}

func overrides(sub quota.Subject) map[string]quota.Limit {
	if sub.Overrides == nil {
		return map[string]quota.Limit{}
	}
	return sub.Overrides
}

func scanSubject(row pgx.Row) (quota.Subject, error) {
	var sub quota.Subject
	var anchor time.Time
	if err := row.Scan(&sub.ID, &sub.Plan, &anchor, &sub.Overrides); err != nil {
		return quota.Subject{}, translate(err)
	}
	sub.CycleAnchor = anchor.UTC()
	if len(sub.Overrides) == 0 {
		sub.Overrides = nil
	}
	return sub, nil
}

// Prices implements quota.Prices.
func (s *Store) Prices(ctx context.Context) ([]quota.Price, error) {
	rows, err := s.pool.Query(ctx, selectPrices)
	if err != nil {
		return nil, fmt.Errorf("select prices: %w", translate(err))
	}
	prices, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.Price, error) {
		var p quota.Price
		var in, out, cw, cr string
		if err := r.Scan(&p.Model, &in, &out, &cw, &cr); err != nil {
			return p, err
		}
		for _, f := range []struct {
			dst *quota.Decimal
			src string
		}{{&p.Input, in}, {&p.Output, out}, {&p.CacheWrite, cw}, {&p.CacheRead, cr}} {
			d, err := quota.ParseDecimal(f.src)
			if err != nil {
				return p, fmt.Errorf("price of %s: %w", p.Model, err)
			}
			*f.dst = d
		}
		return p, nil
	})
	if err != nil {
		return nil, fmt.Errorf("select prices: %w", translate(err))
	}
	return prices, nil
}

// PutPrice implements quota.Prices.
func (s *Store) PutPrice(ctx context.Context, p quota.Price) error {
	_, err := s.pool.Exec(ctx, upsertPrice, p.Model, p.Input.String(), p.Output.String(), p.CacheWrite.String(), p.CacheRead.String())
	return translate(err)
}

// DeletePrice implements quota.Prices.
func (s *Store) DeletePrice(ctx context.Context, model string) (quota.Price, error) {
	var p quota.Price
	var in, out, cw, cr string
	err := s.pool.QueryRow(ctx, `DELETE FROM prices WHERE model = $1 RETURNING model, input::text, output::text, cache_write::text, cache_read::text`, model).
		Scan(&p.Model, &in, &out, &cw, &cr)
	if err != nil {
		return quota.Price{}, translate(err)
	}
	for _, f := range []struct {
		dst *quota.Decimal
		src string
	}{{&p.Input, in}, {&p.Output, out}, {&p.CacheWrite, cw}, {&p.CacheRead, cr}} {
		if *f.dst, err = quota.ParseDecimal(f.src); err != nil {
			return quota.Price{}, fmt.Errorf("price of %s: %w", p.Model, err)
		}
	}
	return p, nil
}
