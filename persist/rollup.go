package persist

// subject_usage (migration 00012) is the listing's index of each subject's
// newest counter per meter. It is a rollup kept off the write path: a
// trigger on counters made every flush write it inside the flush's
// transaction, once per counter per flush, and that was most of a flush's
// cost. Now every writer of counters marks the (subject, meter) pairs it
// wrote, and RunRollup writes the marked pairs from counters once per
// interval (in chunks, see Rollup), however many flushes wrote them
// meanwhile.
//
// Invariants:
//  1. A pair is marked after its write returned (committed or outcome
//     unknown), so a rollup that takes the mark reads the write or a later
//     state; a failed rollup marks again what it did not write.
//  2. subject_usage never goes back in time: rollups and the limit
//     triggers (migration 00013) serialize on one advisory lock, and a
//     rollup reads counters only after taking it, so each writes what the
//     one before it read or newer.
//  3. Marks live in memory: an instance that dies loses those not rolled
//     up yet. At start, a rollup takes every counter written in the last
//     RollupCatchUp, which covers an instance killed and restarted.
//
// So the listing's order and membership trail counters by one interval (a
// listed subject's numbers are live: they come from the cache tiers).

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/internal/periodic"
)

// rollupLock is the key of the advisory lock rollups and the limit
// triggers take; migration 00013 spells the same number.
const rollupLock = 126943148143457

// RollupCatchUp is how far back the rollup at start looks in counters.
const RollupCatchUp = time.Hour

const (
	// rollupSQL writes the newest period of each marked (subject, meter)
	// from counters, in key order (the order the limit triggers lock rows
	// in), and only rows that change.
	rollupSQL = `INSERT INTO subject_usage AS u (subject, meter, period_start, period_end, used, lim)
		SELECT DISTINCT ON (c.subject, c.meter) c.subject, c.meter, c.period_start, c.period_end, c.used,
			COALESCE(s.overrides -> c.meter ->> 'limit', p.limits -> c.meter ->> 'limit')::bigint
		FROM unnest($1::text[], $2::text[]) AS k(subject, meter)
		JOIN counters c ON c.subject = k.subject AND c.meter = k.meter
		LEFT JOIN subjects s ON s.subject = c.subject
		LEFT JOIN plans p ON p.name = s.plan
		ORDER BY c.subject, c.meter, c.period_start DESC
		ON CONFLICT (subject, meter) DO UPDATE SET period_start = EXCLUDED.period_start,
			period_end = EXCLUDED.period_end, used = EXCLUDED.used, lim = EXCLUDED.lim
			WHERE EXCLUDED.period_start >= u.period_start
				AND (u.period_start, u.period_end, u.used, u.lim) IS DISTINCT FROM
					(EXCLUDED.period_start, EXCLUDED.period_end, EXCLUDED.used, EXCLUDED.lim)`

	// recentCountersSQL: the (subject, meter) pairs written since $1.
	recentCountersSQL = `SELECT DISTINCT subject, meter FROM counters WHERE updated_at >= $1`
)

// usagePair is a (subject, meter) whose counters changed.
type usagePair struct{ subject, meter string }

// usageMarks is the set of pairs written since the last rollup.
type usageMarks struct {
	mu    sync.Mutex
	pairs map[usagePair]struct{}
}

func (m *usageMarks) mark(subject, meter string) {
	m.mu.Lock()
	if m.pairs == nil {
		m.pairs = map[usagePair]struct{}{}
	}
	m.pairs[usagePair{subject, meter}] = struct{}{}
	m.mu.Unlock()
}

// take empties the set and answers what it held.
func (m *usageMarks) take() map[usagePair]struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.pairs
	m.pairs = nil
	return p
}

// RunRollup writes the marked pairs into subject_usage every interval until
// ctx ends, after catching up on the counters written in the last
// RollupCatchUp. On shutdown quotad calls Rollup once more after the
// flusher drained, so that the drain's pairs are not left to the next
// instance's catch-up.
func (s *Store) RunRollup(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if err := s.RollupSince(ctx, time.Now().Add(-RollupCatchUp)); err != nil && ctx.Err() == nil {
		log.Warn("subject_usage: catching up failed; the listing may miss recent usage until it is written again", "err", err)
	}
	periodic.Run(ctx, interval, func() {
		if err := s.Rollup(ctx); err != nil && ctx.Err() == nil {
			log.Warn("subject_usage: rollup failed; retried at the next interval", "err", err)
		}
	})
}

// RollupSince marks every pair whose counters were written since since
// (read from counters, not from this instance's marks) and rolls them up.
func (s *Store) RollupSince(ctx context.Context, since time.Time) error {
	rows, err := s.pool.Query(ctx, recentCountersSQL, since)
	if err != nil {
		return err
	}
	var p usagePair
	if _, err := pgx.ForEachRow(rows, []any{&p.subject, &p.meter}, func() error {
		s.marks.mark(p.subject, p.meter)
		return nil
	}); err != nil {
		return err
	}
	return s.Rollup(ctx)
}

// Rollup writes the pairs marked so far into subject_usage now.
func (s *Store) Rollup(ctx context.Context) error {
	pairs := s.marks.take()
	if len(pairs) == 0 {
		return nil
	}
	sorted := make([]usagePair, 0, len(pairs))
	for p := range pairs {
		sorted = append(sorted, p)
	}
	// Key order (the statement's DISTINCT ON sorts too; sorting here keeps
	// the arrays, and so the plan, the same for the same set).
	slices.SortFunc(sorted, func(a, b usagePair) int {
		if c := strings.Compare(a.subject, b.subject); c != 0 {
			return c
		}
		return strings.Compare(a.meter, b.meter)
	})
	// In chunks, a transaction each with a pause between: a Postgres
	// sharing quotad's cores then has a few milliseconds of work at a time
	// instead of every subject's at once while requests wait (as the
	// flusher's pacer does for its COPY).
	for len(sorted) > 0 {
		n := min(len(sorted), rollupChunk)
		if err := s.rollupChunk(ctx, sorted[:n]); err != nil {
			for _, p := range sorted {
				s.marks.mark(p.subject, p.meter)
			}
			return fmt.Errorf("subject_usage rollup: %w", translate(err))
		}
		sorted = sorted[n:]
		if len(sorted) > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}

// rollupChunk is the pairs a rollup writes in one transaction.
const rollupChunk = 128

func (s *Store) rollupChunk(ctx context.Context, pairs []usagePair) error {
	subjects, meters := make([]string, len(pairs)), make([]string, len(pairs))
	for i, p := range pairs {
		subjects[i], meters[i] = p.subject, p.meter
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(rollupLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, rollupSQL, subjects, meters)
		return err
	})
}
