// Package cache holds quotad's fast tiers: L2, usage counters as Redis Lua
// scripts with a durable stream of pending usage for the write-behind
// flusher, and L1, in-process ristretto caches of settings and usage
// snapshots, invalidated across instances through Redis pub/sub.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/quota"
)

// Source is the Postgres store as the L2 tier needs it: the synchronous
// counter it loads missing counters from and falls back to when Redis is
// unreachable, and the list of counters that were changed there directly
// (so Redis's copies are stale and must be reloaded).
type Source interface {
	quota.Counter
	// Stored reads a counter and whether Postgres has a row for it.
	Stored(ctx context.Context, key quota.CounterKey) (used int64, found bool, err error)
	// TakeStaleCounters calls drop with up to limit of the counters
	// changed in Postgres directly since their Redis copy was last
	// dropped, marks them as matching again only if drop succeeds, and
	// answers how many it took.
	TakeStaleCounters(ctx context.Context, limit int, drop func([]quota.CounterKey) error) (int, error)
	// StaleIdempotency lists idempotency keys taken in Postgres directly
	// in the last 24 hours; ClearStaleIdempotency marks them copied.
	StaleIdempotency(ctx context.Context) ([]quota.IdempotencyRecord, error)
	ClearStaleIdempotency(ctx context.Context, recs []quota.IdempotencyRecord) error
}

// Counter is the L2 usage counter on Redis. It implements quota.Counter;
// while Redis is unreachable it serves from the Source (Postgres) instead
// and switches back by itself.
type Counter struct {
	rdb redis.UniversalClient
	// slow serves the recovery's bulk calls (see SetRecoveryClient).
	slow   redis.UniversalClient
	batch  *batcher
	src    Source
	health *Health
	log    *slog.Logger
	// loadWait bounds how long a consume waits for events that may be its
	// counter's to reach Postgres (see load) before it fails with
	// ErrUnavailable: under load a flush and the wait before it (the bench
	// saw lags of up to 6.4 s); longer after an instance was killed (its
	// entries wait to be claimed) or after Postgres was down.
	loadWait time.Duration
	// backlog, if set, holds consumes back while the flusher is behind.
	backlog Backlog
	shed    prometheus.Counter
	// reads counts usage reads answered by Redis (L2); those that fall back
	// to Postgres are not in it.
	reads prometheus.Counter
	// DirectEnforce runs enforce consumes against Postgres alone while
	// Redis is unreachable (available, may over-admit by the usage still
	// unflushed in Redis); false refuses them (exact). Set before serving.
	DirectEnforce bool
	// KeyWindow is how long Redis keeps a consume's idempotency key: what
	// bounds their memory, at the consume rate times this. A replay within
	// it answers the first answer. A later one is counted once all the
	// same: the flush finds Postgres holding the key (kept a day,
	// persist.IdempotencyWindow) for another event, writes nothing, and
	// Redis's copy of the counter, which counted it, is dropped and
	// reloads; it is answered as a new consume. Set before serving.
	KeyWindow time.Duration
	// layout names the keys (SetLayout); the zero Layout is one Redis's.
	layout Layout
}

var (
	_ quota.Counter = (*Counter)(nil)
	_ quota.Holds   = (*Counter)(nil)
)

