package cache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

type env struct {
	store *persist.Store
	rdb   *redis.Client
}

func newEnv(tb testing.TB) env {
	tb.Helper()
	st := migratedStore(context.Background(), tb, 32)
	opt, _ := redis.ParseURL(testenv.RedisURL(tb))
	rdb := redis.NewClient(opt)
	tb.Cleanup(func() { rdb.Close() })
	return env{store: st, rdb: rdb}
}

// counter returns an L2 counter as one quotad instance would have it.
func (e env) counter(tb testing.TB) *cache.Counter {
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	h := cache.NewHealth(e.rdb, discard)
	c := cache.NewCounter(ctx, e.rdb, e.store, h, discard)
	h.Start(ctx, c.DropStale)
	if !h.Up() {
		tb.Fatal("redis down")
	}
	return c
}

var key = quota.CounterKey{Subject: "user:c", Meter: "credits",
	Start: time.Now().UTC().Truncate(time.Hour), End: time.Now().UTC().Truncate(time.Hour).Add(time.Hour)}

// TestLoadOnce: two instances finding the counter missing at the same
// moment load it from Postgres once, not twice.
func TestLoadOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.store.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, $4, 100)`,
		key.Subject, key.Meter, key.Start, key.End); err != nil {
		t.Fatal(err)
	}
	instances := []*cache.Counter{e.counter(t), e.counter(t)}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			_, err := instances[i%2].Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: fmt.Sprint("e", i), At: time.Now()})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	used, err := instances[0].Used(ctx, quota.UsageRead{Key: key})
	if err != nil || used.Used != 140 {
		t.Fatalf("used %d (%v), want 100 from postgres + 40", used, err)
	}
}

// droppedCounter sets up a counter Postgres has a row for (100 used) that
// took 5 more through Redis, not flushed yet, and was then dropped from
// Redis, as after an outage (dropped as stale). It answers an instance's
// counter, the key and its Redis key.
func (e env) droppedCounter(t *testing.T, subject string) (*cache.Counter, quota.CounterKey, string) {
	t.Helper()
	ctx := context.Background()
	k := key
	k.Subject = subject
	if _, err := e.store.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, $4, 100)`,
		k.Subject, k.Meter, k.Start, k.End); err != nil {
		t.Fatal(err)
	}
	c := e.counter(t)
	for i := range 5 {
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprint(subject, i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	ck := "q:{" + k.Subject + "}:c:" + k.Meter + ":" + fmt.Sprint(k.Start.Unix())
	e.rdb.Del(ctx, ck)
	return c, k, ck
}

// TestLoadWaitsForItsEvents: a counter Postgres has a row for, dropped
// from Redis while its events wait in the stream, is not loaded until they
// are flushed (Postgres would be short of them); a new counter, with no
// row, loads at once although the stream is not empty.
func TestLoadWaitsForItsEvents(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c, k, ck := e.droppedCounter(t, "user:horizon")

	if used, err := c.Used(ctx, quota.UsageRead{Key: k}); err != nil || used.Used != 100 {
		t.Fatalf("before the flush: %d (%v), want postgres's 100", used, err)
	}
	if n, _ := e.rdb.Exists(ctx, ck).Result(); n != 0 {
		t.Fatal("the counter was loaded from postgres while its events were unflushed")
	}
	// A consume that cannot load it in time is refused and changes nothing:
	// not a direct write to Postgres, which a concurrent load could miss.
	c.SetLoadWait(300 * time.Millisecond)
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 7, EventID: "h-late", At: time.Now()}); !errors.Is(err, quota.ErrUnavailable) {
		t.Fatalf("consume past the load wait: %v, want ErrUnavailable", err)
	}
	c.SetLoadWait(10 * time.Second)
	if used, _, _ := e.store.Stored(ctx, k); used != 100 {
		t.Fatalf("postgres has %d after a refused consume, want 100", used)
	}

	fresh := key
	fresh.Subject = "user:horizon-new"
	res, err := c.Consume(ctx, quota.ConsumeOp{Key: fresh, Amount: 3, EventID: "n1", At: time.Now()})
	if err != nil || res.Used != 3 {
		t.Fatalf("new counter: %+v (%v), want used 3", res, err)
	}
	if _, found, _ := e.store.Stored(ctx, fresh); found {
		t.Fatal("the new counter waited for the flush and went to postgres directly")
	}

	p := cache.NewPending(e.rdb, "test")
	evs, _, err := p.Next(ctx, 100, nil)
	if err != nil || len(evs) != 6 {
		t.Fatalf("pending %d (%v), want 6", len(evs), err)
	}
	if err := persist.NewFlusher(e.store, p, persist.FlusherConfig{}).Write(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if used, _ := c.Used(ctx, quota.UsageRead{Key: k}); used.Used != 105 {
		t.Fatalf("written, not yet acknowledged: %d, want 105 from postgres", used)
	}
	if n, _ := e.rdb.Exists(ctx, ck).Result(); n != 0 {
		t.Fatal("the counter was loaded before its events were acknowledged")
	}
	if err := p.Ack(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if used, err := c.Used(ctx, quota.UsageRead{Key: k}); err != nil || used.Used != 105 {
		t.Fatalf("after the flush: %d (%v), want 105", used, err)
	}
	if v, err := e.rdb.Get(ctx, ck).Int64(); err != nil || v != 105 {
		t.Fatalf("redis holds %d (%v), want 105 loaded", v, err)
	}
}

// TestLoadReadsTheHorizonAgainAfterADrop: a load waits for the events
// that were in the stream when it found the counter missing. While it
// waits, another instance loads the counter, counts a consume (its event
// past that horizon) and the counter is dropped again as stale. The
// waiting load must now wait for that event too: with the old horizon it
// would find the stream drained and store Postgres's count without it.
func TestLoadReadsTheHorizonAgainAfterADrop(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	k := key
	k.Subject = "user:rehorizon"
	if _, err := e.store.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, $4, 100)`,
		k.Subject, k.Meter, k.Start, k.End); err != nil {
		t.Fatal(err)
	}
	ck := "q:{" + k.Subject + "}:c:" + k.Meter + ":" + fmt.Sprint(k.Start.Unix())
	c := e.counter(t)
	other := key
	other.Subject = "user:rehorizon-other"
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: other, Amount: 1, EventID: "other-1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var ld cache.Loading
	if loaded, err := c.Load(ctx, k, &ld); err != nil || loaded {
		t.Fatalf("first try: loaded %v (%v), want a wait for the other subject's entry", loaded, err)
	}

	// Meanwhile: loaded elsewhere, 5 counted, the older entry flushed, the
	// counter dropped as stale.
	if err := e.rdb.Set(ctx, ck, 100, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 5, EventID: "rh-1", At: time.Now()}); err != nil || res.Used != 105 {
		t.Fatalf("consume: %+v (%v)", res, err)
	}
	p := cache.NewPending(e.rdb, "test")
	flush := func(entries int) {
		t.Helper()
		evs, _, err := p.Next(ctx, entries, nil)
		if err != nil || len(evs) != 1 {
			t.Fatalf("pending %d (%v), want one event", len(evs), err)
		}
		if err := persist.NewFlusher(e.store, p, persist.FlusherConfig{}).Write(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if err := p.Ack(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	flush(1)
	if _, err := e.store.Pool().Exec(ctx, `UPDATE counters SET l2_stale = true WHERE subject = $1`, k.Subject); err != nil {
		t.Fatal(err)
	}
	if err := c.DropStale(ctx); err != nil {
		t.Fatal(err)
	}

	if loaded, err := c.Load(ctx, k, &ld); err != nil || loaded {
		t.Fatalf("after the drop: loaded %v (%v) with the consume of 5 unflushed", loaded, err)
	}
	if n, _ := e.rdb.Exists(ctx, ck).Result(); n != 0 {
		t.Fatalf("redis holds the counter (%s) before its event was flushed", e.rdb.Get(ctx, ck).Val())
	}
	flush(1)
	if loaded, err := c.Load(ctx, k, &ld); err != nil || !loaded {
		t.Fatalf("after the flush: loaded %v (%v)", loaded, err)
	}
	if v, err := e.rdb.Get(ctx, ck).Int64(); err != nil || v != 105 {
		t.Fatalf("redis holds %d (%v), want 105", v, err)
	}
}

// TestLoadUnderTraffic: a counter with a Postgres row, dropped from Redis
// with events unflushed, loads once the flusher is past the events that
// were in the stream when it was found missing, although other subjects'
// consumes keep adding entries behind them.
func TestLoadUnderTraffic(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, k, _ := e.droppedCounter(t, "user:traffic")

	other := key
	other.Subject = "user:traffic-other"
	var wg sync.WaitGroup
	wg.Go(func() { // an entry every 2 ms, for as long as the test runs
		for i := 0; ctx.Err() == nil; i++ {
			c.Consume(ctx, quota.ConsumeOp{Key: other, Amount: 1, EventID: fmt.Sprint("o", i), At: time.Now()})
			time.Sleep(2 * time.Millisecond)
		}
	})
	defer wg.Wait()
	defer cancel()
	f := persist.NewFlusher(e.store, cache.NewPending(e.rdb, "test"), persist.FlusherConfig{Interval: 200 * time.Millisecond})
	wg.Go(func() { f.Run(ctx) })

	time.Sleep(100 * time.Millisecond) // traffic on the stream before the load
	res, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "t-last", At: time.Now()})
	if err != nil || res.Used != 106 {
		t.Fatalf("consume on the dropped counter: %+v (%v), want used 106 (100 + 5 flushed + 1)", res, err)
	}
}

// TestAckOnce: acknowledging the same events again changes nothing, and
// once they are acknowledged the stream is empty and the counter reloads.
func TestAckOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	for i := range 5 {
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 2, EventID: fmt.Sprint("a", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	p := cache.NewPending(e.rdb, "test")
	if evs, _, err := p.Claim(ctx, 100, nil); err != nil || len(evs) != 0 {
		t.Fatalf("claim before any delivery: %d (%v), want none", len(evs), err)
	}
	evs, _, err := p.Next(ctx, 100, nil)
	if err != nil || len(evs) != 5 {
		t.Fatalf("claimed %d (%v), want 5", len(evs), err)
	}
	reg := prometheus.NewRegistry()
	f := persist.NewFlusher(e.store, p, persist.FlusherConfig{Registry: reg})
	for range 3 { // a replayed batch: written three times, acked three times
		if err := f.Write(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if err := p.Ack(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	n, _, _, err := p.Stats(ctx)
	if err != nil || n != 0 {
		t.Fatalf("%d events left (%v)", n, err)
	}
	if used, _ := e.store.Used(ctx, quota.UsageRead{Key: key}); used.Used != 10 {
		t.Fatalf("postgres has %d, want 10 once", used)
	}
	if n := rowsWritten(t, reg, "usage_ledger"); n != 5 {
		t.Fatalf("metric says %v ledger rows written, want 5 (the replays wrote none)", n)
	}
	// With nothing unflushed the counter reloads from Postgres after loss.
	e.rdb.FlushDB(ctx)
	if used, err := c.Used(ctx, quota.UsageRead{Key: key}); err != nil || used.Used != 10 {
		t.Fatalf("after loss: %d (%v), want 10", used, err)
	}
}

// TestIdempotencyConflict: the same key with another request hash is a
// conflict, and changes nothing.
func TestIdempotencyConflict(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	op := quota.ConsumeOp{Key: key, Amount: 3, IdempotencyKey: "k", RequestHash: "h1", EventID: "x1", At: time.Now()}
	if _, err := c.Consume(ctx, op); err != nil {
		t.Fatal(err)
	}
	op.RequestHash, op.Amount, op.EventID = "h2", 4, "x2"
	if _, err := c.Consume(ctx, op); !errors.Is(err, quota.ErrConflict) {
		t.Fatalf("reuse: %v, want ErrConflict", err)
	}
	if used, _ := c.Used(ctx, quota.UsageRead{Key: key}); used.Used != 3 {
		t.Fatalf("used %d, want 3", used)
	}
}

// TestEnforceExact: 200 goroutines, limit 1000, amounts of 1: exactly
// 1000 accepted in Redis.
func TestEnforceExact(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	var mu sync.Mutex
	var accepted int64
	var wg sync.WaitGroup
	for g := range 200 {
		wg.Go(func() {
			for i := range 10 {
				r, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, Enforce: true, Limit: 1000, EventID: fmt.Sprint(g, "-", i), At: time.Now()})
				if err != nil {
					t.Error(err)
					return
				}
				if r.Applied {
					mu.Lock()
					accepted++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if accepted != 1000 {
		t.Fatalf("accepted %d, want 1000", accepted)
	}
}

// TestOverflowFailsAlone: a consume that would push a counter past the
// int64 range is ErrInvalid and changes nothing, while consumes sent with
// it (often in the same script call) go through.
func TestOverflowFailsAlone(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	other := key
	other.Subject = "user:other"
	for _, k := range []quota.CounterKey{key, other} { // load both
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "w" + k.Subject, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	ck := "q:{" + key.Subject + "}:c:" + key.Meter + ":" + fmt.Sprint(key.Start.Unix())
	if err := e.rdb.Set(ctx, ck, int64(1<<63-10), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		wg.Go(func() {
			k := other
			if i%2 == 0 {
				k = key
			}
			_, errs[i] = c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 100, EventID: fmt.Sprint("o", i), At: time.Now()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i%2 == 0 && !errors.Is(err, quota.ErrInvalid) {
			t.Fatalf("overflowing consume %d: %v, want ErrInvalid", i, err)
		}
		if i%2 == 1 && err != nil {
			t.Fatalf("consume %d on another counter: %v", i, err)
		}
	}
	if v, _ := e.rdb.Get(ctx, ck).Int64(); v != 1<<63-10 {
		t.Fatalf("overflowed counter changed to %d", v)
	}
	if used, _ := c.Used(ctx, quota.UsageRead{Key: other}); used.Used != 1+10*100 {
		t.Fatalf("other counter %d, want 1001", used)
	}
	// The stream holds the events of every consume that counted, and none
	// of those that failed, though they shared script calls.
	evs, _, err := cache.NewPending(e.rdb, "test").Next(ctx, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	bySubject := map[string]int{}
	for _, ev := range evs {
		bySubject[ev.Subject]++
	}
	if len(evs) != 12 || bySubject[other.Subject] != 11 || bySubject[key.Subject] != 1 {
		t.Fatalf("pending events by subject %v (%d in all), want %s: 11, %s: 1 (the first consume)", bySubject, len(evs), other.Subject, key.Subject)
	}
}

// TestBatchedEntriesFlushOnce: consumes counted by one script call share a
// stream entry. Flushed and acknowledged twice (a replay), every consume
// is in Postgres once and the stream is empty, also past one ack call's
// worth of entries.
func TestBatchedEntriesFlushOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	keys := make([]quota.CounterKey, 5)
	for i := range keys {
		keys[i] = key
		keys[i].Subject = fmt.Sprint("user:batch-", i)
	}
	for i := range 600 { // one at a time: an entry each
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: keys[i%5], Amount: 1, EventID: fmt.Sprint("s", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := range 100 { // together: entries of many
		wg.Go(func() {
			for i := range 4 {
				if _, err := c.Consume(ctx, quota.ConsumeOp{Key: keys[g%5], Amount: 2, EventID: fmt.Sprint("b", g, "-", i), At: time.Now()}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	p := cache.NewPending(e.rdb, "test")
	var evs []quota.Event
	entries := 0
	for {
		next, n, err := p.Next(ctx, 100, nil)
		if err != nil {
			t.Fatal(err)
		}
		evs, entries = append(evs, next...), entries+n
		if n < 100 {
			break
		}
	}
	if len(evs) != 1000 || entries < 600 || entries > 1000 {
		t.Fatalf("%d events in %d entries, want 1000 in 600..1000", len(evs), entries)
	}
	t.Logf("1000 events in %d stream entries", entries)
	f := persist.NewFlusher(e.store, p, persist.FlusherConfig{})
	for range 2 {
		if err := f.Write(ctx, evs); err != nil {
			t.Fatal(err)
		}
		if err := p.Ack(ctx, evs); err != nil {
			t.Fatal(err)
		}
	}
	if n, _, _, err := p.Stats(ctx); err != nil || n != 0 {
		t.Fatalf("%d entries left (%v)", n, err)
	}
	for _, k := range keys {
		if used, _ := e.store.Used(ctx, quota.UsageRead{Key: k}); used.Used != 120+2*80 {
			t.Fatalf("%s: postgres has %d, want 280", k.Subject, used)
		}
	}
}

// TestPeek: one MGET answers the counters Redis holds and marks the
// missing ones, loading nothing from Postgres.
func TestPeek(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	missing := key
	missing.Subject = "user:never-loaded"
	if _, err := e.store.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, $4, 7)`,
		missing.Subject, missing.Meter, missing.Start, missing.End); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 5, EventID: "p1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	used, ok, err := c.Peek(ctx, []quota.CounterKey{key, missing}, time.Now())
	if err != nil || !ok[0] || used[0].Used != 5 || ok[1] {
		t.Fatalf("peek: used %v ok %v (%v), want [5 _] [true false]", used, ok, err)
	}
	if n, _ := e.rdb.Exists(ctx, "q:{"+missing.Subject+"}:c:"+missing.Meter+":"+fmt.Sprint(missing.Start.Unix())).Result(); n != 0 {
		t.Fatal("peek loaded the missing counter")
	}
}

