package cache

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quotad/quotad/quota"
)

// fakeL2 stands in for the Redis counter in the L1 tests: these are about
// the snapshot logic alone (when it answers, when it reads, what it
// keeps), which no store takes part in.
type fakeL2 struct {
	quota.Counter
	quota.Holds
	used  atomic.Int64
	reads atomic.Int64
	gate  chan struct{} // when set, each read waits for a value from it
}

func (f *fakeL2) Used(ctx context.Context, r quota.UsageRead) (quota.Tally, error) {
	v := f.used.Load()
	f.reads.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	return quota.Tally{Used: v}, nil
}

func (f *fakeL2) Peek(ctx context.Context, keys []quota.CounterKey, _ time.Time) ([]quota.Tally, []bool, error) {
	f.reads.Add(1)
	used, ok := make([]quota.Tally, len(keys)), make([]bool, len(keys))
	for i := range keys {
		used[i], ok[i] = quota.Tally{Used: f.used.Load()}, true
	}
	return used, ok, nil
}

func newTestSnapshots(t *testing.T, l2 *fakeL2, now *atomic.Int64) *Snapshots {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := NewSnapshots(ctx, l2, nil, SnapshotConfig{TTL: time.Second, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.c.Close)
	return s
}

var l1Key = quota.CounterKey{Subject: "user:l1", Meter: "credits", Start: time.Unix(1_700_000_000, 0), End: time.Unix(1_700_086_400, 0)}

func check(t *testing.T, s *Snapshots, now *atomic.Int64) int64 {
	t.Helper()
	v, err := s.Used(context.Background(), quota.UsageRead{Key: l1Key, Limit: 1000, Amount: 1, At: time.Unix(0, now.Load())})
	if err != nil {
		t.Fatal(err)
	}
	s.c.Wait() // ristretto applies sets asynchronously
	return v.Used
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRefreshAhead: a check that finds its snapshot older than TTL/2 is
// answered from it and queues a background read; checks after that are
// answered from the fresh snapshot without ever waiting for L2.
func TestRefreshAhead(t *testing.T) {
	l2 := &fakeL2{}
	var now atomic.Int64
	t0 := time.Unix(1_700_000_100, 0).UnixNano()
	now.Store(t0)
	s := newTestSnapshots(t, l2, &now)

	l2.used.Store(10)
	if v := check(t, s, &now); v != 10 || l2.reads.Load() != 1 {
		t.Fatalf("first check: %d after %d reads, want 10 after 1", v, l2.reads.Load())
	}
	l2.used.Store(20) // another instance consumed
	now.Store(t0 + int64(400*time.Millisecond))
	if v := check(t, s, &now); v != 10 || l2.reads.Load() != 1 {
		t.Fatalf("young snapshot: %d after %d reads, want 10 from L1", v, l2.reads.Load())
	}
	now.Store(t0 + int64(600*time.Millisecond))
	if v := check(t, s, &now); v != 10 {
		t.Fatalf("snapshot past TTL/2: %d, want 10 (answered from L1, refreshed behind)", v)
	}
	waitFor(t, "the background refresh", func() bool { return testutil.ToFloat64(s.refreshes) == 1 })
	s.c.Wait()
	now.Store(t0 + int64(1050*time.Millisecond)) // the first snapshot would be too old now
	if v := check(t, s, &now); v != 20 {
		t.Fatalf("after the refresh: %d, want 20", v)
	}
	if hits, misses := testutil.ToFloat64(s.hits), testutil.ToFloat64(s.miss); hits != 3 || misses != 1 || l2.reads.Load() != 2 {
		t.Fatalf("hits %v, misses %v, L2 reads %d; want 3, 1, 2", hits, misses, l2.reads.Load())
	}
}

// TestInvalidationBeatsAnInFlightRead: a read of L2 that began before a
// reset reached this instance does not leave its (pre-reset) value behind.
func TestInvalidationBeatsAnInFlightRead(t *testing.T) {
	l2 := &fakeL2{gate: make(chan struct{})}
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_100, 0).UnixNano())
	s := newTestSnapshots(t, l2, &now)
	l2.used.Store(500)
	done := make(chan int64)
	go func() { done <- check(t, s, &now) }()
	waitFor(t, "the read to start", func() bool { return l2.reads.Load() == 1 })
	s.Invalidate("counter " + l1Key.Subject + " " + l1Key.Meter + " 1700000000") // the reset, from the bus
	l2.used.Store(0)
	l2.gate <- struct{}{}
	if v := <-done; v != 500 {
		t.Fatalf("in-flight read answered %d, want 500 (what it read)", v)
	}
	go func() { l2.gate <- struct{}{} }()
	if v := check(t, s, &now); v != 0 || l2.reads.Load() != 2 {
		t.Fatalf("check after the reset: %d after %d reads, want 0 read from L2", v, l2.reads.Load())
	}
}

