package cache_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
)

// TestRecoveryWaitsForDirectWrites: Redis is back while a write that went
// to Postgres directly is still running. The recovery (which lists what
// Postgres took directly) and the switch to up wait until that write ends;
// otherwise a counter reloaded into Redis in between would miss it.
func TestRecoveryWaitsForDirectWrites(t *testing.T) {
	rs := testenv.StartRedis(t, testenv.RedisOptions{})
	opt, _ := redis.ParseURL(rs.URL())
	opt.MaxRetries = -1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
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