// TestIdleConsumersDropped: consumers of processes long gone, with nothing
// pending, leave the group; one with pending entries stays (they are
// claimed later), and so does the live one.
func TestIdleConsumersDropped(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	gone := cache.NewPending(e.rdb, "gone")
	if _, _, err := gone.Next(ctx, 10, nil); err != nil { // creates the group
		t.Fatal(err)
	}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "idle-0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	// A read makes the consumer (one that never read anything is not in
	// the group); it acknowledges what it read and goes.
	if evs, _, err := gone.Next(ctx, 10, nil); err != nil || len(evs) != 1 || gone.Ack(ctx, evs) != nil {
		t.Fatalf("gone consumer read %d (%v), want 1", len(evs), err)
	}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "idle-1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	crashed := cache.NewPending(e.rdb, "crashed")
	if evs, _, err := crashed.Next(ctx, 10, nil); err != nil || len(evs) != 1 { // delivered, never acked
		t.Fatalf("crashed consumer read %d (%v), want 1", len(evs), err)
	}
	// Its alive key has not lapsed yet (its entries are not claimed at
	// once: TestDeadFlushersEntriesClaimedAtOnce).
	if _, _, _, err := crashed.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	live := cache.NewPending(e.rdb, "live")
	live.ConsumerTTL, live.ClaimIdle = 20*time.Millisecond, time.Hour
	if _, _, err := live.Claim(ctx, 10, nil); err != nil {
		t.Fatal(err)
	}
	consumers, err := e.rdb.XInfoConsumers(ctx, cache.PendingStream, cache.FlushGroup).Result()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range consumers {
		names = append(names, c.Name)
	}
	if len(names) != 2 || names[0] != "crashed" || names[1] != "live" {
		t.Fatalf("consumers %v, want [crashed live]", names)
	}
}

