// Package cache holds quotad's fast tiers: L2, usage counters as Redis Lua
// scripts with a durable stream of pending usage for the write-behind
// flusher, and L1, in-process ristretto caches of settings and usage
// snapshots, invalidated across instances through Redis pub/sub.
package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
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
	// TakeStaleCounters calls drop with the counters changed in Postgres
	// directly since their Redis copy was last dropped, and marks them as
	// matching again only if drop succeeds.
	TakeStaleCounters(ctx context.Context, drop func([]quota.CounterKey) error) error
	// StaleIdempotency lists idempotency keys taken in Postgres directly
	// in the last 24 hours; ClearStaleIdempotency marks them copied.
	StaleIdempotency(ctx context.Context) ([]quota.IdempotencyRecord, error)
	ClearStaleIdempotency(ctx context.Context, recs []quota.IdempotencyRecord) error
}

// Stream and consumer group of pending usage.
const (
	PendingStream = "q:pending"
	FlushGroup    = "flushers"
)

// Counter is the L2 usage counter on Redis. It implements quota.Counter;
// while Redis is unreachable it serves from the Source (Postgres) instead
// and switches back by itself.
type Counter struct {
	rdb    redis.UniversalClient
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
	return &Counter{rdb: rdb, batch: newBatcher(ctx, rdb, 1, 256), src: src, health: health, log: log, loadWait: 10 * time.Second,
		reads: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_l2_reads_total", Help: "Usage reads answered by Redis."}),
		shed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_consume_shed_total", Help: "Consumes and commits refused with 503 because the flusher was behind (see QUOTAD_FLUSH_MAX_LAG)."})}
}

// Register registers the counter's metrics on reg.
func (c *Counter) Register(reg *prometheus.Registry) { reg.MustRegister(c.reads, c.shed) }

// Backlog is the flusher as the consume path sees it: Behind reports
// whether usage waits too long to be flushed, and then a channel closed
// when it is worth asking again.
type Backlog interface {
	Behind() (<-chan struct{}, bool)
}

// Pace makes consumes through Redis refused while b is behind; call it
// before the counter serves.
func (c *Counter) Pace(b Backlog) { c.backlog = b }

// admit refuses usage (consumes, commits) with quota.ErrOverloaded while
// the flusher is behind: usage then arrives faster than Postgres takes
// it, and the unflushed backlog is what a loss of Redis's data would
// lose. Refusing at once, instead of holding requests until the flusher
// catches up, keeps the admitted ones fast and the backlog bounded:
// holding them filled every connection with waiting requests and served
// almost none. The flusher does not count itself behind while flushes
// fail or hang (Postgres down): then Redis serves and the backlog grows,
// as an outage needs.
func (c *Counter) admit() error {
	if c.backlog == nil {
		return nil
	}
	if _, behind := c.backlog.Behind(); behind {
		c.shed.Inc()
		return fmt.Errorf("usage arrives faster than it is written to postgres: %w", quota.ErrOverloaded)
	}
	return nil
}

// counterKey returns the Redis key of a counter.
func counterKey(k quota.CounterKey) string {
	return "q:{" + k.Subject + "}:c:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// holdsKey returns the Redis key of a counter's live reservations (see
// reserveScript).
func holdsKey(k quota.CounterKey) string {
	return "q:{" + k.Subject + "}:h:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// recordKey returns the Redis key of a reservation's record.
func recordKey(subject, id string) string { return "q:{" + subject + "}:r:" + id }

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

// dropsKey returns the Redis key of a subject's drop mark, a token that
// changes with every drop of the subject's stale copies, counters or
// settings (see dropStale and Counter.load).
func dropsKey(subject string) string { return "q:{" + subject + "}:drops" }

// dropStale drops stale copies (counters or subject settings) from Redis:
// for each key in keys, of the subject subjects[i], the subject's drop
// mark is set to a token no drop used before and the key deleted, in one
// step (dropScript). A load that read Postgres before the change either
// stored its copy before this (the DEL drops it) or finds the mark moved
// (see Counter.load).
func dropStale(ctx context.Context, rdb redis.UniversalClient, subjects, keys []string) error {
	if err := dropScript.Load(ctx, rdb).Err(); err != nil {
		return err
	}
	token := rand.Text()
	pipe := rdb.Pipeline()
	for i, key := range keys {
		dropScript.EvalSha(ctx, pipe, []string{dropsKey(subjects[i]), key}, token, int64(dropsTTL/time.Second))
	}
	_, err := pipe.Exec(ctx)
	return err
}

// dropsTTL is how long a drop mark lives: far longer than a load, which
// its request bounds.
const dropsTTL = 24 * time.Hour

// expireAt is when Redis may drop a counter: a day after its period ends
// (late flushes and checks near the boundary still find it), or 35 days
// after its last change for the lifetime period (it reloads from Postgres).
func expireAt(k quota.CounterKey, now time.Time) int64 {
	if k.End.IsZero() {
		return now.Add(35 * 24 * time.Hour).Unix()
	}
	return k.End.Add(24 * time.Hour).Unix()
}

// Used implements quota.Counter: the Redis value, loaded from Postgres when
// missing.
func (c *Counter) Used(ctx context.Context, r quota.UsageRead) (quota.Tally, error) {
	if !c.health.Up() {
		return c.src.Used(ctx, r)
	}
	ck, hk := counterKey(r.Key), holdsKey(r.Key)
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

// Peek reads counters with one MGET, and their live holds at the given
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
		names[i] = counterKey(k)
	}
	pipe := c.rdb.Pipeline()
	mget := pipe.MGet(ctx, names...)
	live := "(" + strconv.FormatInt(at.UnixMilli(), 10)
	holds := make([]*redis.Cmd, len(keys))
	for i, k := range keys {
		holds[i] = pipe.Do(ctx, "ZRANGEBYSCORE", holdsKey(k), live, "+inf")
	}
	_, err := pipe.Exec(ctx)
	if err != nil {
		c.health.Failed(err)
		return nil, nil, translate(err)
	}
	tallies, ok := make([]quota.Tally, len(keys)), make([]bool, len(keys))
	n := 0
	for i, v := range mget.Val() {
		if s, isString := v.(string); isString {
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
	return redisOrDirect(ctx, c.health,
		func() (quota.ConsumeResult, error) {
			if err := c.admit(); err != nil {
				return quota.ConsumeResult{}, err
			}
			return c.consume(ctx, op)
		},
		func(ctx context.Context) (quota.ConsumeResult, error) { return c.src.Consume(ctx, op) })
}

// redisOrDirect runs viaRedis while Redis is up. When Redis is down, or
// viaRedis finds it unreachable, it runs direct on Postgres instead,
// within the health gate (see Health.BeginDirect: the switch back to Redis
// waits for it) and bounded by DirectTimeout; and if Redis came back
// before the gate let it in, viaRedis again.
func redisOrDirect[T any](ctx context.Context, h *Health, viaRedis func() (T, error), direct func(context.Context) (T, error)) (T, error) {
	for {
		if h.Up() {
			res, err := viaRedis()
			if err == nil || !h.Failed(err) {
				return res, err
			}
		}
		if !h.BeginDirect() {
			break
		}
	}
	defer h.EndDirect()
	ctx, cancel := context.WithTimeout(ctx, DirectTimeout)
	defer cancel()
	return direct(ctx)
}

func (c *Counter) consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	ck := counterKey(op.Key)
	ik := ck
	if op.IdempotencyKey != "" {
		ik = "q:{" + op.Key.Subject + "}:i:" + op.IdempotencyKey
	}
	ev := appendConsumeEvent(make([]byte, 0, 256), &op)
	enforce := "0"
	if op.Enforce {
		enforce = "1"
	}
	keys := []string{ck, ik, holdsKey(op.Key)}
	args := []any{op.Amount, enforce, op.Limit, op.IdempotencyKey, op.RequestHash, ev, op.At.UnixMilli()}
	var res quota.ConsumeResult
	err := c.withCounter(ctx, op.Key, op.At, func() (bool, error) {
		v1, v2, v3, err := c.batch.consume(ctx, keys, args)
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

// withCounter runs try, which answers missing when it found key's counter
// missing from Redis; then it loads the counter from Postgres (see load)
// and tries again, for up to loadWait.
func (c *Counter) withCounter(ctx context.Context, key quota.CounterKey, at time.Time, try func() (missing bool, err error)) error {
	deadline := time.Now().Add(c.loadWait)
	var ld loading
	for {
		missing, err := try()
		if err != nil || !missing {
			return err
		}
		loaded, err := c.load(ctx, key, at, &ld)
		if err != nil {
			return err
		}
		if !loaded && time.Now().After(deadline) {
			// The events in the way have not reached Postgres in time (is
			// the flusher failing?). Not a direct write to Postgres: a load
			// of the same counter elsewhere could read Postgres before it
			// commits and leave Redis short of it for good.
			return fmt.Errorf("counter %s of %s cannot be loaded yet: usage of it may still wait to be written to postgres, retry later: %w",
				key.Meter, key.Subject, quota.ErrUnavailable)
		}
		if !loaded {
			time.Sleep(50 * time.Millisecond)
		}
	}
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

// loading is what the tries to load one counter share: the horizon, the
// subject's drop mark when the horizon was read, and whether Postgres
// has a row for the counter (once known, so that a try before the stream
// drained does not read Postgres again).
type loading struct {
	horizon string // "" until read
	drops   string
	hasRow  bool
}

// load copies a counter from Postgres into Redis, unless it is there
// already (another instance loaded it first: SET NX) or events for it may
// still wait in the pending stream (then Postgres does not hold all of
// them yet); it answers false in that case. Callers call it once they
// found the counter missing.
//
// Which events can be in the way: a counter's events are appended only
// while its key exists, so all of them are at or before the stream's
// newest entry as it was once the key was found missing (the horizon, read
// on the first try). The flusher deletes each entry it acknowledged, after
// committing it, so once the stream's oldest entry is past the horizon (or
// the stream is empty) Postgres has all of them: that is checked before
// Postgres is read. Entries appended later get larger ids, so it still
// holds at the SET. Nothing tells which entries hold this counter's
// events, so a counter with a row waits until the flusher is past the
// horizon: usually a flush. A counter Postgres has no row for never had an
// event flushed and loads at once: a new subject's first consume does not
// wait. Counters with a row are loaded after an outage (dropped as stale),
// after a loss of Redis's data, or when expired. (Keys must never be
// evicted: see README.)
//
// The other thing a load can miss is a write Postgres took directly while
// Redis was unreachable (to this instance or another): one that commits
// after the load read Postgres, and whose counter the recovery (DropStale)
// dropped from Redis before the load stores it, would leave Redis short of
// it for good. So each try reads the subject's drop mark before Postgres
// and stores the counter only if no drop came in between (loadScript);
// else it answers false: a consume tries again and reads Postgres again,
// now with the write (a check answers from Postgres). A moved drop mark
// also means the counter may have been loaded, counted events past the
// horizon and been dropped again while this load waited: the horizon is
// read again.
func (c *Counter) load(ctx context.Context, key quota.CounterKey, now time.Time, ld *loading) (bool, error) {
	// In this order: the horizon read after the drop mark it goes with,
	// the oldest entry after the horizon.
	pipe := c.rdb.Pipeline()
	dropsCmd := pipe.Get(ctx, dropsKey(key.Subject))
	newestCmd := pipe.XRevRangeN(ctx, PendingStream, "+", "-", 1)
	oldestCmd := pipe.XRangeN(ctx, PendingStream, "-", "+", 1)
	_, _ = pipe.Exec(ctx) // errors are per command
	if err := dropsCmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return false, translate(err)
	}
	for _, cmd := range []*redis.XMessageSliceCmd{newestCmd, oldestCmd} {
		if err := cmd.Err(); err != nil {
			return false, translate(err)
		}
	}
	drops := dropsCmd.Val() // "" when never dropped
	if ld.horizon == "" || drops != ld.drops {
		ld.horizon, ld.drops = "0-0", drops
		if newest := newestCmd.Val(); len(newest) > 0 {
			ld.horizon = newest[0].ID
		}
	}
	oldest := oldestCmd.Val()
	drained := len(oldest) == 0 || streamIDAfter(oldest[0].ID, ld.horizon)
	if ld.hasRow && !drained {
		return false, nil
	}
	used, found, err := c.src.Stored(ctx, key)
	if err != nil {
		return false, fmt.Errorf("load counter from postgres: %w", err)
	}
	ld.hasRow = ld.hasRow || found // a row, once there, stays
	if found && !drained {
		return false, nil
	}
	stored, err := loadScript.Run(ctx, c.rdb, []string{counterKey(key), dropsKey(key.Subject)}, used, expireAt(key, now), ld.drops).Int()
	if err != nil {
		return false, translate(err)
	}
	return stored == 1, nil
}

// streamIDAfter reports whether stream id a ("<ms>-<seq>") comes after b;
// an id that does not parse counts as not after.
func streamIDAfter(a, b string) bool {
	am, as, ok1 := parseStreamID(a)
	bm, bs, ok2 := parseStreamID(b)
	if !ok1 || !ok2 {
		return false
	}
	return am > bm || (am == bm && as > bs)
}

func parseStreamID(id string) (ms, seq uint64, ok bool) {
	m, q, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(m, 10, 64)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
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
			return struct{}{}, translate(resetScript.Run(ctx, c.rdb, []string{counterKey(key), PendingStream}, expireAt(key, at), ev).Err())
		},
		func(ctx context.Context) (struct{}, error) { return struct{}{}, c.src.Reset(ctx, key, at) })
	return err
}

// DropStale drops Redis's copies of counters that Postgres changed
// directly (while Redis was unreachable), so they reload from Postgres.
// It runs before Redis is used again.
func (c *Counter) DropStale(ctx context.Context) error {
	if err := c.restoreIdempotency(ctx); err != nil {
		return err
	}
	return c.src.TakeStaleCounters(ctx, func(keys []quota.CounterKey) error {
		subjects, names := make([]string, len(keys)), make([]string, len(keys))
		for i, k := range keys {
			subjects[i], names[i] = k.Subject, counterKey(k)
		}
		if err := dropStale(ctx, c.rdb, subjects, names); err != nil {
			return fmt.Errorf("drop stale counters: %w", err)
		}
		c.log.Info("dropped counters changed while redis was unreachable", "counters", len(keys))
		return nil
	})
}

// restoreIdempotency copies the idempotency keys Postgres took while Redis
// was unreachable into Redis (unless Redis has them), so that a retry
// arriving through Redis now returns the first answer instead of counting
// again.
func (c *Counter) restoreIdempotency(ctx context.Context) error {
	recs, err := c.src.StaleIdempotency(ctx)
	if err != nil || len(recs) == 0 {
		return err
	}
	pipe := c.rdb.Pipeline()
	for _, r := range recs {
		ttl := 24*time.Hour - time.Since(r.At)
		if ttl <= time.Second {
			continue
		}
		applied := "0"
		if r.Applied {
			applied = "1"
		}
		val := r.RequestHash + "|" + applied + "|" + strconv.FormatInt(r.Amount, 10) + "|" + strconv.FormatInt(r.Used, 10)
		pipe.SetNX(ctx, "q:{"+r.Subject+"}:i:"+r.Key, val, ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("restore idempotency keys: %w", err)
	}
	c.log.Info("copied idempotency keys taken while redis was unreachable", "keys", len(recs))
	return c.src.ClearStaleIdempotency(ctx, recs)
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

// MemoryUse reads Redis's used memory and its maxmemory (0: no limit).
func MemoryUse(ctx context.Context, rdb redis.UniversalClient) (used, limit int64, err error) {
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