// TestStoreKeepsTheNewerSnapshot: answers about one counter arrive in any
// order (consumes answered by one batch, a refresh read before a consume);
// the snapshot keeps the largest count, so a client's next check sees its
// own consume, until an invalidation starts a new epoch.
func TestStoreKeepsTheNewerSnapshot(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_100, 0).UnixNano())
	s := newTestSnapshots(t, &fakeL2{}, &now)
	h := s.hash(l1Key)
	store := func(used, at, want int64) {
		t.Helper()
		if !s.store(h, l1Key, quota.Tally{Used: used}, at, s.epoch.Load()) {
			t.Fatal("store dropped a snapshot with no invalidation")
		}
		s.c.Wait()
		if snap, ok := s.c.Get(h); !ok || snap.used != want {
			t.Fatalf("after storing %d: snapshot %+v (%v), want used %d", used, snap, ok, want)
		}
	}
	t0 := now.Load()
	store(11, t0, 11)                        // the later of two consumes answered together
	store(10, t0+1, 11)                      // the earlier one, whose handler ran second
	store(5, t0-int64(time.Millisecond), 11) // a refresh read before both
	store(11, t0+int64(time.Second/2), 11)   // a refresh that found no change renews it
	if snap, _ := s.c.Get(h); snap.at != t0+int64(time.Second/2) {
		t.Fatalf("snapshot read at %d, want the refresh's time", snap.at)
	}
	s.Invalidate("counter " + l1Key.Subject + " " + l1Key.Meter + " 1700000000") // a reset
	store(0, t0+int64(time.Second), 0)
}

// TestConcurrentStoresKeepTheLargest: many handlers storing the answers
// of one batch at once leave the largest count, whatever their order,
// over a snapshot the cache holds and when they create the counter's
// first one (ristretto drops all but one of racing first inserts; CI
// caught this test asserting it in its first round before store merged
// them).
func TestConcurrentStoresKeepTheLargest(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_100, 0).UnixNano())
	s := newTestSnapshots(t, &fakeL2{}, &now)
	h := s.hash(l1Key)
	s.store(h, l1Key, quota.Tally{Used: 0}, now.Load(), s.epoch.Load())
	s.c.Wait()
	for round := range 100 {
		key, h := l1Key, h
		if round%2 == 1 { // a counter no store has created a cell for yet
			key.Start = key.Start.Add(time.Duration(round) * time.Hour)
			h = s.hash(key)
		}
		base := int64(1 + round*100)
		var wg sync.WaitGroup
		for i := range 64 {
			wg.Go(func() { s.store(h, key, quota.Tally{Used: base + int64(i)}, now.Load(), s.epoch.Load()) })
		}
		wg.Wait()
		s.c.Wait()
		if snap, ok := s.c.Get(h); !ok || snap.used != base+63 {
			t.Fatalf("round %d: snapshot %+v (%v), want used %d", round, snap, ok, base+63)
		}
	}
}

// TestHoldsManyCounters: L1 keeps as many snapshots, and subjects, as it
// counts: 30,000 of each stay (ristretto's own per-item cost, counted in
// by default, once made room for about 17,500).
func TestHoldsManyCounters(t *testing.T) {
	const n = 30_000
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_100, 0).UnixNano())
	s := newTestSnapshots(t, &fakeL2{}, &now)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	settings, err := NewSettings(ctx, nil, nil, nil, nil, time.Minute, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(settings.subjects.Close)
	key := func(i int) quota.CounterKey {
		k := l1Key
		k.Subject = fmt.Sprintf("user:%d", i)
		return k
	}
	for i := range n {
		s.store(s.hash(key(i)), key(i), quota.Tally{Used: int64(i)}, now.Load(), s.epoch.Load())
		settings.cacheSubject(quota.Subject{ID: key(i).Subject, Plan: "free"})
		if i%1000 == 999 { // sets pass a buffer that drops what it cannot take
			s.c.Wait()
			settings.subjects.Wait()
		}
	}
	s.c.Wait()
	settings.subjects.Wait()
	snaps, subjects := 0, 0
	for i := range n {
		if snap, ok := s.c.Get(s.hash(key(i))); ok && snap.used == int64(i) {
			snaps++
		}
		if _, ok := settings.subjects.Get(key(i).Subject); ok {
			subjects++
		}
	}
	if snaps < n*99/100 || subjects < n*99/100 {
		t.Fatalf("of %d stored, L1 holds %d snapshots and %d subjects", n, snaps, subjects)
	}
}

