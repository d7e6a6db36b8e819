package cache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// TestRecoveryWaitsForDirectWrites: Redis is back while a write that went
// to Postgres directly is still running. The recovery (which lists what
// Postgres took directly) and the switch to up wait until that write ends;
// otherwise a counter reloaded into Redis in between would miss it.
func TestRecoveryWaitsForDirectWrites(t *testing.T) {
	rs, rdb := privateRedis(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var recovered atomic.Int64 // when the recovery ran, unix nanos
	h := cache.NewHealth(rdb, discard)
	h.Start(ctx, func(context.Context) error {
		recovered.Store(time.Now().UnixNano())
		return nil
	})
	if !h.Up() || !h.BeginDirect() {
		t.Fatal("redis is not up at start")
	}

	rs.Stop(t)
	if err := rdb.Ping(ctx).Err(); !h.Failed(err) {
		t.Fatalf("a ping to a stopped redis (%v) does not count as unreachable", err)
	}
	recovered.Store(0)
	if h.BeginDirect() {
		t.Fatal("BeginDirect says redis is up while it is stopped")
	}
	rs.Start(t)
	time.Sleep(time.Second) // four probe intervals: the probe has found Redis
	if h.Up() || recovered.Load() != 0 {
		t.Fatalf("redis switched up (%v) or recovered while a direct write was running", h.Up())
	}
	ended := time.Now().UnixNano()
	h.EndDirect()
	deadline := time.Now().Add(3 * time.Second)
	for !h.Up() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !h.Up() {
		t.Fatal("redis not up after the direct write ended")
	}
	if at := recovered.Load(); at < ended {
		t.Fatalf("recovery ran at %d, before the direct write ended at %d", at, ended)
	}
	if !h.BeginDirect() {
		t.Fatal("BeginDirect says redis is down after it came back")
	}
}

// pausedSource is the Postgres store with one pause: the first Stored
// call reads Postgres, then waits for release before it answers, so a
// test can act between a load's read of Postgres and its store to Redis.
type pausedSource struct {
	*persist.Store
	read, release chan struct{}
	once          sync.Once
}

func (s *pausedSource) Stored(ctx context.Context, key quota.CounterKey) (int64, bool, error) {
	used, found, err := s.Store.Stored(ctx, key)
	s.once.Do(func() {
		close(s.read)
		<-s.release
	})
	return used, found, err
}

// TestRecoveryVoidsRunningLoads: instance B has read a counter from
// Postgres to load it into Redis, and not stored it yet, when instance A
// finds Redis unreachable and takes a consume to Postgres directly. Redis
// comes back and A's recovery drops the counter from Redis (there is no
// copy yet). B's store must not land then: it would bring back the count
// without A's write, short of Postgres for good. (CI saw quotad answer one
// credit less than Postgres held after a Postgres outage during which
// Redis reads timed out under load.)
func TestRecoveryVoidsRunningLoads(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := migratedStore(ctx, t, 8)
	rs := testenv.StartRedis(t, testenv.RedisOptions{})
	k := quota.CounterKey{Subject: "user:load-race", Meter: "credits",
		Start: time.Now().UTC().Truncate(time.Hour), End: time.Now().UTC().Truncate(time.Hour).Add(time.Hour)}
	if _, err := st.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, $4, 100)`,
		k.Subject, k.Meter, k.Start, k.End); err != nil {
		t.Fatal(err)
	}
	instance := func(src cache.Source) (*cache.Counter, *cache.Health, *redis.Client) {
		opt, _ := redis.ParseURL(rs.URL())
		rdb := redis.NewClient(opt)
		t.Cleanup(func() { rdb.Close() })
		h := cache.NewHealth(rdb, discard)
		c := cache.NewCounter(ctx, rdb, src, h, discard)
		h.Start(ctx, c.DropStale)
		if !h.Up() {
			t.Fatal("redis is not up at start")
		}
		return c, h, rdb
	}
	a, ha, rdb := instance(st)
	src := &pausedSource{Store: st, read: make(chan struct{}), release: make(chan struct{})}
	b, _, _ := instance(src)

	// A check on B finds the counter missing from Redis and loads it: it
	// reads 100 from Postgres and pauses.
	loaded := make(chan error, 1)
	go func() {
		_, err := b.Used(ctx, quota.UsageRead{Key: k})
		loaded <- err
	}()
	<-src.read

	rs.Stop(t)
	if err := rdb.Ping(ctx).Err(); !ha.Failed(err) {
		t.Fatalf("a ping to a stopped redis (%v) does not count as unreachable", err)
	}
	res, err := a.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 7, EventID: "direct-1", At: time.Now()})
	if err != nil || !res.Applied || res.Used != 107 {
		t.Fatalf("consume on A while redis is down: %+v (%v), want 107 written to postgres directly", res, err)
	}
	rs.Start(t)
	deadline := time.Now().Add(3 * time.Second)
	for !ha.Up() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !ha.Up() {
		t.Fatal("A did not switch back to redis")
	}
	close(src.release) // B's load goes on, after A's recovery
	if err := <-loaded; err != nil {
		t.Fatalf("the paused check on B: %v", err)
	}
	ck := "q:{" + k.Subject + "}:c:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
	if v, err := rdb.Get(ctx, ck).Int64(); err == nil && v != 107 {
		t.Fatalf("redis holds %d after B's load, want nothing or 107", v)
	}
	for name, c := range map[string]*cache.Counter{"A": a, "B": b} {
		if used, err := c.Used(ctx, quota.UsageRead{Key: k}); err != nil || used.Used != 107 {
			t.Fatalf("%s reads %d (%v), want postgres's 107", name, used, err)
		}
	}
	if v, err := rdb.Get(ctx, ck).Int64(); err != nil || v != 107 {
		t.Fatalf("redis holds %d (%v), want 107 loaded", v, err)
	}
}

// TestBusReportsResubscription: after Redis restarts, the bus subscribes
// again and says so (quotad then clears its L1: invalidations sent while
// the subscription was down were missed, even on an instance whose own
// Redis calls never failed); messages flow again after that.
func TestBusReportsResubscription(t *testing.T) {
	rs := testenv.StartRedis(t, testenv.RedisOptions{})
	opt, _ := redis.ParseURL(rs.URL())
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus := cache.NewBus(rdb, 0, discard)
	var resubscribed atomic.Int64
	got := make(chan string, 16)
	bus.Run(ctx, func(msg string) { got <- msg }, func() { resubscribed.Add(1) })
	bus.Publish(ctx, "subject user:a")
	if msg := <-got; msg != "subject user:a" {
		t.Fatalf("got %q", msg)
	}
	if n := resubscribed.Load(); n != 0 {
		t.Fatalf("resubscribed %d times before any break", n)
	}
	rs.Stop(t)
	rs.Start(t)
	deadline := time.Now().Add(5 * time.Second)
	for resubscribed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no resubscription reported within 5 s of the restart")
		}
		time.Sleep(10 * time.Millisecond)
	}
	bus.Publish(ctx, "plan free")
	select {
	case msg := <-got:
		if msg != "plan free" {
			t.Fatalf("after the restart got %q", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no message after the resubscription")
	}
}

// TestProbeNotStrandedByAFailureAsItEnds: Redis fails again in the instant
// between the probe's switch to up and the probe's end (here: from the
// OnChange callback of that switch). That failure finds the probe still
// running and starts none; the probe must look again, or the instance
// stays on Postgres for good while Redis answers.
func TestProbeNotStrandedByAFailureAsItEnds(t *testing.T) {
	_, rdb := privateRedis(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := cache.NewHealth(rdb, discard)
	h.Start(ctx, nil)
	if !h.Up() {
		t.Fatal("redis is not up at start")
	}
	var failedAgain atomic.Bool
	h.OnChange = func(up bool) {
		if up && failedAgain.CompareAndSwap(false, true) {
			h.Failed(io.ErrUnexpectedEOF) // a request's connection broke just then
		}
	}
	h.Failed(io.ErrUnexpectedEOF)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if failedAgain.Load() && h.Up() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("redis answers, but the instance stayed down after a failure at the end of a probe")
}

// TestUnknownOutcomeIsNotRunTwiceInRedis: a consume's script ran in Redis
// but its reply was lost (Redis froze past the client's read timeout),
// and Redis is back by the time the consume would try again. Run again
// in Redis it would count twice there. It goes to Postgres with the same
// event id instead, and Redis's copy of the counter is dropped (it
// reloads from Postgres once the stream is flushed).
func TestUnknownOutcomeIsNotRunTwiceInRedis(t *testing.T) {
	rs, rdb := privateRedis(t, 200*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := migratedStore(ctx, t, 8)
	h := cache.NewHealth(rdb, discard)
	c := cache.NewCounter(ctx, rdb, st, h, discard)
	h.Start(ctx, c.DropStale)
	k := quota.CounterKey{Subject: "user:unknown-outcome", Meter: "credits", Start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "uo-0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	h.BeforeDirect(func() {
		once.Do(func() {
			rs.Resume(t) // Redis runs the script it was sent, and answers again
			for deadline := time.Now().Add(5 * time.Second); !h.Up(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Error("redis did not come back")
					return
				}
			}
		})
	})
	rs.Pause(t)
	res, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 5, EventID: "uo-1", At: time.Now()})
	if err != nil || !res.Applied {
		t.Fatalf("consume with its reply lost: %+v (%v)", res, err)
	}
	ck := "q:{" + k.Subject + "}:c:credits:" + strconv.FormatInt(k.Start.Unix(), 10)
	if v, err := rdb.Get(ctx, ck).Result(); err != redis.Nil {
		t.Fatalf("redis's counter is %q (%v); want it dropped (1 + 5 counted in redis, 5 more if run again)", v, err)
	}
	var rows int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM usage_ledger WHERE event_id = 'uo-1'`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("%d ledger rows for the consume (%v), want 1", rows, err)
	}
}