// NewCounter returns the Redis counter over src. Its pipelining worker
// runs until ctx ends. One worker, not several: Redis runs one command at
// a time anyway, and one worker makes the pipelines longest. Measured with
// make bench's check-hot (server on one core): 56-59k req/s with one
// worker, 44-48k with four, less with 8 and 16; consumes did not change.
func NewCounter(ctx context.Context, rdb redis.UniversalClient, src Source, health *Health, log *slog.Logger) *Counter {
	return &Counter{rdb: rdb, slow: rdb, batch: newBatcher(ctx, rdb, 1, 256), src: src, health: health, log: log, loadWait: 10 * time.Second, KeyWindow: DefaultKeyWindow,
		reads: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l2_reads_total", Help: "Usage reads answered by Redis."}),
		shed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_consume_shed_total", Help: "Consumes and commits refused with 503 because the flusher was behind (see QUOTAD_FLUSH_MAX_LAG)."})}
}

// DefaultKeyWindow is how long Redis keeps a consume's idempotency key
// unless Counter.KeyWindow says otherwise: as long as Postgres keeps it,
// so that every replay Postgres would catch answers the first answer.
const DefaultKeyWindow = 24 * time.Hour

// keyWindowSeconds is KeyWindow as the consume script takes it.
func (c *Counter) keyWindowSeconds() int64 { return max(int64(c.KeyWindow/time.Second), 1) }

// SetWaitReplicas makes consumes, batches, reservations and commits
// answer only once n replicas have their writes (Redis's WAIT, bounded by
// replicaWait): Redis replicates asynchronously, so a write only the
// master had is lost if a replica takes its place. Writes fewer replicas
// confirmed in time are outcomes unknown (notReplicated). 0 waits for
// none. Call it before the counter serves.
func (c *Counter) SetWaitReplicas(n int) { c.batch.waitReplicas = int64(n) }

// SetLayout sets the key layout (see keys.go) of the counter and of
// its batcher, which groups consumes by stream. Call it before the
// counter serves.
func (c *Counter) SetLayout(l Layout) { c.layout = l }

// SetRecoveryClient makes the recovery's bulk calls (DropStale: copying
// keys back, dropping stale copies) go through rdb, a client of the same
// Redis with longer timeouts than the request path's: they are not on
// the request path, and a Redis slowed by a busy core must not fail them
// for good. Call it before the counter serves.
func (c *Counter) SetRecoveryClient(rdb redis.UniversalClient) { c.slow = rdb }

// Register registers the counter's metrics on reg.
func (c *Counter) Register(reg *prometheus.Registry) {
	reg.MustRegister(c.reads, c.shed, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quotad_redis_slot_moving_retries_total",
		Help: "Redis calls sent again because their cluster slot was moving to another master (TRYAGAIN, ASK, MOVED)."},
		func() float64 { return float64(c.batch.slotRetries.Load()) }))
}

// Backlog is the flusher as the consume path sees it: Pressure is the
// share of new usage to refuse (0 to 1) because it waits too long to be
// flushed.
type Backlog interface {
	Pressure() float64
	// Hurry asks for a flush soon: a load waits for one.
	Hurry()
}

// Pace makes consumes through Redis refused as b's pressure says, and a
// load waiting for the stream to drain hurry b's next flush; call it
// before the counter serves.
func (c *Counter) Pace(b Backlog) { c.backlog = b }

// admit refuses usage (consumes, commits) with quota.ErrOverloaded, each
// with the probability the flusher's pressure gives, while usage arrives
// faster than Postgres takes it: the unflushed backlog is what a loss of
// Redis's data would lose. Refusing at once, instead of holding requests
// until the flusher catches up, keeps the admitted ones fast and the
// backlog bounded: holding them filled every connection with waiting
// requests and served almost none. The flusher has no pressure while
// flushes fail or hang (Postgres down): then Redis serves and the backlog
// grows, as an outage needs.
func (c *Counter) admit() error {
	if c.backlog == nil {
		return nil
	}
	if p := c.backlog.Pressure(); p >= 1 || (p > 0 && rand.Float64() < p) {
		c.shed.Inc()
		return fmt.Errorf("usage arrives faster than it is written to postgres: %w", quota.ErrOverloaded)
	}
	return nil
}

// holdMember is a hold's member in its counter's holds set.
func holdMember(amount int64, id string) string { return strconv.FormatInt(amount, 10) + ":" + id }

// sumHolds adds up the amounts of hold members ("<amount>:<id>").
func sumHolds(reply any) (int64, error) {
	members, _ := reply.([]any)
	var sum int64
	for _, m := range members {
		s, _ := m.(string)
		a, _, ok := strings.Cut(s, ":")
		n, err := strconv.ParseInt(a, 10, 64)
		if !ok || err != nil {
			return 0, fmt.Errorf("hold %q is malformed", s)
		}
		sum += n
	}
	return sum, nil
}

// count decodes a count a script answered. Scripts answer counts as
// decimal strings (see exactLua): a Lua number would round one past 2^53.
func count(v any) (int64, bool) {
	switch v := v.(type) {
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		return n, err == nil
	case int64: // a script's 0 or 1
		return v, true
	}
	return 0, false
}

// Used implements quota.Counter: the Redis value, loaded from Postgres when
// missing.
func (c *Counter) Used(ctx context.Context, r quota.UsageRead) (quota.Tally, error) {
	if !c.health.Up() {
		return c.src.Used(ctx, r)
	}
	ck, hk := c.layout.counterKey(r.Key), c.layout.holdsKey(r.Key)
	at := r.At
	if at.IsZero() {
		at = time.Now()
	}
	for range 2 {
		t, err := c.get(ctx, ck, hk, at.UnixMilli())
		if err == nil {
			c.reads.Inc()
			return t, nil
		}
		if !errors.Is(err, redis.Nil) {
			if c.health.Failed(err) {
				return c.src.Used(ctx, r)
			}
			return quota.Tally{}, err
		}
		loaded, err := c.load(ctx, r.Key, time.Now(), &loading{})
		if err != nil {
			if c.health.Failed(err) {
				return c.src.Used(ctx, r)
			}
			return quota.Tally{}, err
		}
		if !loaded { // events maybe unflushed in the way: Postgres plus what is pending is not knowable cheaply
			return c.src.Used(ctx, r)
		}
	}
	return c.src.Used(ctx, r)
}

