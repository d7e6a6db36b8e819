package persist_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// newStore returns a migrated, seeded store on a database of its own.
func newStore(tb testing.TB) *persist.Store {
	tb.Helper()
	ctx := context.Background()
	st, err := persist.Open(ctx, testenv.PostgresURL(tb), 128)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := st.Seed(ctx, quota.DefaultPlans(), quota.DefaultPrices()); err != nil {
		tb.Fatal(err)
	}
	return st
}

var monthKey = quota.CounterKey{
	Subject: "user:1", Meter: "credits",
	Start: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC),
}

func TestMigrateConcurrently(t *testing.T) {
	url := testenv.PostgresURL(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			st, err := persist.Open(ctx, url, 4)
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			errs <- st.Migrate(ctx)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent migrate: %v", err)
		}
	}
}

// TestEnforceConcurrent runs 100 goroutines consuming in enforce mode; the
// accepted amounts must add up to the limit exactly.
func TestEnforceConcurrent(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	const limit = 1000
	var accepted atomic.Int64
	var wg sync.WaitGroup
	for g := range 100 {
		wg.Go(func() {
			for i := range 30 {
				amount := int64(1 + (g+i)%7)
				res, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: amount, Enforce: true, Limit: limit,
					EventID: fmt.Sprintf("e-%d-%d", g, i), At: time.Now()})
				if err != nil {
					t.Error(err)
					return
				}
				if res.Applied {
					accepted.Add(amount)
				}
				if res.Used > limit {
					t.Errorf("used %d past the limit %d", res.Used, limit)
				}
			}
		})
	}
	wg.Wait()
	tally, err := st.Used(ctx, quota.UsageRead{Key: monthKey})
	used := tally.Used
	if err != nil {
		t.Fatal(err)
	}
	if accepted.Load() != used {
		t.Fatalf("accepted %d, counter says %d", accepted.Load(), used)
	}
	// 3,000 consumes averaging 4 units asked for ~12,000: the limit must be
	// reached exactly, not approximately, unless the remaining gap is smaller
	// than every amount still being asked for, which the 1-unit asks rule out.
	if used != limit {
		t.Fatalf("used %d, want exactly %d", used, limit)
	}
	var ledger int64
	if err := st.Pool().QueryRow(ctx, `SELECT coalesce(sum(amount), 0) FROM usage_ledger WHERE subject = $1`, monthKey.Subject).Scan(&ledger); err != nil {
		t.Fatal(err)
	}
	if ledger != limit {
		t.Fatalf("ledger sums to %d, want %d", ledger, limit)
	}
}

func TestRecordPastLimit(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for i := range 3 {
		res, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 600, Limit: 1000, EventID: fmt.Sprint(i), At: time.Now()})
		if err != nil || !res.Applied {
			t.Fatalf("record %d: %+v, %v", i, res, err)
		}
	}
	res, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 1, Enforce: true, Limit: 1000, EventID: "x", At: time.Now()})
	if err != nil || res.Applied || res.Used != 1800 {
		t.Fatalf("enforce past the limit: %+v, %v; want rejected with used 1800", res, err)
	}
}

// TestIdempotencyConcurrent sends one idempotency key from 50 goroutines:
// it must count once and every answer must be the first one.
func TestIdempotencyConcurrent(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	var firsts atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			res, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 7, Limit: 1000, IdempotencyKey: "req-1",
				RequestHash: "h", EventID: fmt.Sprint("e", i), At: time.Now()})
			if err != nil {
				t.Error(err)
				return
			}
			if !res.Duplicate {
				firsts.Add(1)
			}
			if !res.Applied || res.Used != 7 || res.Amount != 7 {
				t.Errorf("answer %+v, want applied with used 7", res)
			}
		})
	}
	wg.Wait()
	if firsts.Load() != 1 {
		t.Fatalf("%d answers were not duplicates, want 1", firsts.Load())
	}
	if used, _ := st.Used(ctx, quota.UsageRead{Key: monthKey}); used.Used != 7 {
		t.Fatalf("used %d, want 7", used)
	}
	var rows int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("ledger has %d rows (%v), want 1", rows, err)
	}
	_, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 8, Limit: 1000, IdempotencyKey: "req-1", RequestHash: "other", EventID: "z", At: time.Now()})
	if !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("reused key with another body: %v, want ErrConflict", err)
	}
}