// TestStaleSnapshotTakesALowerCount: after Redis lost data and reloaded a
// counter lower, the larger count stays while it is younger than TTL,
// then the lower one replaces it and checks are answered from L1 again
// (a stale larger count that refused every later answer would send each
// check to Redis until the counter grew past it).
func TestStaleSnapshotTakesALowerCount(t *testing.T) {
	var now atomic.Int64
	t0 := time.Unix(1_700_000_100, 0).UnixNano()
	now.Store(t0)
	l2 := &fakeL2{}
	s := newTestSnapshots(t, l2, &now)
	h := s.hash(l1Key)
	s.store(h, l1Key, quota.Tally{Used: 11}, t0, s.epoch.Load())
	s.c.Wait()
	s.store(h, l1Key, quota.Tally{Used: 5}, t0+int64(time.Second/2), s.epoch.Load())
	if snap, _ := s.c.Get(h); snap.used != 11 {
		t.Fatalf("a lower count within TTL: snapshot holds %d, want 11", snap.used)
	}
	l2.used.Store(5)
	now.Store(t0 + int64(time.Second)) // the snapshot is TTL old: the check reads L2
	if v := check(t, s, &now); v != 5 || l2.reads.Load() != 1 {
		t.Fatalf("check at TTL: %d after %d reads, want 5 from L2", v, l2.reads.Load())
	}
	now.Add(int64(time.Millisecond))
	if v := check(t, s, &now); v != 5 || l2.reads.Load() != 1 {
		t.Fatalf("check after: %d after %d reads, want 5 from L1", v, l2.reads.Load())
	}
}

// TestNewerKeepsOneCellPerCounter: a Set that finds the key held by a cell
// of the same counter (a racing store made it) updates that cell and keeps
// it, the larger count winning; a cell of another counter sharing the hash
// is replaced.
func TestNewerKeepsOneCellPerCounter(t *testing.T) {
	ttl := int64(time.Second)
	should := newer(ttl)
	cell := func(k quota.CounterKey, used, at int64) *snapshot {
		return &snapshot{subject: k.Subject, meter: k.Meter, start: k.Start.UnixNano(), used: used, at: at}
	}
	held := cell(l1Key, 10, 100)
	if should(cell(l1Key, 12, 90), held) {
		t.Fatal("a new cell replaced the held cell of the same counter")
	}
	if used, at := held.get(); used.Used != 12 || at != 100 {
		t.Fatalf("held cell after a larger answer: %d at %d, want 12 at 100", used, at)
	}
	if should(cell(l1Key, 11, 200), held); held.used != 12 {
		t.Fatalf("held cell after a smaller answer: %d, want 12", held.used)
	}
	other := l1Key
	other.Subject = "user:other"
	if !should(cell(other, 1, 300), held) {
		t.Fatal("a cell of another counter did not replace the held one")
	}
}

// BenchmarkStoreFirstCell: a store that creates a counter's first cell
// (a new counter on this instance, or after a Clear): Set, then the wait
// for ristretto's buffer that makes racing first stores keep the largest.
func BenchmarkStoreFirstCell(b *testing.B) {
	var now atomic.Int64
	now.Store(time.Unix(1_700_000_100, 0).UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := NewSnapshots(ctx, &fakeL2{}, nil, SnapshotConfig{TTL: time.Second, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	if err != nil {
		b.Fatal(err)
	}
	defer s.c.Close()
	keys := make([]quota.CounterKey, b.N)
	for i := range keys {
		keys[i] = l1Key
		keys[i].Subject = fmt.Sprintf("user:first-%d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		s.store(s.hash(keys[i]), keys[i], quota.Tally{Used: 1}, now.Load(), s.epoch.Load())
	}
}