// Peek reads counters and their live holds at the given
// time, in one round trip, and loads none: ok[i] is false for a counter
// Redis does not hold. It answers an error while Redis is down (Postgres
// is not asked: refresh-ahead, its caller, then just lets the snapshots
// expire).
func (c *Counter) Peek(ctx context.Context, keys []quota.CounterKey, at time.Time) ([]quota.Tally, []bool, error) {
	if !c.health.Up() {
		return nil, nil, fmt.Errorf("peek: redis is down: %w", quota.ErrUnavailable)
	}
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = c.layout.counterKey(k)
	}
	// A GET each, not one MGET: on a cluster the keys are on several
	// masters, and the pipeline is split by master.
	pipe := c.rdb.Pipeline()
	gets := make([]*redis.StringCmd, len(names))
	for i, name := range names {
		gets[i] = pipe.Get(ctx, name)
	}
	live := "(" + strconv.FormatInt(at.UnixMilli(), 10)
	holds := make([]*redis.Cmd, len(keys))
	for i, k := range keys {
		holds[i] = pipe.Do(ctx, "ZRANGEBYSCORE", c.layout.holdsKey(k), live, "+inf")
	}
	cmds, _ := pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) { // Nil: a counter Redis does not hold
			c.health.Failed(err)
			return nil, nil, translate(err)
		}
	}
	tallies, ok := make([]quota.Tally, len(keys)), make([]bool, len(keys))
	n := 0
	for i, get := range gets {
		if s, err := get.Result(); err == nil {
			u, err1 := strconv.ParseInt(s, 10, 64)
			r, err2 := sumHolds(holds[i].Val())
			if err1 == nil && err2 == nil {
				tallies[i], ok[i] = quota.Tally{Used: u, Reserved: r}, true
				n++
			}
		}
	}
	c.reads.Add(float64(n))
	return tallies, ok, nil
}

// Consume implements quota.Counter with one script call (two more when the
// counter has to be loaded first).
func (c *Counter) Consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	var undo func(context.Context) error // a repeat of an idempotency key answers its first result
	if op.IdempotencyKey == "" {
		undo = c.dropper(op.Key)
	}
	return redisOrDirect(ctx, c.health,
		func() (quota.ConsumeResult, error) {
			if err := c.admit(); err != nil {
				return quota.ConsumeResult{}, err
			}
			return c.consume(ctx, op)
		},
		func(ctx context.Context, unknown bool) (quota.ConsumeResult, error) {
			if op.Enforce && !unknown && !c.DirectEnforce {
				return quota.ConsumeResult{}, quota.ErrEnforceUnavailable
			}
			return c.src.Consume(ctx, op)
		},
		undo)
}

// dropper answers a function that drops Redis's copy of key's counter.
func (c *Counter) dropper(key quota.CounterKey) func(context.Context) error {
	return func(ctx context.Context) error {
		return dropStale(ctx, c.rdb, c.layout, []string{key.Subject}, []string{c.layout.counterKey(key)})
	}
}

func (c *Counter) consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	ck := c.layout.counterKey(op.Key)
	ik := ck
	if op.IdempotencyKey != "" {
		ik = c.layout.idempotencyKey(op.Key.Subject, op.IdempotencyKey)
	}
	ev := appendConsumeEvent(make([]byte, 0, 256), &op)
	enforce := "0"
	if op.Enforce {
		enforce = "1"
	}
	keys := []string{ck, ik, c.layout.holdsKey(op.Key)}
	args := []any{op.Amount, enforce, op.Limit, op.IdempotencyKey, op.RequestHash, ev, op.At.UnixMilli(), c.keyWindowSeconds()}
	var res quota.ConsumeResult
	err := c.withCounter(ctx, op.Key, op.At, func() (bool, error) {
		v1, v2, v3, err := c.batch.consume(ctx, c.layout.stream(op.Key.Subject), keys, args)
		if err != nil {
			return false, translate(err)
		}
		reserved, _ := count(v3)
		if applied, ok := v1.(int64); ok {
			used, ok := count(v2)
			if !ok {
				return false, fmt.Errorf("consume script answered %v, %v", v1, v2)
			}
			res = quota.ConsumeResult{Applied: applied == 1, Amount: op.Amount, Used: used, Reserved: reserved}
			return false, nil
		}
		switch v1 {
		case "dup":
			prev, _ := v2.(string)
			res, err = firstAnswer(prev, op)
			res.Reserved = reserved
			return false, err
		case "err":
			return false, translate(fmt.Errorf("consume: %v", v2))
		case "load": // the counter is not in Redis
			return true, nil
		}
		return false, fmt.Errorf("consume script answered %v, %v", v1, v2)
	})
	return res, err
}

