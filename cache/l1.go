package cache

import (
	"context"
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/quota"
)

// Snapshots is the L1 usage cache: a decorator over the L2 counter with the
// same interface. A check is answered from a snapshot while the snapshot is
// younger than TTL and the subject keeps more than NearLimit of its limit
// after the asked amount; otherwise it reads L2. Consumes through this
// instance refresh the snapshot from L2's answer; resets reach every
// instance through the Bus.
//
// Refresh ahead: a check answered from a snapshot older than TTL/2 also
// queues a read of L2 in the background, so a subject checked more often
// than every TTL/2 keeps a fresh snapshot and its checks never wait for
// Redis. The answer itself never uses a snapshot older than TTL.
//
// Invalidation races: a read of L2 that started before a reset or a Clear
// must not store what it read after them. Every invalidation bumps epoch;
// a read stores its snapshot, then looks at epoch again and drops the
// snapshot when it moved (ristretto applies Set and Del in call order, and
// the invalidation's Del comes after its bump).
//
// A snapshot is a cell the cache holds by pointer: a consume's answer or a
// refresh updates the counter's cell in place, under the cell's lock,
// instead of a ristretto Set (an allocated item, a channel send and the
// policy goroutine's work for every consume). Set is left for a counter's
// first snapshot, and for replacing one of another counter that shares the
// hash.
type Snapshots struct {
	next    L2
	c       *ristretto.Cache[uint64, *snapshot]
	seed    maphash.Seed
	ttl     int64 // nanoseconds
	near    int64 // per mille of the limit
	now     func() time.Time
	bus     *Bus
	epoch   atomic.Uint64
	refresh chan refreshRead
	// inflight marks snapshots being refreshed (slot hash%len holds the
	// hash), so a hot subject queues one refresh, not one per check.
	inflight  []atomic.Uint64
	hits      prometheus.Counter
	miss      prometheus.Counter
	refreshes prometheus.Counter
}

type refreshRead struct {
	h   uint64
	key quota.CounterKey
}

// L2 is the counter behind the snapshots: Counter in production.
type L2 interface {
	quota.Counter
	// Peek reads many counters in one round trip, without loading those
	// that are missing (ok[i] false); refresh-ahead uses it.
	Peek(ctx context.Context, keys []quota.CounterKey, at time.Time) (tallies []quota.Tally, ok []bool, err error)
	quota.Holds
}

var (
	_ quota.Counter = (*Snapshots)(nil)
	_ quota.Holds   = (*Snapshots)(nil)
)

// snapshot is one counter's cell: which counter (fixed), and its count,
// what reservations held when it was read, and when that was (under mu).
type snapshot struct {
	subject, meter string
	start          int64 // period start, unix nanoseconds
	mu             sync.Mutex
	used, reserved int64
	at             int64 // when it was read, unix nanoseconds
}

func (c *snapshot) is(k quota.CounterKey) bool {
	return c.start == k.Start.UnixNano() && c.subject == k.Subject && c.meter == k.Meter
}

func (c *snapshot) get() (t quota.Tally, at int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return quota.Tally{Used: c.used, Reserved: c.reserved}, c.at
}

// update takes a newer answer for the cell's counter. Answers about one
// counter arrive in any order: the consumes one Redis script call answered
// wake their handlers together, and a miss or a refresh may have read
// before a consume answered. Within an epoch a counter only grows (a reset
// or a reload moves the epoch), so the larger count is the later one;
// keeping it means a client's next check on this instance sees its own
// consume. A cell older than ttl takes any answer: after Redis lost data
// and reloaded a counter lower, checks get the larger count (the cautious
// side) until it is ttl old, and the lower one after. Reservations come
// and go, so what they hold is no clock: it is taken with the count it
// was read with.
func (c *snapshot) update(t quota.Tally, at, ttl int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.Used >= c.used || at-c.at >= ttl {
		c.used, c.reserved, c.at = t.Used, t.Reserved, max(at, c.at)
	}
}

