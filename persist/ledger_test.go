package persist_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// TestLedgerPartitions: the ledger has a partition for this month and the
// next ones; an event id is written once in a month's partition as in the
// default one (a replay of it is recognized); and retention drops whole
// months past it, their rows with them, leaving the counters alone.
func TestLedgerPartitions(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	now := time.Now().UTC()
	month := func(back int) time.Time {
		return time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -back, 0)
	}
	partitions := func() []string {
		t.Helper()
		rows, err := st.Pool().Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'usage_ledger'::regclass ORDER BY 1`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var names []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
		return names
	}
	name := func(m time.Time) string { return "usage_ledger_" + m.Format("2006_01") }
	for i := 0; i <= persist.LedgerMonthsAhead; i++ {
		if m := month(-i); !slices.Contains(partitions(), name(m)) {
			t.Fatalf("no partition %s after the migration: %v", name(m), partitions())
		}
	}

	// Five months back: the default partition holds that month's events
	// until the month has a partition of its own.
	old := month(5).Add(36 * time.Hour)
	if _, err := st.EnsureLedgerPartitions(ctx, month(3), 0); err != nil {
		t.Fatal(err)
	}
	key := quota.CounterKey{Subject: "user:ledger-months", Meter: "credits", Start: month(5), End: month(-1)}
	consume := func(id string, at time.Time) {
		t.Helper()
		for range 2 { // the second is a replay: written once
			if _, err := st.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 2, EventID: id, At: at}); err != nil {
				t.Fatalf("consume %s at %s: %v", id, at, err)
			}
		}
	}
	consume("ev-old", old)
	consume("ev-three", month(3).Add(time.Hour))
	consume("ev-now", now)
	var used, rows int64
	count := func() {
		t.Helper()
		if err := st.Pool().QueryRow(ctx, `SELECT used FROM counters WHERE subject = $1`, key.Subject).Scan(&used); err != nil {
			t.Fatal(err)
		}
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger WHERE subject = $1`, key.Subject).Scan(&rows); err != nil {
			t.Fatal(err)
		}
	}
	count()
	if used != 6 || rows != 3 {
		t.Fatalf("three events, each consumed twice: counter %d, %d ledger rows; want 6, 3", used, rows)
	}
	var where string
	if err := st.Pool().QueryRow(ctx, `SELECT tableoid::regclass::text FROM usage_ledger WHERE event_id = 'ev-three'`).Scan(&where); err != nil || where != name(month(3)) {
		t.Fatalf("ev-three is in %q (%v), want %s", where, err, name(month(3)))
	}

	// Keep this month and the one before: the partitions of months 3 to 1
	// back go, and the default partition's old row.
	dropped, err := st.EnsureLedgerPartitions(ctx, now, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{name(month(3)), name(month(2))}
	slices.Sort(dropped)
	if !slices.Equal(dropped, want) {
		t.Fatalf("retention of 2 months dropped %v, want %v", dropped, want)
	}
	count()
	if used != 6 || rows != 1 {
		t.Fatalf("after the retention: counter %d, %d ledger rows; want 6 (counters stay), 1 (this month's)", used, rows)
	}
	if got := partitions(); slices.Contains(got, name(month(3))) || !slices.Contains(got, name(month(1))) || !slices.Contains(got, name(month(0))) {
		t.Fatalf("partitions after the retention: %v", got)
	}
}