// get reads a counter and its live holds at now (unix milliseconds)
// through the batcher; redis.Nil when the counter is missing.
func (c *Counter) get(ctx context.Context, key, holds string, now int64) (quota.Tally, error) {
	reply, held, err := c.batch.get(ctx, key, holds, now)
	if err != nil {
		return quota.Tally{}, err
	}
	s, ok := reply.(string)
	if !ok {
		return quota.Tally{}, fmt.Errorf("counter %s holds %v", key, reply)
	}
	used, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return quota.Tally{}, err
	}
	reserved, err := sumHolds(held)
	return quota.Tally{Used: used, Reserved: reserved}, err
}

// firstAnswer decodes the stored first answer of an idempotency key.
func firstAnswer(stored string, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	parts := strings.Split(stored, "|")
	if len(parts) != 4 {
		return quota.ConsumeResult{}, fmt.Errorf("idempotency record %q is malformed", stored)
	}
	if parts[0] != op.RequestHash {
		return quota.ConsumeResult{}, fmt.Errorf("idempotency key %q was used for a different request: %w", op.IdempotencyKey, quota.ErrConflict)
	}
	amount, err1 := strconv.ParseInt(parts[2], 10, 64)
	used, err2 := strconv.ParseInt(parts[3], 10, 64)
	if err1 != nil || err2 != nil {
		return quota.ConsumeResult{}, fmt.Errorf("idempotency record %q is malformed", stored)
	}
	return quota.ConsumeResult{Applied: parts[1] == "1", Duplicate: true, Amount: amount, Used: used}, nil
}

// Reset implements quota.Counter.
func (c *Counter) Reset(ctx context.Context, key quota.CounterKey, at time.Time) error {
	ev := appendEvent(nil, &quota.Event{ID: quota.NewEventID(at), Kind: quota.EventReset, Subject: key.Subject, Meter: key.Meter, Start: key.Start, End: key.End, At: at})
	_, err := redisOrDirect(ctx, c.health,
		func() (struct{}, error) {
			return struct{}{}, translate(resetScript.Run(ctx, c.rdb, []string{c.layout.counterKey(key), c.layout.stream(key.Subject)}, expireAt(key, at), ev).Err())
		},
		func(ctx context.Context, _ bool) (struct{}, error) { return struct{}{}, c.src.Reset(ctx, key, at) },
		c.dropper(key)) // a reset run again would zero what came after the first
	return err
}

// translate maps Redis server errors to domain errors; other errors pass.
func translate(err error) error {
	if err != nil && strings.Contains(err.Error(), "would overflow") {
		return quota.Invalid("amount", "usage would overflow the counter")
	}
	if err != nil && strings.Contains(err.Error(), "OOM command not allowed") {
		// Redis is full (maxmemory, noeviction): the unflushed usage and
		// the counters no longer fit. A script refused so wrote nothing.
		return fmt.Errorf("redis is out of memory: %w", quota.ErrUnavailable)
	}
	return err
}

// MemoryUse reads Redis's used memory and its maxmemory (0: no limit); on
// a cluster, those of the master nearest its limit, which fills first.
func MemoryUse(ctx context.Context, rdb redis.UniversalClient) (used, limit int64, err error) {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return memoryUse(ctx, rdb)
	}
	var mu sync.Mutex
	err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		u, l, err := memoryUse(ctx, node)
		mu.Lock()
		defer mu.Unlock()
		if err == nil && (limit == 0 || l > 0 && float64(u)/float64(l) > float64(used)/float64(limit)) {
			used, limit = u, l
		}
		return err
	})
	return used, limit, err
}

func memoryUse(ctx context.Context, rdb redis.UniversalClient) (used, limit int64, err error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_memory":
			used, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory":
			limit, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	return used, limit, nil
}