// SnapshotConfig configures Snapshots.
type SnapshotConfig struct {
	TTL       time.Duration // default 1s
	NearLimit float64       // fraction of the limit; default 0.1
	MaxItems  int64         // default DefaultMaxItems
	Now       func() time.Time
	Registry  *prometheus.Registry
}

// DefaultMaxItems is how many usage snapshots, and subjects, L1 keeps
// unless told otherwise. A snapshot answers checks for one cache TTL, so
// an instance uses at most (checks per second × TTL) of them at once:
// ~60,000 on a 2-core machine with the 1 s default. It was 1,000,000:
// ristretto's admission sketches (10 counters per item, updated at random
// places on every Get) took ~100 MB, RSS at start 116 MB against 27 MB
// now. Against 1,000,000 (alternating quick runs, 2026-11-27): check-hot
// p99.9 5.3-5.8 ms against 7.2-8.1 ms, throughput 0-6 % higher;
// consume-record the same once quotad's GOGC was 200 (the 100 MB had also
// been a GC ballast: at Go's default the smaller heap was collected twice
// as often, and the consumes' p99 rose by 2 ms; see cmd/quotad). The same
// number bounds the subjects Settings keeps, for a minute each: an
// instance with more subjects active within a minute reads the rest's
// settings from Redis again (QUOTAD_L1_MAX_ITEMS raises both).
const DefaultMaxItems = 100_000

// Refresh ahead: one worker gathers the queued refreshes for up to
// refreshLinger (the snapshots stay good for another TTL/2, so waiting a
// little costs nothing) and reads them with one Peek, one Redis round trip
// for up to refreshBatch snapshots. A full queue drops the refresh (the
// snapshot then expires and the next check reads L2).
const (
	refreshQueue  = 4096
	refreshBatch  = 512
	refreshLinger = 5 * time.Millisecond
	inflightSlots = 4096
)

// NewSnapshots returns the L1 counter over next; bus may be nil (single
// instance, tests). Its refresh worker runs until ctx ends.
func NewSnapshots(ctx context.Context, next L2, bus *Bus, cfg SnapshotConfig) (*Snapshots, error) {
	if cfg.TTL <= 0 {
		cfg.TTL = time.Second
	}
	if cfg.NearLimit <= 0 {
		cfg.NearLimit = 0.1
	}
	if cfg.MaxItems <= 0 {
		cfg.MaxItems = DefaultMaxItems
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// Every snapshot costs 1, so MaxCost counts snapshots. Without
	// IgnoreInternalCost ristretto adds its own 56 bytes per item to each
	// cost, and "1,000,000" held 17,543 (TestHoldsManyCounters): the
	// bench's 20,000 subjects evicted each other.
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *snapshot]{
		NumCounters: cfg.MaxItems * 10, MaxCost: cfg.MaxItems, BufferItems: 64, ShouldUpdate: newer(int64(cfg.TTL)), IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, err
	}
	s := &Snapshots{
		next: next, c: c, seed: maphash.MakeSeed(), ttl: int64(cfg.TTL), near: int64(cfg.NearLimit * 1000), now: cfg.Now, bus: bus,
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l1_hits_total", Help: "Usage reads answered from the in-process snapshot."}),
		miss: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l1_misses_total", Help: "Usage reads the snapshot could not answer (they go to L2)."}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l1_refreshes_total",
			Help: "Snapshots read again from L2 in the background because a check found them older than half the cache TTL."}),
		refresh:  make(chan refreshRead, refreshQueue),
		inflight: make([]atomic.Uint64, inflightSlots),
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(s.hits, s.miss, s.refreshes)
	}
	go s.refreshLoop(ctx, min(refreshLinger, cfg.TTL/10))
	return s, nil
}

func (s *Snapshots) hash(k quota.CounterKey) uint64 {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(k.Subject)
	h.WriteByte(0)
	h.WriteString(k.Meter)
	var b [8]byte
	u := uint64(k.Start.UnixNano())
	for i := range b {
		b[i] = byte(u >> (8 * i))
	}
	h.Write(b[:])
	return h.Sum64()
}

