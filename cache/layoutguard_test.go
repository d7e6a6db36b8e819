package cache_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// TestLayoutGuard: a Redis takes another QUOTAD_REDIS_BUCKETS only once
// the layout in use has no unflushed event and no running flusher; a
// refusal changes nothing.
func TestLayoutGuard(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	buckets := cache.NewLayout(4)
	layoutIs := func(want string) {
		t.Helper()
		if got, err := e.rdb.Get(ctx, cache.LayoutKey).Result(); err != nil || got != want {
			t.Fatalf("%s = %q (%v), want %q", cache.LayoutKey, got, err, want)
		}
	}
	refused := func(l cache.Layout, why string) {
		t.Helper()
		if err := cache.AdoptLayout(ctx, e.rdb, l); !errors.Is(err, cache.ErrLayoutInUse) {
			t.Fatalf("adopt %d buckets with %s: %v, want a refusal", l.Buckets(), why, err)
		}
	}

	// A Redis without the key was the one-Redis layout's: with an event
	// unflushed there, buckets are refused.
	c := e.counter(t)
	if _, err := c.Consume(ctx, quota.ConsumeOp{Key: key, Amount: 1, EventID: "g0", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	refused(buckets, "an event in q:pending")
	if n, _ := e.rdb.Exists(ctx, cache.LayoutKey).Result(); n != 0 {
		t.Fatal("a refusal wrote the layout")
	}
	one := cache.NewPending(e.rdb, "one")
	if err := persist.NewFlusher(e.store, one, persist.FlusherConfig{}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := one.Stats(ctx); err != nil { // a running flusher's heartbeat
		t.Fatal(err)
	}
	refused(buckets, "a running flusher")
	if err := one.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cache.AdoptLayout(ctx, e.rdb, buckets); err != nil {
		t.Fatal(err)
	}
	layoutIs("4")
	if err := cache.AdoptLayout(ctx, e.rdb, buckets); err != nil { // the same again: nothing to look at
		t.Fatal(err)
	}

	// Events of the bucket layout block the way back until flushed.
	c.SetLayout(buckets)
	for i := range 8 {
		k := key
		k.Subject = fmt.Sprintf("user:g%d", i)
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: 1, EventID: fmt.Sprint("g", i+1), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	refused(cache.Layout{}, "events in the buckets' streams")
	layoutIs("4")
	four := cache.NewPending(e.rdb, "four")
	four.SetLayout(buckets)
	if err := persist.NewFlusher(e.store, four, persist.FlusherConfig{}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if err := four.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cache.AdoptLayout(ctx, e.rdb, cache.Layout{}); err != nil {
		t.Fatal(err)
	}
	layoutIs("0")

	// A value that is no bucket count is refused, not guessed at.
	if err := e.rdb.Set(ctx, cache.LayoutKey, "sixteen", 0).Err(); err != nil {
		t.Fatal(err)
	}
	refused(cache.Layout{}, "a garbled key")
}
