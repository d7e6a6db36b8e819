package cache_test

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// cutOff answers an instance's counter on e's Redis and Postgres whose
// connections to Redis fail while cut is set, as for an instance a
// network fault separates from Redis while the others still reach it.
func (e env) cutOff(t *testing.T) (*cache.Counter, *cache.Health, *atomic.Bool) {
	t.Helper()
	cut := new(atomic.Bool)
	opt := e.rdb.Options()
	o := *opt
	o.MaxRetries = -1
	o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if cut.Load() {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return cutConn{c, cut}, nil
	}
	rdb := redis.NewClient(&o)
	t.Cleanup(func() { rdb.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h := cache.NewHealth(rdb, discard)
	c := cache.NewCounter(ctx, rdb, e.store, h, discard)
	h.Start(ctx, c.DropStale)
	if !h.Up() {
		t.Fatal("redis down")
	}
	return c, h, cut
}

type cutConn struct {
	net.Conn
	cut *atomic.Bool
}

func (c cutConn) Read(b []byte) (int, error) {
	if c.cut.Load() {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	}
	return c.Conn.Read(b)
}

func (c cutConn) Write(b []byte) (int, error) {
	if c.cut.Load() {
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: syscall.ECONNRESET}
	}
	return c.Conn.Write(b)
}

// waitUp waits for h to switch back to Redis (its recovery ran).
func waitUp(t *testing.T, h *cache.Health) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !h.Up(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the instance did not switch back to redis")
		}
	}
}

// TestIdempotencyKeyAcrossTheDirectPath: one idempotency key, two
// instances, one of them cut off from Redis; the key's consume is sent
// to both (a client retrying on another instance). Postgres decides which
// event counts, so the key counts once in Postgres and, once the flusher
// has written the other event as a duplicate and Redis's copy reloaded,
// in Redis too: whichever of the two took the key first.
func TestIdempotencyKeyAcrossTheDirectPath(t *testing.T) {
	for _, c := range []struct {
		name        string
		redisFirst  bool // the key reaches Redis before the cut-off instance's direct path
		subject     string
		idempotency string
	}{
		// The key taken in Redis and not flushed yet is not seen by the
		// direct path, which counts it again.
		{name: "redis first, not flushed", redisFirst: true, subject: "user:arb-redis-first", idempotency: "k-rf"},
		// The key taken on the direct path reaches Redis only at that
		// instance's recovery; the other instance counts it again
		// meanwhile (issue 11, finding 3).
		{name: "direct first, other instance on redis", subject: "user:arb-direct-first", idempotency: "k-df"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			x := e.counter(t)
			y, yh, cut := e.cutOff(t)
			k := key
			k.Subject = c.subject
			if _, err := x.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: c.subject + "-seed", At: time.Now()}); err != nil {
				t.Fatal(err)
			}
			op := func(id string) quota.ConsumeOp {
				return quota.ConsumeOp{Key: k, Amount: 5, EventID: id, IdempotencyKey: c.idempotency, RequestHash: "h", At: time.Now()}
			}
			if c.redisFirst {
				if res, err := x.Consume(ctx, op("ev-x")); err != nil || !res.Applied || res.Duplicate {
					t.Fatalf("through redis: %+v (%v)", res, err)
				}
			}
			cut.Store(true)
			if res, err := y.Consume(ctx, op("ev-y")); err != nil || !res.Applied {
				t.Fatalf("on the direct path: %+v (%v)", res, err)
			}
			if yh.Up() {
				t.Fatal("the cut-off instance is still on redis")
			}
			if !c.redisFirst {
				if res, err := x.Consume(ctx, op("ev-x")); err != nil || !res.Applied {
					t.Fatalf("through redis: %+v (%v)", res, err)
				}
			}
			cut.Store(false)
			waitUp(t, yh)

			p := cache.NewPending(e.rdb, "arbiter")
			f := persist.NewFlusher(e.store, p, persist.FlusherConfig{OnStale: x.DropStale})
			if err := f.Drain(ctx); err != nil {
				t.Fatal(err)
			}
			var pg, ledger int64
			if err := e.store.Pool().QueryRow(ctx, `SELECT (SELECT used FROM counters WHERE subject = $1),
				(SELECT count(*) FROM usage_ledger WHERE subject = $1 AND idempotency_key = $2)`, k.Subject, c.idempotency).Scan(&pg, &ledger); err != nil {
				t.Fatal(err)
			}
			if pg != 6 || ledger != 1 {
				t.Errorf("postgres: counter %d, %d ledger rows of the key; want 6 (1 + 5 once) and 1", pg, ledger)
			}
			for name, in := range map[string]*cache.Counter{"redis instance": x, "recovered instance": y} {
				if used, err := in.Used(ctx, quota.UsageRead{Key: k}); err != nil || used.Used != 6 {
					t.Errorf("%s reads %d (%v), want 6", name, used.Used, err)
				}
			}
			// And the key answers its first result on both, without counting.
			for name, in := range map[string]*cache.Counter{"redis instance": x, "recovered instance": y} {
				if res, err := in.Consume(ctx, op("ev-again-"+name)); err != nil || !res.Duplicate {
					t.Errorf("%s: a retry of the key: %+v (%v), want a duplicate", name, res, err)
				}
			}
		})
	}
}

// TestLateDirectWriteIsSwept: a direct write that Postgres commits after
// the recovery ran (its client gave up at DirectTimeout; a frozen
// Postgres still commits what it was sent) marks its counter stale with
// no recovery left to take the mark. The sweep drops Redis's copy, which
// reloads with the write, and copies its idempotency key into Redis.
func TestLateDirectWriteIsSwept(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := cache.NewHealth(e.rdb, discard)
	x := cache.NewCounter(ctx, e.rdb, e.store, h, discard)
	h.Start(ctx, x.DropStale)
	k := key
	k.Subject = "user:late-direct"
	if _, err := x.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: "late-0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := persist.NewFlusher(e.store, cache.NewPending(e.rdb, "late"), persist.FlusherConfig{}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	late := quota.ConsumeOp{Key: k, Amount: 5, EventID: "late-1", IdempotencyKey: "k-late", RequestHash: "h", At: time.Now()}
	if _, err := e.store.Consume(ctx, late); err != nil { // as the late commit of a direct write
		t.Fatal(err)
	}
	go cache.SweepStale(ctx, h, 100*time.Millisecond, x.DropStale, discard)
	deadline := time.Now().Add(5 * time.Second)
	for {
		used, err := x.Used(ctx, quota.UsageRead{Key: k})
		if err == nil && used.Used == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis reads %d (%v) 5 s after the late write, want 6 (1 + 5)", used.Used, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	late.EventID = "late-retry"
	if res, err := x.Consume(ctx, late); err != nil || !res.Duplicate {
		t.Fatalf("the client's retry through redis: %+v (%v), want a duplicate", res, err)
	}
}