// Used implements quota.Counter.
func (s *Snapshots) Used(ctx context.Context, r quota.UsageRead) (quota.Tally, error) {
	h := s.hash(r.Key)
	now := r.At.UnixNano()
	if r.At.IsZero() {
		now = s.now().UnixNano()
	}
	if snap, ok := s.c.Get(h); ok && snap.is(r.Key) {
		if t, at := snap.get(); now-at < s.ttl && r.Limit-t.Used-t.Reserved-r.Amount > r.Limit*s.near/1000 {
			s.hits.Inc()
			if now-at >= s.ttl/2 {
				s.refreshAhead(h, r.Key)
			}
			return t, nil
		}
	}
	s.miss.Inc()
	epoch := s.epoch.Load()
	t, err := s.next.Used(ctx, r)
	if err != nil {
		return quota.Tally{}, err
	}
	s.store(h, r.Key, t, now, epoch)
	return t, nil
}

// store keeps a snapshot of key read at the given time, unless an
// invalidation came after the read began (see Snapshots); it reports
// whether none did. Of two answers about one counter the cell keeps the
// larger count (see snapshot.update). An update that lands on a cell an
// invalidation has just dropped changes nothing the cache still holds.
func (s *Snapshots) store(h uint64, key quota.CounterKey, t quota.Tally, at int64, epoch uint64) bool {
	if s.epoch.Load() != epoch {
		return false
	}
	if cell, ok := s.c.Get(h); ok && cell.is(key) {
		cell.update(t, at, s.ttl)
	} else {
		s.c.Set(h, &snapshot{subject: key.Subject, meter: key.Meter, start: key.Start.UnixNano(), used: t.Used, reserved: t.Reserved, at: at}, 1)
		// ristretto admits a new key through a buffer and drops a second
		// insert of a key still in it: of stores racing to create the
		// cell, one wins, not the largest, and a check would see the
		// smaller count until the next consume or for a TTL. So a first
		// store waits for the buffer and puts its answer into whichever
		// cell the cache holds. Only first stores wait (a counter's first
		// answer on this instance, or after a Clear or an eviction).
		s.c.Wait()
		if cell, ok := s.c.Get(h); ok && cell.is(key) {
			cell.update(t, at, s.ttl)
		}
	}
	if s.epoch.Load() != epoch {
		s.c.Del(h)
		return false
	}
	return true
}

// newer returns the cache's ShouldUpdate, which ristretto calls under the
// lock of the key's shard when a Set finds the key held: by a cell of
// another counter sharing the hash, which the new cell replaces, or by a
// cell of the same counter that a racing store created after this one
// found none. Then the held cell takes the new answer (snapshot.update)
// and stays: one cell per counter, so no store updates a cell the cache
// has let go of. (cur is not shared yet: its fields need no lock.) Stores
// racing to create a counter's first cell are merged by store itself:
// ristretto drops all but one of them before they reach here.
func newer(ttl int64) func(cur, prev *snapshot) bool {
	return func(cur, prev *snapshot) bool {
		if cur.subject != prev.subject || cur.meter != prev.meter || cur.start != prev.start {
			return true
		}
		prev.update(quota.Tally{Used: cur.used, Reserved: cur.reserved}, cur.at, ttl)
		return false
	}
}

// refreshAhead queues a background read of the snapshot h, unless one is
// queued or running, or the queue is full.
func (s *Snapshots) refreshAhead(h uint64, key quota.CounterKey) {
	slot := &s.inflight[h%inflightSlots]
	if !slot.CompareAndSwap(0, h) {
		return // this snapshot is being refreshed, or another one shares the slot
	}
	select {
	case s.refresh <- refreshRead{h: h, key: key}:
	default:
		slot.Store(0)
	}
}

