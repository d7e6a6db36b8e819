package persist

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/quota"
)

var _ quota.Reports = (*Store)(nil)

// Subject ids are compared byte by byte (COLLATE "C", the index of
// migration 00011): a prefix is then the range [prefix, prefix+1), and
// the order does not depend on the database's collation. Every character
// a subject may hold is below 0x7f, so "\x7f" bounds them all.
const (
	listSubjectsByIDSQL = `SELECT subject FROM subjects
		WHERE subject COLLATE "C" >= $1 AND subject COLLATE "C" < $2 AND subject COLLATE "C" > $3
		ORDER BY subject COLLATE "C" LIMIT $4`

	// Subjects by usage (share) come in two parts. First those with a
	// positive count (share) in the period holding $2, most first, from
	// subject_usage's index, scanned backwards: ties go by id from the
	// last, which makes the keyset (key, subject) < cursor an index range.
	// Then every other subject (nothing used this period, or no limit for
	// the meter, or not flushed yet), by id from the first. Neither reads
	// more rows than the page and the subjects it skips over.
	listSubjectsByUsedSQL = `SELECT subject, used, share FROM subject_usage
		WHERE meter = $1 AND used > 0 AND period_start <= $2 AND (period_end IS NULL OR period_end > $2)
			AND subject COLLATE "C" >= $3 AND subject COLLATE "C" < $4
			AND (used, subject COLLATE "C") < ($5::bigint, $6 COLLATE "C")
		ORDER BY used DESC, subject COLLATE "C" DESC LIMIT $7`
	listSubjectsByShareSQL = `SELECT subject, used, share FROM subject_usage
		WHERE meter = $1 AND share > 0 AND period_start <= $2 AND (period_end IS NULL OR period_end > $2)
			AND subject COLLATE "C" >= $3 AND subject COLLATE "C" < $4
			AND (share, subject COLLATE "C") < ($5::float8, $6 COLLATE "C")
		ORDER BY share DESC, subject COLLATE "C" DESC LIMIT $7`
	listUnusedSQL = `SELECT s.subject FROM subjects s
		WHERE s.subject COLLATE "C" >= $3 AND s.subject COLLATE "C" < $4 AND s.subject COLLATE "C" > $5
			AND NOT EXISTS (SELECT 1 FROM subject_usage u WHERE u.subject = s.subject AND u.meter = $1
				AND %s > 0 AND u.period_start <= $2 AND (u.period_end IS NULL OR u.period_end > $2))
		ORDER BY s.subject COLLATE "C" LIMIT $6`

	// dailyUsageSQL sums consumes per UTC day (resets set a counter to 0
	// but take nothing back from the days before), saturating at the int64
	// range (a sum of bigints is a numeric).
	dailyUsageSQL = `SELECT date_trunc('day', created_at AT TIME ZONE 'UTC') AS day,
			LEAST(sum(amount), 9223372036854775807)::bigint
		FROM usage_ledger
		WHERE subject = $1 AND created_at >= $3 AND created_at < $4 AND meter = $2 AND kind = 'consume'
		GROUP BY 1`

	// Latest first: by time, then by id for events of the same instant.
	// $2: every meter when empty; $3: the first page, else before ($4, $5).
	ledgerSQL = `SELECT event_id, kind, meter, amount, period_start, COALESCE(mode, ''), COALESCE(model, ''),
			COALESCE(idempotency_key, ''), COALESCE(reservation_id, ''), created_at
		FROM usage_ledger
		WHERE subject = $1 AND ($2 = '' OR meter = $2)
			AND ($3 OR (created_at, event_id) < ($4, $5))
		ORDER BY created_at DESC, event_id DESC LIMIT $6`
)