// TestClaimDrainsADeadFlushersBacklog: entries a dead flusher left
// unacknowledged are claimed n at a time, call after call, not one batch
// per ClaimIdle/2.
func TestClaimDrainsADeadFlushersBacklog(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	for i := range 5 { // one at a time: an entry each
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: fmt.Sprint("d", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	dead := cache.NewPending(e.rdb, "dead")
	if evs, _, err := dead.Next(ctx, 10, nil); err != nil || len(evs) != 5 {
		t.Fatalf("dead flusher read %d (%v), want 5", len(evs), err)
	}
	live := cache.NewPending(e.rdb, "live")
	live.ClaimIdle = 200 * time.Millisecond
	time.Sleep(250 * time.Millisecond)
	claimed := 0
	for range 3 { // well within ClaimIdle/2 of each other
		evs, n, err := live.Claim(ctx, 2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := live.Ack(ctx, evs); err != nil {
			t.Fatal(err)
		}
		claimed += n
	}
	if claimed != 5 {
		t.Fatalf("claimed %d entries in three calls, want all 5", claimed)
	}
}

// rowsWritten reads quotad_flush_rows_written_total for table.
func rowsWritten(t *testing.T, reg *prometheus.Registry, table string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "quotad_flush_rows_written_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "table" && l.GetValue() == table {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// stubBacklog stands in for the flusher's view of the queue (Pressure),
// so that the test decides when the flusher is behind, and how far.
type stubBacklog struct {
	behind  atomic.Bool
	percent atomic.Int64 // pressure in percent when not behind
	looked  chan struct{}
}

func (b *stubBacklog) Hurry() {}

func (b *stubBacklog) Pressure() float64 {
	if b.behind.Load() {
		return 1
	}
	return float64(b.percent.Load()) / 100
}

// TestShedWhileTheFlusherIsBehind: while the flusher is behind, a
// consume and a commit are refused at once with ErrOverloaded and count
// nothing (a reservation, which adds nothing to flush, is still taken);
// once it caught up they are taken.
func TestShedWhileTheFlusherIsBehind(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	b := &stubBacklog{looked: make(chan struct{})}
	c.Pace(b)
	k := key
	k.Subject = "user:shed"
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "s0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	id := quota.NewReservationID(k, 5, now.Add(time.Minute))
	b.behind.Store(true)
	start := time.Now()
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "s1", At: now}); !errors.Is(err, quota.ErrOverloaded) {
		t.Fatalf("consume while behind: %v, want ErrOverloaded", err)
	}
	if took := time.Since(start); took > 100*time.Millisecond {
		t.Fatalf("the refusal took %v; want at once", took)
	}
	if r, err := c.Reserve(ctx, quota.ReserveOp{Key: k, ID: id, Amount: 5, Limit: 100, Enforce: true, ExpiresAt: now.Add(time.Minute), At: now}); err != nil || !r.Granted {
		t.Fatalf("reserve while behind: %+v, %v; want granted", r, err)
	}
	if _, err := c.Commit(ctx, quota.CommitOp{Key: k, ID: id, Amount: 5, EventID: "s2", At: now, ExpiresAt: now.Add(time.Minute)}); !errors.Is(err, quota.ErrOverloaded) {
		t.Fatalf("commit while behind: %v, want ErrOverloaded", err)
	}
	b.behind.Store(false)
	res, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "s3", At: time.Now()})
	if err != nil || !res.Applied || res.Used != 2 {
		t.Fatalf("consume once caught up: %+v (%v), want used 2 (the refused one counted nothing)", res, err)
	}
	if r, err := c.Commit(ctx, quota.CommitOp{Key: k, ID: id, Amount: 5, EventID: "s4", At: time.Now(), ExpiresAt: now.Add(time.Minute)}); err != nil || r.Used != 7 || r.Reserved != 0 {
		t.Fatalf("commit once caught up: %+v (%v), want used 7, nothing held", r, err)
	}
}