func (s *Snapshots) refreshLoop(ctx context.Context, linger time.Duration) {
	batch := make([]refreshRead, 0, refreshBatch)
	keys := make([]quota.CounterKey, 0, refreshBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-s.refresh:
			batch = append(batch[:0], q)
		}
		timer := time.NewTimer(linger)
	fill:
		for len(batch) < refreshBatch {
			select {
			case q := <-s.refresh:
				batch = append(batch, q)
			case <-timer.C:
				break fill
			case <-ctx.Done():
				timer.Stop()
				return
			}
		}
		timer.Stop()
		keys = keys[:0]
		for _, q := range batch {
			keys = append(keys, q.key)
		}
		epoch := s.epoch.Load()
		at := s.now().UnixNano() // the snapshots' age counts from before the read
		tallies, ok, err := s.next.Peek(ctx, keys, time.Unix(0, at))
		for i, q := range batch {
			if err == nil && ok[i] && s.store(q.h, q.key, tallies[i], at, epoch) {
				s.refreshes.Inc()
			}
			s.inflight[q.h%inflightSlots].Store(0)
		}
	}
}

// Consume implements quota.Counter and refreshes the snapshot.
func (s *Snapshots) Consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	epoch := s.epoch.Load()
	res, err := s.next.Consume(ctx, op)
	if err == nil && !res.Duplicate {
		s.store(s.hash(op.Key), op.Key, quota.Tally{Used: res.Used, Reserved: res.Reserved}, op.At.UnixNano(), epoch)
	}
	return res, err
}

// Reserve implements quota.Holds and refreshes the snapshot, so that this
// instance's next check counts the hold.
func (s *Snapshots) Reserve(ctx context.Context, op quota.ReserveOp) (quota.ReserveResult, error) {
	epoch := s.epoch.Load()
	res, err := s.next.Reserve(ctx, op)
	if err == nil {
		s.store(s.hash(op.Key), op.Key, quota.Tally{Used: res.Used, Reserved: res.Reserved}, op.At.UnixNano(), epoch)
	}
	return res, err
}

// Commit implements quota.Holds and refreshes the snapshot.
func (s *Snapshots) Commit(ctx context.Context, op quota.CommitOp) (quota.CommitResult, error) {
	epoch := s.epoch.Load()
	res, err := s.next.Commit(ctx, op)
	if err == nil && !res.Duplicate {
		s.store(s.hash(op.Key), op.Key, quota.Tally{Used: res.Used, Reserved: res.Reserved}, op.At.UnixNano(), epoch)
	}
	return res, err
}

// Release implements quota.Holds and refreshes the snapshot.
func (s *Snapshots) Release(ctx context.Context, key quota.CounterKey, id string, at time.Time) (quota.ReleaseResult, error) {
	epoch := s.epoch.Load()
	res, err := s.next.Release(ctx, key, id, at)
	if err == nil {
		s.store(s.hash(key), key, quota.Tally{Used: res.Used, Reserved: res.Reserved}, at.UnixNano(), epoch)
	}
	return res, err
}

// Reset implements quota.Counter and drops the snapshot on every instance.
func (s *Snapshots) Reset(ctx context.Context, key quota.CounterKey, at time.Time) error {
	if err := s.next.Reset(ctx, key, at); err != nil {
		return err
	}
	s.epoch.Add(1)
	s.c.Del(s.hash(key))
	if s.bus != nil {
		s.bus.Publish(ctx, "counter "+key.Subject+" "+key.Meter+" "+strconv.FormatInt(key.Start.Unix(), 10))
	}
	return nil
}

// Invalidate handles a Bus message about counters.
func (s *Snapshots) Invalidate(msg string) {
	f := strings.Fields(msg)
	if len(f) == 4 && f[0] == "counter" {
		start, err := strconv.ParseInt(f[3], 10, 64)
		if err == nil {
			s.epoch.Add(1)
			s.c.Del(s.hash(quota.CounterKey{Subject: f[1], Meter: f[2], Start: time.Unix(start, 0)}))
		}
	}
}

// Clear drops every snapshot (Redis came back: messages may have been missed).
func (s *Snapshots) Clear() {
	s.epoch.Add(1)
	s.c.Clear()
}
