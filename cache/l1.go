package cache

import (
	"context"
	"hash/maphash"
	"strconv"
	"strings"
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
type Snapshots struct {
	next quota.Counter
	c    *ristretto.Cache[uint64, snapshot]
	seed maphash.Seed
	ttl  int64 // nanoseconds
	near int64 // per mille of the limit
	now  func() time.Time
	bus  *Bus
	hits prometheus.Counter
	miss prometheus.Counter
}

var _ quota.Counter = (*Snapshots)(nil)

type snapshot struct {
	subject, meter string
	start          int64 // period start, unix nanoseconds
	used           int64
	at             int64 // when it was read, unix nanoseconds
}

// SnapshotConfig configures Snapshots.
type SnapshotConfig struct {
	TTL       time.Duration // default 1s
	NearLimit float64       // fraction of the limit; default 0.1
	MaxItems  int64         // default 1,000,000
	Now       func() time.Time
	Registry  *prometheus.Registry
}

// NewSnapshots returns the L1 counter over next; bus may be nil (single
// instance, tests).
func NewSnapshots(next quota.Counter, bus *Bus, cfg SnapshotConfig) (*Snapshots, error) {
	if cfg.TTL <= 0 {
		cfg.TTL = time.Second
	}
	if cfg.NearLimit <= 0 {
		cfg.NearLimit = 0.1
	}
	if cfg.MaxItems <= 0 {
		cfg.MaxItems = 1_000_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c, err := ristretto.NewCache(&ristretto.Config[uint64, snapshot]{
		NumCounters: cfg.MaxItems * 10, MaxCost: cfg.MaxItems, BufferItems: 64,
	})
	if err != nil {
		return nil, err
	}
	s := &Snapshots{
		next: next, c: c, seed: maphash.MakeSeed(), ttl: int64(cfg.TTL), near: int64(cfg.NearLimit * 1000), now: cfg.Now, bus: bus,
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l1_hits_total", Help: "Usage reads answered from the in-process snapshot."}),
		miss: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l1_misses_total", Help: "Usage reads the snapshot could not answer (they go to L2)."}),
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(s.hits, s.miss)
	}
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
func (s *Snapshots) Used(ctx context.Context, r quota.UsageRead) (int64, error) {
	h := s.hash(r.Key)
	now := r.At.UnixNano()
	if r.At.IsZero() {
		now = s.now().UnixNano()
	}
	if snap, ok := s.c.Get(h); ok && now-snap.at < s.ttl && snap.start == r.Key.Start.UnixNano() &&
		snap.subject == r.Key.Subject && snap.meter == r.Key.Meter &&
		r.Limit-snap.used-r.Amount > r.Limit*s.near/1000 {
		s.hits.Inc()
		return snap.used, nil
	}
	s.miss.Inc()
	used, err := s.next.Used(ctx, r)
	if err != nil {
		return 0, err
	}
	s.c.Set(h, snapshot{subject: r.Key.Subject, meter: r.Key.Meter, start: r.Key.Start.UnixNano(), used: used, at: now}, 1)
	return used, nil
}

// Consume implements quota.Counter and refreshes the snapshot.
func (s *Snapshots) Consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	res, err := s.next.Consume(ctx, op)
	if err == nil && !res.Duplicate {
		s.c.Set(s.hash(op.Key), snapshot{subject: op.Key.Subject, meter: op.Key.Meter, start: op.Key.Start.UnixNano(), used: res.Used, at: op.At.UnixNano()}, 1)
	}
	return res, err
}

// Reset implements quota.Counter and drops the snapshot on every instance.
func (s *Snapshots) Reset(ctx context.Context, key quota.CounterKey, at time.Time) error {
	if err := s.next.Reset(ctx, key, at); err != nil {
		return err
	}
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
			s.c.Del(s.hash(quota.CounterKey{Subject: f[1], Meter: f[2], Start: time.Unix(start, 0)}))
		}
	}
}

// Clear drops every snapshot (Redis came back: messages may have been missed).
func (s *Snapshots) Clear() { s.c.Clear() }
