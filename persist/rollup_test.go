package persist_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// rolledUp reads subject's credits row of subject_usage: used and lim
// (-1 for none), and whether there is a row.
func rolledUp(tb testing.TB, st *persist.Store, subject string) (used, lim int64, ok bool) {
	tb.Helper()
	err := st.Pool().QueryRow(context.Background(),
		`SELECT used, coalesce(lim, -1) FROM subject_usage WHERE subject = $1 AND meter = 'credits'`, subject).Scan(&used, &lim)
	if err == pgx.ErrNoRows {
		return 0, 0, false
	}
	if err != nil {
		tb.Fatal(err)
	}
	return used, lim, true
}

// TestRollup: what the flusher, the direct path and resets write reaches
// subject_usage at the next rollup, not before; a limit change reaches it
// at once; counters another instance wrote are caught up by RollupSince.
func TestRollup(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	at := time.Now().UTC()
	ev := func(id string, amount int64) quota.Event {
		return quota.Event{ID: id, Kind: quota.EventConsume, Subject: "user:r1", Meter: "credits",
			Start: monthKey.Start, End: monthKey.End, Amount: amount, At: at}
	}
	if err := f.Write(ctx, []quota.Event{ev("ev-1", 4), ev("ev-2", 3)}); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := rolledUp(t, st, "user:r1"); ok {
		t.Fatal("subject_usage written inside the flush; want it at the rollup")
	}
	if err := st.Rollup(ctx); err != nil {
		t.Fatal(err)
	}
	if used, lim, ok := rolledUp(t, st, "user:r1"); !ok || used != 7 || lim != -1 {
		t.Fatalf("after a flush: used %d lim %d (row %v), want 7 and no limit", used, lim, ok)
	}

	// A subject on a plan: its limit is written at once.
	if err := st.PutSubject(ctx, quota.Subject{ID: "user:r1", Plan: "pro", CycleAnchor: at}); err != nil {
		t.Fatal(err)
	}
	if _, lim, _ := rolledUp(t, st, "user:r1"); lim != 10_000 {
		t.Fatalf("after the plan change: lim %d, want pro's 10000", lim)
	}

	key := quota.CounterKey{Subject: "user:r1", Meter: "credits", Start: monthKey.Start, End: monthKey.End}
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 5, EventID: quota.NewEventID(at), At: at}); err != nil {
		t.Fatal(err)
	}
	if err := st.Rollup(ctx); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := rolledUp(t, st, "user:r1"); used != 12 {
		t.Fatalf("after a direct consume: used %d, want 12", used)
	}
	if err := st.Reset(ctx, key, at); err != nil {
		t.Fatal(err)
	}
	if err := st.Rollup(ctx); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := rolledUp(t, st, "user:r1"); used != 0 {
		t.Fatalf("after a reset: used %d, want 0", used)
	}

	// Another instance's flush: its marks are not ours.
	other, err := persist.Open(ctx, st.Pool().Config().ConnString(), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	late := ev("ev-3", 9)
	late.At = at.Add(time.Second) // after the reset
	if err := persist.NewFlusher(other, nil, persist.FlusherConfig{}).Write(ctx, []quota.Event{late}); err != nil {
		t.Fatal(err)
	}
	if err := st.Rollup(ctx); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := rolledUp(t, st, "user:r1"); used != 0 {
		t.Fatalf("another instance's write rolled up by this one: used %d", used)
	}
	if err := st.RollupSince(ctx, at.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := rolledUp(t, st, "user:r1"); used != 9 {
		t.Fatalf("after catching up: used %d, want 9", used)
	}
}

// TestRollupReadsAfterTheLock: a rollup waits for the one before it (or a
// limit trigger) and then reads counters, so it writes what committed
// meanwhile, never an older count over a newer one.
func TestRollupReadsAfterTheLock(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	at := time.Now().UTC()
	key := quota.CounterKey{Subject: "user:r2", Meter: "credits", Start: monthKey.Start, End: monthKey.End}
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 5, EventID: quota.NewEventID(at), At: at}); err != nil {
		t.Fatal(err)
	}
	// Another rollup holds the lock, and a write commits before it ends.
	tx, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(persist.RollupLock)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.Rollup(ctx) }()
	select {
	case err := <-done:
		t.Fatalf("the rollup did not wait for the lock: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := tx.Exec(ctx, `UPDATE counters SET used = 50 WHERE subject = 'user:r2'`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if used, _, _ := rolledUp(t, st, "user:r2"); used != 50 {
		t.Fatalf("rolled up %d, want 50: the rollup read counters before it had the lock", used)
	}
}