func TestOverflowIsInvalid(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if _, err := st.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, used) VALUES ($1, $2, $3, $4)`,
		monthKey.Subject, monthKey.Meter, monthKey.Start, int64(1<<63-10)); err != nil {
		t.Fatal(err)
	}
	_, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 100, EventID: "o", At: time.Now()})
	if !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("overflowing consume: %v, want ErrInvalid", err)
	}
}

func TestProvisionSubjectFirstWins(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	a := time.Date(2026, 1, 31, 10, 0, 0, 0, time.UTC)
	got, err := st.ProvisionSubject(ctx, quota.Subject{ID: "user:9", Plan: "free", CycleAnchor: a})
	if err != nil || !got.CycleAnchor.Equal(a) {
		t.Fatalf("first provision: %+v, %v", got, err)
	}
	got, err = st.ProvisionSubject(ctx, quota.Subject{ID: "user:9", Plan: "pro", CycleAnchor: a.Add(time.Hour)})
	if err != nil || got.Plan != "free" || !got.CycleAnchor.Equal(a) {
		t.Fatalf("second provision: %+v, %v; want the first one back", got, err)
	}
	if _, err := st.Subject(ctx, "user:nobody"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("unknown subject: %v, want ErrNotFound", err)
	}
}

// TestStaleSubjects: a subject provisioned or changed in Postgres is stale
// in Redis until marked synced with the settings Redis got; a change made
// after those stays stale.
func TestStaleSubjects(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	stale := func() []string {
		t.Helper()
		subs, err := st.StaleSubjects(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, s := range subs {
			ids = append(ids, s.ID+"/"+s.Plan)
		}
		return ids
	}
	a := time.Date(2026, 1, 31, 10, 0, 0, 123456789, time.UTC) // nanoseconds: Postgres keeps microseconds
	v1 := quota.Subject{ID: "user:st", Plan: "free", CycleAnchor: a}
	if _, err := st.ProvisionSubject(ctx, v1); err != nil {
		t.Fatal(err)
	}
	if got := stale(); !slices.Equal(got, []string{"user:st/free"}) {
		t.Fatalf("after provisioning: %v", got)
	}
	if err := st.SubjectsSynced(ctx, []quota.Subject{v1}); err != nil {
		t.Fatal(err)
	}
	if got := stale(); len(got) != 0 {
		t.Fatalf("after sync: %v", got)
	}
	if _, err := st.ProvisionSubject(ctx, v1); err != nil { // exists: not a change
		t.Fatal(err)
	}
	if got := stale(); len(got) != 0 {
		t.Fatalf("after provisioning an existing subject: %v", got)
	}
	v2 := v1
	v2.Plan, v2.Overrides = "pro", map[string]quota.Limit{"tokens": {Limit: 5, Period: quota.PeriodDay}}
	if err := st.PutSubject(ctx, v2); err != nil {
		t.Fatal(err)
	}
	if err := st.SubjectsSynced(ctx, []quota.Subject{v1}); err != nil { // Redis got v1: not the latest
		t.Fatal(err)
	}
	if got := stale(); !slices.Equal(got, []string{"user:st/pro"}) {
		t.Fatalf("synced with older settings: %v, want still stale", got)
	}
	if err := st.SubjectsSynced(ctx, []quota.Subject{v2}); err != nil {
		t.Fatal(err)
	}
	if got := stale(); len(got) != 0 {
		t.Fatalf("synced with the latest: %v", got)
	}
}

func TestResetWritesLedger(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: monthKey, Amount: 5, EventID: "a", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.Reset(ctx, monthKey, time.Now()); err != nil {
		t.Fatal(err)
	}
	if used, _ := st.Used(ctx, quota.UsageRead{Key: monthKey}); used.Used != 0 {
		t.Fatalf("used %d after reset", used)
	}
	var n int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger WHERE kind = 'reset'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d reset rows (%v), want 1", n, err)
	}
}

// TestConsumeOfAnEventAlreadyCounted: a fallback consume carrying an event
// id the flusher already wrote (Redis applied it, its reply was lost)
// answers applied and counts nothing again, instead of failing.
func TestConsumeOfAnEventAlreadyCounted(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	first := quota.ConsumeOp{Key: monthKey, Amount: 5, EventID: "ev-1", At: time.Now()}
	if _, err := st.Consume(ctx, first); err != nil { // stands for the flusher's write of the Redis copy
		t.Fatal(err)
	}
	for _, idem := range []string{"", "k-1"} {
		again := first
		again.IdempotencyKey, again.RequestHash = idem, "h"
		res, err := st.Consume(ctx, again)
		if err != nil || !res.Applied || res.Used != 5 {
			t.Fatalf("replayed event (idempotency key %q): %+v, %v; want applied with used 5", idem, res, err)
		}
	}
	var rows int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d ledger rows (%v), want 1", rows, err)
	}
}

// TestLedgerRows: the flusher writes each event's columns as they are,
// NULL where an event has no value (no usage, no idempotency key, no mode
// for a reset; a usage's token count of 0 is 0, not NULL), for a fresh
// flush (COPY) and for a replayed one (COPY into a temporary table, then
// INSERT of the new events only).
func TestLedgerRows(t *testing.T) {
	st := newStore(t)
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	ctx := context.Background()
	at := time.Date(2026, 11, 3, 4, 5, 6, 789_000_000, time.UTC)
	priced := quota.Event{ID: "ev-priced", Kind: quota.EventConsume, Subject: "user:ledger", Meter: "credits",
		Start: monthKey.Start, End: monthKey.End, Amount: 7, Enforce: true, IdempotencyKey: "idem-1", RequestHash: "h", At: at,
		Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1000, OutputTokens: 200, CacheWriteTokens: 0, CacheReadTokens: 4}}
	plain := quota.Event{ID: "ev-plain", Kind: quota.EventConsume, Subject: "user:ledger", Meter: "credits",
		Start: monthKey.Start, End: monthKey.End, Amount: 2, At: at.Add(time.Second)}
	reset := quota.Event{ID: "ev-reset", Kind: quota.EventReset, Subject: "user:ledger", Meter: "credits",
		Start: monthKey.Start, End: monthKey.End, At: at.Add(2 * time.Second)}
	if err := f.Write(ctx, []quota.Event{priced}); err != nil {
		t.Fatal(err)
	}
	if err := f.Write(ctx, []quota.Event{priced, plain, reset}); err != nil { // priced again: the replay path
		t.Fatal(err)
	}
	rows, err := st.Pool().Query(ctx, `SELECT event_id, kind, subject, meter, period_start, amount, coalesce(mode, '-'), coalesce(model, '-'),
		coalesce(input_tokens, -1), coalesce(output_tokens, -1), coalesce(cache_write_tokens, -1), coalesce(cache_read_tokens, -1),
		coalesce(idempotency_key, '-'), created_at FROM usage_ledger WHERE subject = 'user:ledger' ORDER BY created_at`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, kind, subject, meter, mode, model, idem string
		var start, created time.Time
		var amount, in, out, cw, cr int64
		if err := rows.Scan(&id, &kind, &subject, &meter, &start, &amount, &mode, &model, &in, &out, &cw, &cr, &idem, &created); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %s %s %s %d %s %s %d %d %d %d %s %s", id, kind, subject, meter, start.UTC().Format(time.RFC3339),
			amount, mode, model, in, out, cw, cr, idem, created.UTC().Format(time.RFC3339Nano)))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ev-priced consume user:ledger credits 2026-11-01T00:00:00Z 7 enforce claude-3-5-sonnet 1000 200 0 4 idem-1 2026-11-03T04:05:06.789Z",
		"ev-plain consume user:ledger credits 2026-11-01T00:00:00Z 2 record - -1 -1 -1 -1 - 2026-11-03T04:05:07.789Z",
		"ev-reset reset user:ledger credits 2026-11-01T00:00:00Z 0 - - -1 -1 -1 -1 - 2026-11-03T04:05:08.789Z",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("ledger rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestRowsWrittenMetric: quotad_flush_rows_written_total counts each
// counter row a flush writes once, a reset one too (it goes through two
// statements), and one ledger row per event.
func TestRowsWrittenMetric(t *testing.T) {
	st := newStore(t)
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	ctx := context.Background()
	at := time.Now()
	ev := func(id, subject string, kind quota.EventKind, amount int64) quota.Event {
		return quota.Event{ID: id, Kind: kind, Subject: subject, Meter: "credits", Start: monthKey.Start, End: monthKey.End, Amount: amount, At: at}
	}
	if err := f.Write(ctx, []quota.Event{
		ev("m1", "user:m-1", quota.EventConsume, 3), ev("m2", "user:m-1", quota.EventReset, 0), ev("m3", "user:m-1", quota.EventConsume, 2),
		ev("m4", "user:m-2", quota.EventConsume, 1),
	}); err != nil {
		t.Fatal(err)
	}
	if used, _, _ := st.Stored(ctx, quota.CounterKey{Subject: "user:m-1", Meter: "credits", Start: monthKey.Start}); used != 2 {
		t.Fatalf("user:m-1 has %d, want the 2 after its reset", used)
	}
	for table, want := range map[string]float64{"counters": 2, "usage_ledger": 4} {
		if got := testutil.ToFloat64(f.RowsWritten(table)); got != want {
			t.Errorf("rows written to %s: %v, want %v", table, got, want)
		}
	}
}

// TestTakeStaleCountersKeepsALaterMark: a direct write to a counter while
// its stale copy is being dropped from Redis waits for the take to commit
// and marks the counter again, so the next recovery drops the copy that
// may miss it. (Clearing the marks in a statement after the drop cleared
// the mark of such a write.)
func TestTakeStaleCountersKeepsALaterMark(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	k := monthKey
	k.Subject = "user:take"
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "take-1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	take := func(during func()) []quota.CounterKey {
		t.Helper()
		var taken []quota.CounterKey
		if _, err := st.TakeStaleCounters(ctx, 100, func(keys []quota.CounterKey) error {
			taken = keys
			if during != nil {
				during()
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return taken
	}
	wrote := make(chan error, 1)
	if got := take(func() {
		go func() {
			_, err := st.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 2, EventID: "take-2", At: time.Now()})
			wrote <- err
		}()
		time.Sleep(200 * time.Millisecond) // the write reaches the row, or commits if nothing holds it
	}); len(got) != 1 || got[0].Subject != k.Subject {
		t.Fatalf("first take: %v, want the counter", got)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got := take(nil); len(got) != 1 || got[0].Subject != k.Subject {
		t.Fatalf("second take: %v, want the counter the write marked again", got)
	}
	if got := take(nil); len(got) != 0 {
		t.Fatalf("third take: %v, want none", got)
	}
	// A failed drop leaves the marks.
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 3, EventID: "take-3", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.TakeStaleCounters(ctx, 100, func([]quota.CounterKey) error { return errors.New("redis is gone") }); err == nil {
		t.Fatal("a failed drop did not fail the take")
	}
	if got := take(nil); len(got) != 1 {
		t.Fatalf("after a failed drop: %v, want the counter still marked", got)
	}
}

// TestTakeStaleCountersInChunks: each take clears the marks of the chunk
// it took once its drop succeeded, so a recovery that fails part way keeps
// only what it did not drop.
func TestTakeStaleCountersInChunks(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for i := range 5 {
		k := monthKey
		k.Subject = fmt.Sprint("user:chunk-", i)
		if _, err := st.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprint("chunk-", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	take := func(fail bool) (int, error) {
		return st.TakeStaleCounters(ctx, 2, func(keys []quota.CounterKey) error {
			if fail {
				return errors.New("redis timed out")
			}
			for _, k := range keys {
				got = append(got, k.Subject)
			}
			return nil
		})
	}
	if n, err := take(false); n != 2 || err != nil {
		t.Fatalf("first chunk: %d, %v; want 2", n, err)
	}
	if _, err := take(true); err == nil {
		t.Fatal("a failed drop did not fail the take")
	}
	for _, want := range []int{2, 1, 0} {
		if n, err := take(false); n != want || err != nil {
			t.Fatalf("take: %d, %v; want %d", n, err, want)
		}
	}
	if want := []string{"user:chunk-0", "user:chunk-1", "user:chunk-2", "user:chunk-3", "user:chunk-4"}; !slices.Equal(got, want) {
		t.Fatalf("dropped %v, want each of %v once", got, want)
	}
}

// TestTakeStaleCountersSkipsHeldRows: a counter row a flush holds is
// skipped, not waited for, and keeps its mark for the next take.
func TestTakeStaleCountersSkipsHeldRows(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for _, s := range []string{"user:held", "user:free"} {
		k := monthKey
		k.Subject = s
		if _, err := st.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "skip-" + s, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM counters WHERE subject = 'user:held' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	take := func() []string {
		t.Helper()
		var got []string
		tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := st.TakeStaleCounters(tctx, 10, func(keys []quota.CounterKey) error {
			for _, k := range keys {
				got = append(got, k.Subject)
			}
			return nil
		}); err != nil {
			t.Fatalf("take while a row is held: %v", err)
		}
		return got
	}
	if got := take(); !slices.Equal(got, []string{"user:free"}) {
		t.Fatalf("took %v while user:held's row was held; want only user:free", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := take(); !slices.Equal(got, []string{"user:held"}) {
		t.Fatalf("took %v once the row was free; want user:held", got)
	}
}

// TestConcurrentFlushesDoNotDeadlock: two flushers (two quotad instances)
// writing the same counters at once, their events in opposite orders, both
// commit and count everything: each upserts its counters in key order, so
// they take the rows' locks in the same order and never wait on each other
// in a cycle (Postgres would abort one with "deadlock detected").
func TestConcurrentFlushesDoNotDeadlock(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	const n = 2000
	events := func(tag string, amount int64) []quota.Event {
		evs := make([]quota.Event, n)
		for i := range evs {
			evs[i] = quota.Event{ID: fmt.Sprintf("%s-%d", tag, i), Kind: quota.EventConsume, Subject: fmt.Sprintf("user:dl-%d", i),
				Meter: "credits", Start: monthKey.Start, End: monthKey.End, Amount: amount, At: time.Now()}
		}
		return evs
	}
	if err := flushTogether(ctx, st, events("seed", 1)); err != nil {
		t.Fatal(err) // the rows exist: the flushes below update them, taking row locks
	}
	for round := range 5 {
		a, b := events(fmt.Sprintf("a%d", round), 1), events(fmt.Sprintf("b%d", round), 1)
		slices.Reverse(b)
		if err := flushTogether(ctx, st, a, b); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	var sum, rows int64
	if err := st.Pool().QueryRow(ctx, `SELECT sum(used), count(*) FROM counters WHERE subject LIKE 'user:dl-%'`).Scan(&sum, &rows); err != nil {
		t.Fatal(err)
	}
	if rows != n || sum != n*11 {
		t.Fatalf("%d counters summing to %d, want %d summing to %d", rows, sum, n, n*11)
	}
	// Resets crossed: each flush adds to the counter the other one resets
	// (a flush writes its resets in a second statement, after its adds).
	for round := range 3 {
		a, b := events(fmt.Sprintf("ra%d", round), 1), events(fmt.Sprintf("rb%d", round), 1)
		slices.Reverse(b)
		reset := func(tag string, i int) quota.Event {
			ev := a[i]
			ev.ID, ev.Kind, ev.Amount = fmt.Sprintf("%s-reset-%d", tag, round), quota.EventReset, 0
			return ev
		}
		a, b = append(a, reset("a", 0)), append(b, reset("b", n-1))
		if err := flushTogether(ctx, st, a, b); err != nil {
			t.Fatalf("round %d with resets: %v", round, err)
		}
	}
}

// flushTogether writes each batch with a flusher of its own, all at once.
func flushTogether(ctx context.Context, st *persist.Store, batches ...[]quota.Event) error {
	var wg sync.WaitGroup
	errs := make([]error, len(batches))
	for i, evs := range batches {
		wg.Go(func() { errs[i] = persist.NewFlusher(st, nil, persist.FlusherConfig{}).Write(ctx, evs) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// TestPacer: a pause every PaceRows rows, every more rows when the pauses
// of one flush would take more than a quarter of the interval, none when
// pacing is off or the interval leaves no room for a pause.
func TestPacer(t *testing.T) {
	for _, c := range []struct {
		rows, paceRows int
		interval       time.Duration
		want           int
	}{
		{30_000, 256, time.Second, 256},             // 118 pauses, 250 allowed
		{100_000, 256, time.Second, 400},            // 250 pauses of 400 rows
		{30_000, 256, 100 * time.Millisecond, 1200}, // 25 allowed
		{100, 256, time.Second, 256},                // fewer rows than a slice: no pause
		{30_000, -1, time.Second, 0},
		{30_000, 256, 3 * time.Millisecond, 0},
	} {
		if got := persist.PaceEvery(c.rows, c.paceRows, c.interval); got != c.want {
			t.Errorf("PaceEvery(%d, %d, %s) = %d, want %d", c.rows, c.paceRows, c.interval, got, c.want)
		}
	}
}

// TestPacedFlushCountsEveryEvent: a flush whose ledger COPY pauses
// mid-stream (every 64 rows here) writes every row and counts every event
// once, fresh and when replayed with new events (the COPY into a temporary
// table, which pauses too), and every idempotency key once (the keys' COPY
// pauses too).
func TestPacedFlushCountsEveryEvent(t *testing.T) {
	st := newStore(t)
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{PaceRows: 64})
	ctx := context.Background()
	at := time.Now()
	events := make([]quota.Event, 1000)
	for i := range events {
		events[i] = quota.Event{ID: quota.NewEventID(at), Kind: quota.EventConsume, Subject: fmt.Sprint("user:paced-", i%10),
			Meter: "credits", Start: monthKey.Start, End: monthKey.End, Amount: int64(1 + i%3), At: at,
			IdempotencyKey: fmt.Sprint("paced-", i), RequestHash: "h"}
	}
	if err := f.Write(ctx, events[:600]); err != nil {
		t.Fatal(err)
	}
	if err := f.Write(ctx, events); err != nil { // the first 600 again
		t.Fatal(err)
	}
	var rows, sum, want int64
	for _, e := range events {
		want += e.Amount
	}
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger WHERE subject LIKE 'user:paced-%'`).Scan(&rows); err != nil || rows != 1000 {
		t.Fatalf("%d ledger rows (%v), want 1000", rows, err)
	}
	if err := st.Pool().QueryRow(ctx, `SELECT sum(used) FROM counters WHERE subject LIKE 'user:paced-%'`).Scan(&sum); err != nil || sum != want {
		t.Fatalf("counters sum to %d (%v), want %d", sum, err, want)
	}
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM idempotency WHERE key LIKE 'paced-%'`).Scan(&rows); err != nil || rows != 1000 {
		t.Fatalf("%d idempotency keys (%v), want 1000", rows, err)
	}
}

// TestFlushOfAKeyPostgresHas: a flush whose idempotency key Postgres took
// already for another event (on the direct path, while Redis was
// unreachable) is refused by the keys' COPY and written again the careful
// way: the event of the key Postgres holds is a duplicate (no ledger row,
// no count; its counter is marked stale, as Redis counted it), every other
// new event counts once, and the key keeps its first answer.
func TestFlushOfAKeyPostgresHas(t *testing.T) {
	st := newStore(t)
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	ctx := context.Background()
	key := monthKey
	key.Subject = "user:key-taken"
	direct := quota.ConsumeOp{Key: key, Amount: 5, EventID: "ev-direct", IdempotencyKey: "k-1", RequestHash: "h", At: time.Now()}
	if _, err := st.Consume(ctx, direct); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	ev := func(id, idem string, amount int64) quota.Event {
		return quota.Event{ID: id, Kind: quota.EventConsume, Subject: key.Subject, Meter: key.Meter, Start: key.Start, End: key.End,
			Amount: amount, IdempotencyKey: idem, RequestHash: "h", Used: 99, At: at}
	}
	if err := f.Write(ctx, []quota.Event{ev("ev-a", "k-0", 3), ev("ev-b", "k-1", 5), ev("ev-c", "", 7)}); err != nil {
		t.Fatal(err)
	}
	var used, rows, keys, firstUsed int64
	var stale bool
	if err := st.Pool().QueryRow(ctx, `SELECT (SELECT used FROM counters WHERE subject = $1), (SELECT count(*) FROM usage_ledger WHERE subject = $1),
		(SELECT count(*) FROM idempotency WHERE subject = $1), (SELECT used FROM idempotency WHERE subject = $1 AND key = 'k-1'),
		(SELECT l2_stale FROM counters WHERE subject = $1)`, key.Subject).
		Scan(&used, &rows, &keys, &firstUsed, &stale); err != nil {
		t.Fatal(err)
	}
	if used != 5+3+7 || rows != 3 || keys != 2 || firstUsed != 5 || !stale {
		t.Fatalf("counter %d, ledger rows %d, keys %d, k-1's used %d, stale %v; want 15, 3, 2, 5, true", used, rows, keys, firstUsed, stale)
	}
	// Written again (a replay): nothing changes.
	if err := f.Write(ctx, []quota.Event{ev("ev-a", "k-0", 3), ev("ev-b", "k-1", 5), ev("ev-c", "", 7)}); err != nil {
		t.Fatal(err)
	}
	if err := st.Pool().QueryRow(ctx, `SELECT used FROM counters WHERE subject = $1`, key.Subject).Scan(&used); err != nil || used != 15 {
		t.Fatalf("after a replay: counter %d (%v), want 15", used, err)
	}
}

// TestFlushWithAnEventTwice: a flush that holds one event twice (an entry
// read again, a replay overlapping a claim) counts it once in the
// counters, as in the ledger.
func TestFlushWithAnEventTwice(t *testing.T) {
	st := newStore(t)
	f := persist.NewFlusher(st, nil, persist.FlusherConfig{})
	ctx := context.Background()
	key := monthKey
	key.Subject = "user:twice"
	ev := quota.Event{ID: "ev-twice", Kind: quota.EventConsume, Subject: key.Subject, Meter: key.Meter, Start: key.Start, End: key.End,
		Amount: 4, IdempotencyKey: "k-twice", RequestHash: "h", At: time.Now()}
	other := ev
	other.ID, other.IdempotencyKey = "ev-other", ""
	if err := f.Write(ctx, []quota.Event{ev, other, ev}); err != nil {
		t.Fatal(err)
	}
	var used, rows int64
	if err := st.Pool().QueryRow(ctx, `SELECT (SELECT used FROM counters WHERE subject = $1), (SELECT count(*) FROM usage_ledger WHERE subject = $1)`,
		key.Subject).Scan(&used, &rows); err != nil {
		t.Fatal(err)
	}
	if used != 8 || rows != 2 {
		t.Fatalf("counter %d, ledger rows %d; want 8 and 2", used, rows)
	}
}

// TestDirectConsumeSurvivesADeadlockWithAFlush: a consume on the direct
// path locks its counter row and then inserts its ledger row; a flush
// holding the same event (Redis counted it, its reply was lost, the
// client retried on Postgres) inserted that ledger row first and then
// wants the counter row: a deadlock, which Postgres breaks by aborting
// the consume. The consume is tried again (nothing of it was committed)
// and answers as the event counted once, not with an error.
func TestDirectConsumeSurvivesADeadlockWithAFlush(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	key := monthKey
	key.Subject = "user:deadlock"
	if _, err := st.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "ev-0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	flush, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer flush.Rollback(ctx)
	if _, err := flush.Exec(ctx, `SET LOCAL deadlock_timeout = '30s'`); err != nil { // the consume's backend is the one to notice
		t.Fatal(err)
	}
	at := time.Now() // the event's time, in both copies of it
	if _, err := flush.Exec(ctx, `INSERT INTO usage_ledger (event_id, kind, subject, meter, period_start, amount, created_at)
		VALUES ('ev-both', 'consume', $1, $2, $3, 5, $4)`, key.Subject, key.Meter, key.Start, at); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		res quota.ConsumeResult
		err error
	}
	done := make(chan answer, 1)
	go func() {
		res, err := st.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 5, EventID: "ev-both", At: at})
		done <- answer{res, err}
	}()
	time.Sleep(300 * time.Millisecond) // the consume holds the counter row and waits for the ledger row
	if _, err := flush.Exec(ctx, `UPDATE counters SET used = used + 5 WHERE subject = $1`, key.Subject); err != nil {
		t.Fatal(err)
	}
	if err := flush.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	a := <-done
	if a.err != nil || !a.res.Applied || a.res.Used != 6 {
		t.Fatalf("consume after a deadlock: %+v, %v; want applied with used 6", a.res, a.err)
	}
	if used, _ := st.Used(ctx, quota.UsageRead{Key: key}); used.Used != 6 {
		t.Fatalf("counter %d, want 6 (the event once)", used.Used)
	}
}

// TestPruneIdempotency: keys taken before the cut are deleted, a batch
// at a time; later ones stay.
func TestPruneIdempotency(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	now := time.Now()
	for i, age := range []time.Duration{50 * time.Hour, 26 * time.Hour, 25*time.Hour + time.Minute, time.Hour, 0} {
		if _, err := st.Pool().Exec(ctx, `INSERT INTO idempotency (subject, key, request_hash, created_at) VALUES ('user:p', $1, 'h', $2)`,
			fmt.Sprint("k", i), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	cut := now.Add(-persist.IdempotencyWindow - time.Hour)
	var deleted []int64
	for {
		n, err := st.PruneIdempotency(ctx, cut, 2)
		if err != nil {
			t.Fatal(err)
		}
		deleted = append(deleted, n)
		if n < 2 {
			break
		}
	}
	var left []string
	rows, _ := st.Pool().Query(ctx, `SELECT key FROM idempotency WHERE subject = 'user:p' ORDER BY key`)
	for rows.Next() {
		var k string
		_ = rows.Scan(&k)
		left = append(left, k)
	}
	if fmt.Sprint(deleted) != "[2 1]" || fmt.Sprint(left) != "[k3 k4]" {
		t.Fatalf("deleted %v per call, left %v; want [2 1] and [k3 k4]", deleted, left)
	}
}

// TestSubjectOnADeletedPlanIsInvalid: a subject written with a plan that
// is gone (deleted between the service's read of it and this write) is
// refused as bad input naming the plan, not an internal error.
func TestSubjectOnADeletedPlanIsInvalid(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.PutPlan(ctx, quota.Plan{Name: "short-lived", Limits: map[string]quota.Limit{"credits": {Limit: 5, Period: quota.PeriodMonth}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DeletePlan(ctx, "short-lived"); err != nil {
		t.Fatal(err)
	}
	err := st.PutSubject(ctx, quota.Subject{ID: "user:orphan", Plan: "short-lived", CycleAnchor: time.Now().UTC()})
	var fe *quota.FieldError
	if !errors.As(err, &fe) || fe.Field != "plan" {
		t.Fatalf("put subject on a deleted plan: %v, want a FieldError on plan", err)
	}
	if _, err := st.Subject(ctx, "user:orphan"); !errors.Is(err, quota.ErrNotFound) {
		t.Fatalf("the subject was stored anyway: %v", err)
	}
}
