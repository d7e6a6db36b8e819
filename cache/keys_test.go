package cache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// TestKeySlot: the slots Redis's documentation gives for CLUSTER KEYSLOT,
// and the bucket tags' slots in their ranges.
func TestKeySlot(t *testing.T) {
	for key, want := range map[string]uint16{"somekey": 11058, "foo{hash_tag}": 2515, "{hash_tag}": 2515, "foo{}{bar}": 8363, "123456789": 12739} {
		if got := cache.KeySlot(key); got != want {
			t.Errorf("slot of %q: %d, want %d", key, got, want)
		}
	}
	for _, n := range []int{1, 3, 16, 1024} {
		l := cache.NewLayout(n)
		streams := l.Streams()
		if len(streams) != n {
			t.Fatalf("%d buckets: %d streams", n, len(streams))
		}
		for i, s := range streams {
			if slot := int(cache.KeySlot(s)); slot < i*16384/n || slot >= (i+1)*16384/n {
				t.Errorf("%d buckets: stream %s in slot %d, outside bucket %d's range", n, s, slot, i)
			}
		}
	}
	l := cache.NewLayout(16)
	k := quota.CounterKey{Subject: "user:tagged", Meter: "credits", Start: time.Unix(1700000000, 0)}
	slot := cache.KeySlot(l.CounterKey(k))
	if cache.KeySlot(l.IdempotencyKey(k.Subject, "x")) != slot {
		t.Fatal("a subject's counter and idempotency key are in different slots")
	}
	found := false
	for _, s := range l.Streams() {
		found = found || cache.KeySlot(s) == slot
	}
	if !found {
		t.Fatalf("no stream shares slot %d with %s", slot, l.CounterKey(k))
	}
}

// TestBucketsOnOneRedis: with buckets, consumes of many subjects go to
// several streams; a flusher that read some and died has them claimed,
// and a flush writes every consume to Postgres once and empties every
// stream.
func TestBucketsOnOneRedis(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	layout := cache.NewLayout(4)
	c := e.counter(t)
	c.SetLayout(layout)
	start := time.Now().UTC().Truncate(time.Hour)
	for i := range 40 {
		k := quota.CounterKey{Subject: fmt.Sprintf("user:b%d", i), Meter: "credits", Start: start, End: start.Add(time.Hour)}
		if _, err := c.Consume(ctx, quota.ConsumeOp{Key: k, Amount: int64(i + 1), EventID: fmt.Sprint("b", i), IdempotencyKey: fmt.Sprint("k", i), At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range layout.Streams() {
		if n, err := e.rdb.XLen(ctx, s).Result(); err != nil || n == 0 {
			t.Fatalf("stream %s holds %d entries (%v): the subjects did not spread", s, n, err)
		}
	}
	if n, _ := e.rdb.Exists(ctx, cache.PendingStream).Result(); n != 0 {
		t.Fatalf("the one-Redis stream was written with buckets set")
	}
	dead := cache.NewPending(e.rdb, "dead")
	dead.SetLayout(layout)
	evs, most, err := dead.Next(ctx, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	queues := map[int]bool{}
	for _, ev := range evs {
		queues[ev.Queue] = true
	}
	if len(queues) != 4 || most != 2 {
		t.Fatalf("a read of 2 per stream got events of %d streams, most %d from one; want all 4, 2", len(queues), most)
	}
	// Readiness sums a flusher's unacknowledged entries over the streams.
	if _, _, _, err := dead.Stats(ctx); err != nil { // its heartbeat
		t.Fatal(err)
	}
	flushers, err := cache.LiveFlushers(ctx, e.rdb, layout)
	if err != nil || len(flushers) != 1 || flushers[0].Name != "dead" || flushers[0].Pending != int64(len(evs)) {
		t.Fatalf("live flushers %+v (%v), want dead with %d pending", flushers, err, len(evs))
	}
	// It goes; a flusher that left has its entries claimed at once.
	if err := dead.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	live := cache.NewPending(e.rdb, "live")
	live.SetLayout(layout)
	if err := persist.NewFlusher(e.store, live, persist.FlusherConfig{}).Drain(ctx); err != nil {
		t.Fatal(err)
	}
	var sum, rows int64
	if err := e.store.Pool().QueryRow(ctx, `SELECT coalesce(sum(amount), 0), count(*) FROM usage_ledger WHERE subject LIKE 'user:b%'`).Scan(&sum, &rows); err != nil {
		t.Fatal(err)
	}
	if sum != 40*41/2 || rows != 40 {
		t.Fatalf("ledger: %d in %d rows, want %d in 40", sum, rows, 40*41/2)
	}
	entries, _, _, err := live.Stats(ctx)
	if err != nil || entries != 0 {
		t.Fatalf("%d entries left (%v), want every stream empty", entries, err)
	}
}
