package persist_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// TestResetCutsALateBatch: a counter counts only the events after its
// last reset in the pending stream, whatever the order the flushes bring
// them in. A batch of events from before a reset that reaches Postgres
// after it (replayed after a crash, claimed from a dead flusher, or
// written by a slower flusher) adds nothing; a batch straddling it adds
// only what came after it; and a reset taken on the direct path cuts by
// its time.
func TestResetCutsALateBatch(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	base := time.Now().Add(-time.Hour).UnixMilli()
	n := 0
	for _, c := range []struct {
		name    string
		batches [][]string // each event: kind at stream position (ms after base), amount
		want    int64
	}{
		{name: "pre-reset batch after the reset", batches: [][]string{{"reset@200", "consume@300:2"}, {"consume@100:5"}}, want: 2},
		{name: "straddling batch after the reset", batches: [][]string{{"reset@200", "consume@300:2"}, {"consume@100:5", "consume@250:3"}}, want: 5},
		{name: "older reset replayed after a newer one", batches: [][]string{{"reset@200", "consume@300:2"}, {"consume@50:1", "reset@100", "consume@150:4"}}, want: 2},
		{name: "in order", batches: [][]string{{"consume@100:5"}, {"reset@200"}, {"consume@300:2"}}, want: 2},
		{name: "one batch", batches: [][]string{{"consume@100:5", "reset@200", "consume@300:2"}}, want: 2},
		{name: "direct reset", batches: [][]string{{"consume@100:5", "direct@200", "consume@300:2"}, {"consume@150:7"}}, want: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			key := monthKey
			key.Subject = fmt.Sprintf("user:reset-order-%d", n)
			n++
			for b, batch := range c.batches {
				var evs []quota.Event
				for i, spec := range batch {
					var kind string
					var at, amount int64
					if _, err := fmt.Sscanf(spec, "consume@%d:%d", &at, &amount); err == nil {
						kind = "consume"
					} else if _, err := fmt.Sscanf(spec, "reset@%d", &at); err == nil {
						kind = "reset"
					} else if _, err := fmt.Sscanf(spec, "direct@%d", &at); err == nil {
						// A reset on the direct path at that moment, between the
						// flushes of the batch's events around it.
						if err := f.Write(ctx, evs); err != nil {
							t.Fatal(err)
						}
						evs = nil
						if err := st.Reset(ctx, key, time.UnixMilli(base+at)); err != nil {
							t.Fatal(err)
						}
						continue
					} else {
						t.Fatalf("bad spec %q", spec)
					}
					evs = append(evs, quota.Event{ID: fmt.Sprintf("%s-%d-%d", key.Subject, b, i), Ref: fmt.Sprintf("%d-0", base+at),
						Kind: quota.EventKind(kind), Subject: key.Subject, Meter: key.Meter, Start: key.Start, End: key.End,
						Amount: amount, At: time.UnixMilli(base + at)})
				}
				if err := f.Write(ctx, evs); err != nil {
					t.Fatal(err)
				}
			}
			if used, _, err := st.Stored(ctx, key); err != nil || used != c.want {
				t.Fatalf("counter %d (%v), want %d", used, err, c.want)
			}
		})
	}
}

// TestUsageFollowsTheDirectAnchor: a subject provisioned in Redis by one
// instance (anchor a1, its provisioning event not flushed yet) and on
// another instance's direct path (anchor a2, Postgres has no row yet)
// keeps Postgres's row, and the usage Redis counted under a1's month
// moves to a2's month when flushed, its counter marked stale (Redis's
// copy lacks it): one subject, one anchor, all its usage in its view.
func TestUsageFollowsTheDirectAnchor(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	a1 := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	a2 := a1.Add(5 * time.Second)
	sub := quota.Subject{ID: "user:two-anchors", Plan: "free", CycleAnchor: a2}
	if _, err := st.ProvisionSubject(ctx, sub); err != nil {
		t.Fatal(err)
	}
	at := a2.Add(10 * time.Second)
	s2, e2 := quota.PeriodMonth.Window(a2, at)
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: quota.CounterKey{Subject: sub.ID, Meter: "credits", Start: s2, End: e2},
		Amount: 7, EventID: "direct-1", At: at}); err != nil {
		t.Fatal(err)
	}
	s1, e1 := quota.PeriodMonth.Window(a1, at)
	redis1 := sub
	redis1.CycleAnchor = a1
	if err := f.Write(ctx, []quota.Event{
		{ID: "prov-1", Kind: quota.EventProvision, Subject: sub.ID, At: a1, Settings: &redis1},
		{ID: "redis-1", Kind: quota.EventConsume, Subject: sub.ID, Meter: "credits", Start: s1, End: e1, Amount: 3, At: a1.Add(time.Second)},
		{ID: "redis-2", Kind: quota.EventConsume, Subject: sub.ID, Meter: "credits", Start: s1, End: e1, Amount: 4, At: at},
	}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Subject(ctx, sub.ID)
	if err != nil || !got.CycleAnchor.Equal(a2) {
		t.Fatalf("anchor %v (%v), want postgres's %v", got.CycleAnchor, err, a2)
	}
	var rows int
	var used int64
	var stale bool
	if err := st.Pool().QueryRow(ctx, `SELECT count(*), max(used), bool_or(l2_stale) FROM counters WHERE subject = $1`, sub.ID).Scan(&rows, &used, &stale); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || used != 14 || !stale {
		t.Fatalf("%d counter rows, used %d, stale %v; want one row of a2's month with 7 + 3 + 4, marked stale", rows, used, stale)
	}
}
