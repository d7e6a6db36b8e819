package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// BenchmarkListSubjects measures the listing's Postgres query, one page of
// 50, over 100,000 subjects (a third each anonymous, free and pro), each
// with a counter in the current month and one in the month before.
func BenchmarkListSubjects(b *testing.B) {
	st := newStore(b)
	ctx := context.Background()
	now := time.Date(2026, 11, 15, 12, 0, 0, 0, time.UTC)
	seedSubjects(b, st, 100_000, now)
	middle := quota.SubjectPosition{Subject: "user:050000", Used: 1500, Share: 0.5}
	// The second part of a listing by usage: subjects that used nothing
	// this period, which here are few among many that did (the worst case).
	rest := quota.SubjectPosition{Subject: "anon:000000"}
	for _, bc := range []struct {
		name string
		q    quota.SubjectQuery
	}{
		{"id/first", quota.SubjectQuery{Order: quota.OrderID}},
		{"id/middle", quota.SubjectQuery{Order: quota.OrderID, After: &middle}},
		{"id/prefix", quota.SubjectQuery{Order: quota.OrderID, Prefix: "user:0123"}},
		{"used/first", quota.SubjectQuery{Order: quota.OrderUsed}},
		{"used/middle", quota.SubjectQuery{Order: quota.OrderUsed, After: &middle}},
		{"used/prefix", quota.SubjectQuery{Order: quota.OrderUsed, Prefix: "user:0123"}},
		{"used/rest", quota.SubjectQuery{Order: quota.OrderUsed, After: &rest}},
		{"share/first", quota.SubjectQuery{Order: quota.OrderShare}},
		{"share/middle", quota.SubjectQuery{Order: quota.OrderShare, After: &middle}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			q := bc.q
			q.Meter, q.Limit, q.Now = quota.DefaultMeter, 51, now
			for b.Loop() {
				pos, err := st.ListSubjects(ctx, q)
				if err != nil {
					b.Fatal(err)
				}
				if len(pos) == 0 {
					b.Fatal("empty page")
				}
			}
		})
	}
}

// seedSubjects stores n subjects ("anon:" or "user:" and six digits), with
// pseudo-random usage of credits in the month holding now and the month
// before.
func seedSubjects(tb testing.TB, st *persist.Store, n int, now time.Time) {
	tb.Helper()
	ctx := context.Background()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO subjects (subject, plan, cycle_anchor)
			SELECT (CASE i % 3 WHEN 0 THEN 'anon:' ELSE 'user:' END) || lpad(i::text, 6, '0'),
				(CASE i % 3 WHEN 0 THEN 'anonymous' WHEN 1 THEN 'free' ELSE 'pro' END), $1
			FROM generate_series(1, $2::int) AS i`, []any{start, n}},
		{`INSERT INTO counters (subject, meter, period_start, period_end, used)
			SELECT subject, 'credits', $1, $2, abs(hashtext(subject)) % 3000 FROM subjects`, []any{start, start.AddDate(0, 1, 0)}},
		{`INSERT INTO counters (subject, meter, period_start, period_end, used)
			SELECT subject, 'credits', $1, $2, abs(hashtext(subject || 'x')) % 3000 FROM subjects`, []any{start.AddDate(0, -1, 0), start}},
	} {
		if _, err := st.Pool().Exec(ctx, s.sql, s.args...); err != nil {
			tb.Fatal(err)
		}
	}
	// The counters written here go into the listing's rollup as quotad's
	// would.
	if err := st.RollupSince(ctx, time.Now().Add(-time.Hour)); err != nil {
		tb.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `ANALYZE subjects, counters, subject_usage, usage_ledger`); err != nil {
		tb.Fatal(err)
	}
}
