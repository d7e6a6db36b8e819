package persist_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
)

// TestPressure: the flusher asks the consume path to refuse all new usage
// when the stream's oldest unread entry had waited longer than MaxLag on
// Redis's clock at its last look, a share rising from none at MaxLag/2 in
// between; none when flushing fails, during a flush under way for more
// than 5 × MaxLag (a hung Postgres), on a look older than a second, or
// for entries read but never acknowledged (a dead flusher's, which
// another one claims).
func TestPressure(t *testing.T) {
	ctx := context.Background()
	opt, _ := redis.ParseURL(testenv.RedisURL(t))
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	pending := cache.NewPending(rdb, "test")
	f := persist.NewFlusher(newStore(t), pending, persist.FlusherConfig{Interval: 100 * time.Millisecond, MaxLag: time.Second})
	behind := func() bool { return f.Pressure() >= 1 }

	if err := f.Look(ctx); err != nil || behind() {
		t.Fatalf("empty stream: behind %v (%v)", behind(), err)
	}
	if err := rdb.XGroupCreateMkStream(ctx, cache.PendingStream, cache.FlushGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	// Unread entries 400 ms, then 750 ms, then 4 s apart on Redis's clock
	// (ids are milliseconds).
	for _, step := range []struct {
		id   string
		want float64
	}{{"1700000000000-0", 0}, {"1700000000400-0", 0}, {"1700000000750-0", 0.5}} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: cache.PendingStream, ID: step.id, Values: []string{"e", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := f.Look(ctx); err != nil || math.Abs(f.Pressure()-step.want) > 0.01 {
			t.Fatalf("unread up to %s: pressure %v (%v), want %v", step.id, f.Pressure(), err, step.want)
		}
	}
	if err := rdb.Del(ctx, cache.PendingStream).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XGroupCreateMkStream(ctx, cache.PendingStream, cache.FlushGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1700000000000-0", "1700000004000-0"} {
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: cache.PendingStream, ID: id, Values: []string{"e", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Look(ctx); err != nil || !behind() {
		t.Fatalf("4 s of unread usage, max lag 1s: behind %v (%v)", behind(), err)
	}
	f.SetFailing(errors.New("postgres is down"))
	if behind() {
		t.Fatal("behind while flushing fails")
	}
	f.SetFailing(nil)
	if !behind() {
		t.Fatal("not behind once flushing works again")
	}
	f.SetFlushing(time.Now().Add(-300 * time.Millisecond)) // a slow flush: pacing helps it
	if !behind() {
		t.Fatal("not behind during a flush under way for less than 5 × max lag")
	}
	f.SetFlushing(time.Now().Add(-6 * time.Second)) // a hung one: pacing cannot
	if behind() {
		t.Fatal("behind during a flush under way for more than 5 × max lag")
	}
	f.SetFlushing(time.Time{})
	time.Sleep(1100 * time.Millisecond) // no look for longer than a second: the flusher cannot read the stream
	if behind() {
		t.Fatal("behind on a look more than a second old")
	}
	// Read by a flusher that then died: pending, not unread.
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: cache.FlushGroup, Consumer: "dead", Streams: []string{cache.PendingStream, ">"}, Count: 10}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := f.Look(ctx); err != nil || behind() {
		t.Fatalf("only entries read and left by a dead flusher: behind %v (%v)", behind(), err)
	}
}