// TestShedAShareUnderPressure: between none and all, the flusher's
// pressure is the share of consumes refused; the others are counted.
func TestShedAShareUnderPressure(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	b := &stubBacklog{looked: make(chan struct{})}
	c.Pace(b)
	k := key
	k.Subject = "user:pressure"
	b.percent.Store(50)
	const n = 400
	var applied, shed int64
	for i := range n {
		r, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprintf("p%d", i), At: time.Now()})
		switch {
		case errors.Is(err, quota.ErrOverloaded):
			shed++
		case err != nil:
			t.Fatal(err)
		case r.Applied:
			applied++
		}
	}
	// Binomial(400, 0.5): outside [120, 280] with a probability below 1e-20.
	if shed < 120 || shed > 280 || applied != n-shed {
		t.Fatalf("pressure 0.5: %d of %d shed, %d applied", shed, n, applied)
	}
	r, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 0, EventID: "p-last", At: time.Now()})
	for errors.Is(err, quota.ErrOverloaded) {
		r, err = c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 0, EventID: "p-last", At: time.Now()})
	}
	if err != nil || r.Used != applied {
		t.Fatalf("used %d (%v), want the %d applied", r.Used, err, applied)
	}
}

// TestIdleConsumerThatReadsIsKept: a consumer idle long enough to be
// dropped reads an entry just as the drop of idle consumers decides. The
// drop must not delete it with the entry pending (the entry would be in
// no one's list: never flushed, never claimed, and the stream never
// drained past it).
func TestIdleConsumerThatReadsIsKept(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	slow := cache.NewPending(e.rdb, "slow")
	if _, _, err := slow.Next(ctx, 10, nil); err != nil { // creates the group
		t.Fatal(err)
	}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "early-1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	evs, _, err := slow.Next(ctx, 10, nil) // a read makes the consumer
	if err != nil || len(evs) != 1 {
		t.Fatalf("slow consumer read %d (%v), want 1", len(evs), err)
	}
	if err := slow.Ack(ctx, evs); err != nil { // nothing pending
		t.Fatal(err)
	}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "late-1", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // idle past the live one's ConsumerTTL
	live := cache.NewPending(e.rdb, "live")
	live.ConsumerTTL, live.ClaimIdle = 20*time.Millisecond, time.Hour
	live.BeforeDropIdle(func() {
		if evs, _, err := slow.Next(ctx, 10, nil); err != nil || len(evs) != 1 {
			t.Errorf("slow consumer read %d (%v), want 1", len(evs), err)
		}
	})
	if _, _, err := live.Claim(ctx, 10, nil); err != nil {
		t.Fatal(err)
	}
	pending, err := e.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: cache.PendingStream, Group: cache.FlushGroup,
		Start: "-", End: "+", Count: 10, Consumer: "slow"}).Result()
	if err != nil || len(pending) != 1 {
		t.Fatalf("the slow consumer's pending entries: %v (%v), want the one it read", pending, err)
	}
}