// privateRedis starts a Redis server of the test's own (to stop, pause or
// lose it) and a client of it that never retries, as quotad's; a
// readTimeout of 0 keeps the client's default.
func privateRedis(t *testing.T, readTimeout time.Duration) (*testenv.Redis, *redis.Client) {
	t.Helper()
	rs := testenv.StartRedis(t, testenv.RedisOptions{})
	opt, _ := redis.ParseURL(rs.URL())
	opt.MaxRetries = -1
	if readTimeout > 0 {
		opt.ReadTimeout = readTimeout
	}
	rdb := redis.NewClient(opt)
	t.Cleanup(func() { rdb.Close() })
	return rs, rdb
}

// TestGone: only an error that says the connection is gone counts, not a
// timeout, which a Redis starved of CPU gives as well.
func TestGone(t *testing.T) {
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{timeout, false},
		{fmt.Errorf("drop stale counters: %w", timeout), false},
		{context.DeadlineExceeded, false},
		{&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("drop: %w", syscall.ECONNRESET), true},
		{io.EOF, true},
		{errors.New("ERR unknown command"), false},
	} {
		if got := cache.Gone(c.err); got != c.want {
			t.Errorf("Gone(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestALateReplyIsDoubtedNotASwitch: a Redis call that times out while
// Redis is merely slow (frozen shorter than the confirming ping's bound)
// leaves the instance on Redis; one frozen longer switches it to Postgres.
func TestALateReplyIsDoubtedNotASwitch(t *testing.T) {
	rs, rdb := privateRedis(t, 100*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h, downs := watchedHealth(t, rdb)
	h.Start(ctx, nil)

	rs.Pause(t)
	resumed := make(chan struct{})
	go func() {
		time.Sleep(cache.ConfirmTimeout / 3)
		rs.Resume(t)
		close(resumed)
	}()
	err := rdb.Get(ctx, "k").Err()
	if !h.Failed(err) {
		t.Fatalf("a read timeout (%v) does not count as a failure of the call", err)
	}
	if !h.Up() {
		t.Fatal("one late reply switched the instance to postgres before any ping")
	}
	if n := h.LateReplies(); n != 1 {
		t.Fatalf("quotad_redis_late_total is %v after one late reply, want 1", n)
	}
	h.Settle(ctx)
	<-resumed
	if !h.Up() || downs.Load() != 0 {
		t.Fatalf("redis answered the confirming ping, yet the instance switched (up %v, %d switches)", h.Up(), downs.Load())
	}

	rs.Pause(t)
	err = rdb.Get(ctx, "k").Err()
	h.Failed(err)
	h.Settle(ctx)
	if h.Up() || downs.Load() != 1 {
		t.Fatalf("redis frozen past the ping's bound: up %v, %d switches; want down, 1", h.Up(), downs.Load())
	}
	rs.Resume(t)
	for deadline := time.Now().Add(5 * time.Second); !h.Up(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the probe did not bring redis back")
		}
	}
}

// TestKeyedConsumeThroughALateRedis: a consume with an idempotency key
// whose reply comes late is tried in Redis again once Redis answers a
// ping; it is answered (or refused as unavailable, to be retried) without
// leaving Redis, and its retries with the key count once.
func TestKeyedConsumeThroughALateRedis(t *testing.T) {
	rs, rdb := privateRedis(t, 100*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := migratedStore(ctx, t, 8)
	h, downs := watchedHealth(t, rdb)
	c := cache.NewCounter(ctx, rdb, st, h, discard)
	h.Start(ctx, c.DropStale)
	k := quota.CounterKey{Subject: "user:late-redis", Meter: "credits", Start: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	op := quota.ConsumeOp{Key: k, Amount: 1, EventID: "late-0", At: time.Now()}
	if _, err := c.Consume(ctx, op); err != nil {
		t.Fatal(err)
	}
	op = quota.ConsumeOp{Key: k, Amount: 7, EventID: "late-1", IdempotencyKey: "late-key", RequestHash: "h", At: time.Now()}
	rs.Pause(t)
	go func() {
		time.Sleep(250 * time.Millisecond)
		rs.Resume(t)
	}()
	applied := 0
	for try := 0; try < 20; try++ {
		res, err := c.Consume(ctx, op)
		if errors.Is(err, quota.ErrUnavailable) {
			continue // the client's retry
		}
		if err != nil {
			t.Fatalf("try %d: %v", try, err)
		}
		if res.Applied && !res.Duplicate {
			applied++
		}
		if res.Used != 8 {
			t.Fatalf("try %d: used %d, want 8 (1 + 7 once)", try, res.Used)
		}
		if try >= 2 {
			break
		}
	}
	if applied > 1 {
		t.Fatalf("the keyed consume was applied %d times", applied)
	}
	if downs.Load() != 0 {
		t.Fatalf("redis froze for 250 ms and answered the ping, yet the instance switched to postgres %d times", downs.Load())
	}
	ck := "q:{" + k.Subject + "}:c:credits:" + strconv.FormatInt(k.Start.Unix(), 10)
	if v, err := rdb.Get(ctx, ck).Result(); err != nil || v != "8" {
		t.Fatalf("redis's counter is %q (%v), want 8", v, err)
	}
}

// migratedStore opens the test's Postgres database with a pool of conns,
// migrated, until the test ends.
func migratedStore(ctx context.Context, tb testing.TB, conns int32) *persist.Store {
	tb.Helper()
	st, err := persist.Open(ctx, testenv.PostgresURL(tb), conns)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	return st
}

// watchedHealth is a Health of rdb that confirms doubts on a client of its
// own, as quotad's does, and counts its switches to down.
func watchedHealth(t *testing.T, rdb *redis.Client) (*cache.Health, *atomic.Int32) {
	t.Helper()
	confirm := redis.NewClient(&redis.Options{Addr: rdb.Options().Addr, MaxRetries: -1})
	t.Cleanup(func() { confirm.Close() })
	h := cache.NewHealth(rdb, discard)
	h.SetConfirmClient(confirm)
	downs := new(atomic.Int32)
	h.OnChange = func(up bool) {
		if !up {
			downs.Add(1)
		}
	}
	return h, downs
}