// ListSubjects implements quota.Reports.
func (s *Store) ListSubjects(ctx context.Context, q quota.SubjectQuery) ([]quota.SubjectPosition, error) {
	lo, hi := q.Prefix, "\x7f"
	if q.Prefix != "" {
		b := []byte(q.Prefix)
		b[len(b)-1]++
		hi = string(b)
	}
	var after quota.SubjectPosition
	if q.After != nil {
		after = *q.After
	}
	if q.Order == quota.OrderID {
		rows, err := s.pool.Query(ctx, listSubjectsByIDSQL, lo, hi, after.Subject, q.Limit)
		if err != nil {
			return nil, fmt.Errorf("list subjects: %w", translate(err))
		}
		out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.SubjectPosition, error) {
			var p quota.SubjectPosition
			err := r.Scan(&p.Subject)
			return p, err
		})
		return out, translate(err)
	}
	var out []quota.SubjectPosition
	used := q.Order == quota.OrderUsed
	if (used && (q.After == nil || after.Used > 0)) || (!used && (q.After == nil || after.Share > 0)) {
		sql, key := listSubjectsByUsedSQL, any(int64(math.MaxInt64))
		if !used {
			sql, key = listSubjectsByShareSQL, math.Inf(1)
		}
		last := "\x7f"
		if q.After != nil {
			key, last = after.Used, after.Subject
			if !used {
				key = after.Share
			}
		}
		rows, err := s.pool.Query(ctx, sql, q.Meter, q.Now, lo, hi, key, last, q.Limit)
		if err != nil {
			return nil, fmt.Errorf("list subjects: %w", translate(err))
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.SubjectPosition, error) {
			var p quota.SubjectPosition
			err := r.Scan(&p.Subject, &p.Used, &p.Share)
			return p, err
		})
		if err != nil {
			return nil, fmt.Errorf("list subjects: %w", translate(err))
		}
		if len(out) == q.Limit {
			return out, nil
		}
		after.Subject = ""
	}
	// The rest, with a key of 0: their place in the second part.
	column := "u.used"
	if !used {
		column = "u.share"
	}
	rows, err := s.pool.Query(ctx, fmt.Sprintf(listUnusedSQL, column), q.Meter, q.Now, lo, hi, after.Subject, q.Limit-len(out))
	if err != nil {
		return nil, fmt.Errorf("list subjects: %w", translate(err))
	}
	rest, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.SubjectPosition, error) {
		var p quota.SubjectPosition
		err := r.Scan(&p.Subject)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("list subjects: %w", translate(err))
	}
	return append(out, rest...), nil
}

// DailyUsage implements quota.Reports.
func (s *Store) DailyUsage(ctx context.Context, subject, meter string, from, to time.Time) (map[time.Time]int64, error) {
	rows, err := s.pool.Query(ctx, dailyUsageSQL, subject, meter, from, to)
	if err != nil {
		return nil, fmt.Errorf("daily usage: %w", translate(err))
	}
	defer rows.Close()
	out := map[time.Time]int64{}
	for rows.Next() {
		var day time.Time
		var sum int64
		if err := rows.Scan(&day, &sum); err != nil {
			return nil, fmt.Errorf("daily usage: %w", translate(err))
		}
		out[time.Date(day.Year(), day.Month(), day.Day(), 0, 0, 0, 0, time.UTC)] = sum
	}
	return out, translate(rows.Err())
}

// Ledger implements quota.Reports.
func (s *Store) Ledger(ctx context.Context, q quota.LedgerQuery) ([]quota.LedgerEvent, error) {
	var before quota.LedgerPosition
	if q.Before != nil {
		before = *q.Before
	}
	rows, err := s.pool.Query(ctx, ledgerSQL, q.Subject, q.Meter, q.Before == nil, before.At, before.EventID, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", translate(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.LedgerEvent, error) {
		var e quota.LedgerEvent
		err := r.Scan(&e.EventID, &e.Kind, &e.Meter, &e.Amount, &e.PeriodStart, &e.Mode, &e.Model,
			&e.IdempotencyKey, &e.ReservationID, &e.At)
		e.PeriodStart, e.At = e.PeriodStart.UTC(), e.At.UTC()
		return e, err
	})
	return out, translate(err)
}