// TestOnPricesSetWhileMessagesArrive: the service sets what reloads its
// prices after the settings' bus and recovery already run, so a "prices"
// message can arrive while it is set (go test -race reported the plain
// field this was before); once set, a message runs it.
func TestOnPricesSetWhileMessagesArrive(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := cache.NewSettings(ctx, e.store, e.rdb, cache.NewHealth(e.rdb, discard), nil, time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for range 200 {
			s.Invalidate(ctx, "prices")
		}
	})
	var reloads atomic.Int64
	s.SetOnPrices(func(context.Context) { reloads.Add(1) })
	wg.Wait()
	before := reloads.Load()
	s.Invalidate(ctx, "prices")
	if reloads.Load() != before+1 {
		t.Fatalf("a prices message after SetOnPrices ran it %d times, want 1", reloads.Load()-before)
	}
}

// TestDeadFlushersEntriesClaimedAtOnce: a flusher that read entries and
// died (its alive key lapsed) has them claimed by another at its next
// claim, not after ClaimIdle; while it lives they stay its own.
func TestDeadFlushersEntriesClaimedAtOnce(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	dead := cache.NewPending(e.rdb, "dead")
	dead.AliveTTL = 300 * time.Millisecond
	if _, _, err := dead.Next(ctx, 10, nil); err != nil { // creates the group
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: fmt.Sprint("dead-", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, _, err := dead.Stats(ctx); err != nil { // it lives
		t.Fatal(err)
	}
	if evs, _, err := dead.Next(ctx, 10, nil); err != nil || len(evs) != 3 {
		t.Fatalf("the flusher read %d (%v), want 3", len(evs), err)
	}
	live := cache.NewPending(e.rdb, "live")
	live.AliveTTL, live.ClaimIdle = 300*time.Millisecond, time.Hour
	if evs, _, err := live.Claim(ctx, 10, nil); err != nil || len(evs) != 0 {
		t.Fatalf("claimed %d (%v) from a live flusher, want 0", len(evs), err)
	}
	time.Sleep(400 * time.Millisecond) // it died: its key lapses
	evs, _, err := live.Claim(ctx, 10, nil)
	if err != nil || len(evs) != 3 {
		t.Fatalf("claimed %d (%v) from a dead flusher, want 3", len(evs), err)
	}
	if err := live.Ack(ctx, evs); err != nil {
		t.Fatal(err)
	}
	if n, err := e.rdb.XLen(ctx, cache.PendingStream).Result(); err != nil || n != 0 {
		t.Fatalf("%d entries left (%v), want 0", n, err)
	}
}

// TestPooledCallForgetsItsScript: a reservation's script call whose
// request ended before it was queued goes back to the pool; the consume
// that takes it next must run as a consume, not as that script on its own
// keys (a 500, or a reserve on a consume's keys).
func TestPooledCallForgetsItsScript(t *testing.T) {
	e := newEnv(t)
	c := e.counter(t)
	k := key
	k.Subject = "user:pooled"
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 50 { // reservations whose request is gone: their calls go back to the pool at once
		id := quota.NewReservationID(k, 1, time.Now().Add(time.Minute))
		_, _ = c.Reserve(done, quota.ReserveOp{Key: k, ID: id, Amount: 1, Limit: 10, Enforce: true, ExpiresAt: time.Now().Add(time.Minute), At: time.Now()})
		res, err := c.Consume(context.Background(), quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprint("pooled-", i),
			IdempotencyKey: fmt.Sprint("k", i), RequestHash: "h", At: time.Now()})
		if err != nil || !res.Applied || res.Used != int64(i+1) { // some reservations are queued before the select sees ctx done
			t.Fatalf("consume %d after a cancelled reservation: %+v (%v)", i, res, err)
		}
	}
}

// TestRecoveryRestoresManyKeys: more idempotency keys taken on the direct
// path than one recovery call carries are all copied into Redis, chunk by
// chunk, and all their marks cleared.
func TestRecoveryRestoresManyKeys(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.counter(t)
	k := key
	k.Subject = "user:many-keys"
	const n = 1234
	for i := range n { // Postgres directly, as while Redis was unreachable
		if _, err := e.store.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprintf("mk-%d", i), IdempotencyKey: fmt.Sprintf("k%d", i), RequestHash: "h", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if recs, err := e.store.StaleIdempotency(ctx); err != nil || len(recs) != n {
		t.Fatalf("%d keys marked (%v), want %d", len(recs), err, n)
	}
	if err := c.DropStale(ctx); err != nil {
		t.Fatal(err)
	}
	pipe := e.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, n)
	for i := range n {
		cmds[i] = pipe.Exists(ctx, fmt.Sprintf("q:{%s}:i:k%d", k.Subject, i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	missing := 0
	for _, cmd := range cmds {
		if cmd.Val() != 1 {
			missing++
		}
	}
	if recs, err := e.store.StaleIdempotency(ctx); missing > 0 || err != nil || len(recs) != 0 {
		t.Fatalf("%d keys missing from redis, %d still marked (%v)", missing, len(recs), err)
	}
}
