package cache

// The recovery protocol: how Redis's copy of every counter stays equal to
// Postgres's count plus the events still waiting in its subject's pending
// stream (one, or its bucket's: keys.go), through outages, restarts and
// data loss. Its invariants:
//
//  1. A counter missing from Redis is never zero: it is loaded from
//     Postgres (load), and only once every stream entry that may hold its
//     events has been flushed (its stream's oldest entry is past the
//     newest one at the time it was found missing, its horizon); a
//     counter Postgres has no row for loads at once. A copy already in
//     Redis wins (SET NX).
//  2. While Redis is unreachable, writes go to Postgres directly
//     (redisOrDirect) and mark what they changed (l2_stale). The switch
//     back to Redis waits for direct writes in flight (Health's gate),
//     then drops Redis's copies of what changed and copies the
//     idempotency keys taken directly into Redis (DropStale; subjects'
//     settings: Settings.DropStale) before Redis is used again. The
//     recovery runs from Health's probe (cmd/quotad wires it).
//  3. Every drop moves the subject's drop mark in the same step
//     (dropStale); a load that read Postgres before a drop does not store
//     what it read (loadScript checks the mark), so no load brings back
//     a count from before a direct write.
//  4. The flusher writes each event once (the ledger's key is the event
//     id; a write that may have committed is written again the careful
//     way) and deletes an entry only after its events committed.
//  5. Postgres arbitrates idempotency keys: an event whose key Postgres
//     holds for another event (taken on a direct path while the key's
//     first use waited in the stream, or taken in Redis while a direct
//     path had it) is a duplicate when flushed: no ledger row, no count,
//     and its counter is marked stale, whose Redis copy counted it; the
//     flusher then runs DropStale, so the copy reloads from Postgres by
//     invariant 1 like any other stale one.
//  6. A counter row keeps the stream position of its last reset (a
//     direct reset takes its time); events from before it that a flush
//     brings later count nothing (usage after a reset flushed before it
//     is still a window: docs/failures.md).
//
// An op whose outcome in Redis is unknown (its reply was lost) is not run
// there again (redisOrDirect). A late reply alone does not switch to
// Postgres: Health pings first (a busy core makes Redis late, not gone).
//
// Marks set after the recovery that should have taken them (a direct
// write committed after its client gave up, another instance's direct
// writes) are taken by SweepStale, every few seconds while Redis is up.
//
// A subject provisioned on a direct path while its provisioning in Redis
// waits in the stream keeps Postgres's anchor; the flusher moves the
// usage counted under Redis's to it (persist.Flusher's followAnchors).
//
// An enforce consume is not run on a direct path (ErrEnforceUnavailable),
// which does not see usage unflushed in Redis, unless its outcome in
// Redis is unknown (it must then be written with its event id) or quotad
// is set to enforce against Postgres alone (QUOTAD_DIRECT_ENFORCE=admit;
// the over-admission window of docs/failures.md).

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/periodic"
	"github.com/quotad/quotad/quota"
)

// dropStale drops stale copies (counters or subject settings) from Redis:
// for each key in keys, of the subject subjects[i], the subject's drop
// mark is set to a token no drop used before and the key deleted, in one
// step (dropScript). A load that read Postgres before the change either
// stored its copy before this (the DEL drops it) or finds the mark moved
// (see Counter.load).
func dropStale(ctx context.Context, rdb redis.UniversalClient, l Layout, subjects, keys []string) error {
	if err := dropScript.Load(ctx, rdb).Err(); err != nil {
		return err
	}
	token := rand.Text()
	for start := 0; start < len(keys); start += recoveryChunk {
		pipe := rdb.Pipeline()
		for i := start; i < min(start+recoveryChunk, len(keys)); i++ {
			dropScript.EvalSha(ctx, pipe, []string{l.dropsKey(subjects[i]), keys[i]}, token, int64(dropsTTL/time.Second))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
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

// redisOrDirect runs viaRedis while Redis is up. When Redis is down, or
// viaRedis finds it unreachable, it runs direct on Postgres instead,
// within the health gate (see Health.BeginDirect: the switch back to Redis
// waits for it) and bounded by DirectTimeout; and if Redis came back
// before the gate let it in, viaRedis again.
//
// Unless the first try may have reached Redis: a reply lost on the way
// back (a read timeout, a broken connection) leaves the outcome unknown.
// An op that must not run twice (rerun is nil: no idempotency key, a
// reset) is then never run in Redis again, even if Redis is back by now:
// it goes to Postgres with the same event id, which Postgres counts once
// however both copies reach it, and then undo drops Redis's copy of what
// it changed, which reloads once the stream is flushed past whatever the
// first try added. undo nil means the op is safe to run again in Redis.
//
// A try that only answered late leaves Redis up until a ping confirms it
// gone (Health.Failed). An op safe to run again waits for that verdict and
// tries Redis once more if Redis is still up; late again, it answers
// ErrUnavailable, which the client retries (with its key, if it sent one).
func redisOrDirect[T any](ctx context.Context, h *Health, viaRedis func() (T, error), direct func(ctx context.Context, unknown bool) (T, error), undo func(context.Context) error) (T, error) {
	unknown, late := false, 0
	for {
		if h.Up() {
			res, err := viaRedis()
			if err == nil || !h.Failed(err) {
				return res, err
			}
			unknown = undo != nil && maybeSent(err)
			if !unknown && h.Up() {
				if late++; late > 1 {
					var zero T
					return zero, fmt.Errorf("redis answered late twice, retry: %v: %w", err, quota.ErrUnavailable)
				}
				h.Settle(ctx)
				continue
			}
		}
		if h.beforeDirect != nil {
			h.beforeDirect()
		}
		if unknown {
			h.HoldDirect()
			break
		}
		if !h.BeginDirect() {
			break
		}
	}
	defer h.EndDirect()
	dctx, cancel := context.WithTimeout(ctx, DirectTimeout)
	defer cancel()
	res, err := direct(dctx, unknown)
	if err == nil && unknown && h.Up() {
		// Redis's copy is wrong until it is dropped, so a client that
		// left does not cut the drop short. Down again, or the drop late
		// or cut off, the recovery drops the copy (the direct write marked
		// it stale) before Redis serves again.
		if derr := undo(context.WithoutCancel(ctx)); derr != nil && unreachable(derr) {
			h.markDown(derr)
		}
	}
	return res, err
}

// maybeSent reports whether a failed Redis call may have reached Redis:
// anything but a failure to connect or to get a connection, or a reply
// that refused it (see refusedForNow).
func maybeSent(err error) bool {
	var refused redis.Error
	if errors.As(err, &refused) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	return !errors.Is(err, redis.ErrPoolTimeout) && !errors.Is(err, redis.ErrClosed) && !errors.Is(err, syscall.ECONNREFUSED)
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
			if c.backlog != nil {
				c.backlog.Hurry()
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
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
	dropsCmd := pipe.Get(ctx, c.layout.dropsKey(key.Subject))
	stream := c.layout.stream(key.Subject) // the one its events go to
	newestCmd := pipe.XRevRangeN(ctx, stream, "+", "-", 1)
	oldestCmd := pipe.XRangeN(ctx, stream, "-", "+", 1)
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
	stored, err := loadScript.Run(ctx, c.rdb, []string{c.layout.counterKey(key), c.layout.dropsKey(key.Subject)}, used, expireAt(key, now), ld.drops).Int()
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

// DropStale drops Redis's copies of counters that Postgres changed
// directly (while Redis was unreachable) or found to have counted a
// duplicate (invariant 5), so they reload from Postgres. It runs before
// Redis is used again, and after a flush that met duplicates.
func (c *Counter) DropStale(ctx context.Context) error {
	if err := c.restoreIdempotency(ctx); err != nil {
		return err
	}
	// A chunk at a time, each chunk's marks cleared once Redis dropped
	// its copies, as restoreIdempotency does: one transaction over every
	// mark kept them all after any chunk's timeout, and the next try had
	// to do them all again.
	dropped := 0
	for {
		n, err := c.src.TakeStaleCounters(ctx, recoveryChunk, func(keys []quota.CounterKey) error {
			subjects, names := make([]string, len(keys)), make([]string, len(keys))
			for i, k := range keys {
				subjects[i], names[i] = k.Subject, c.layout.counterKey(k)
			}
			if err := dropStale(ctx, c.slow, c.layout, subjects, names); err != nil {
				return fmt.Errorf("drop stale counters: %w", err)
			}
			return nil
		})
		dropped += n
		if err != nil || n < recoveryChunk {
			if dropped > 0 {
				c.log.Info("dropped counters changed while redis was unreachable", "counters", dropped)
			}
			return err
		}
	}
}

// restoreIdempotency copies the idempotency keys Postgres took while Redis
// was unreachable into Redis (unless Redis has them), so that a retry
// arriving through Redis now returns the first answer instead of counting
// again.
//
// It goes recoveryChunk keys at a time, each chunk's marks cleared once
// Redis has it: an outage under load leaves many keys, and one pipeline of
// them all could outlast Redis's read timeout every time it was tried,
// keeping the instance on the direct path, taking more keys, for good.
func (c *Counter) restoreIdempotency(ctx context.Context) error {
	recs, err := c.src.StaleIdempotency(ctx)
	if err != nil || len(recs) == 0 {
		return err
	}
	for chunk := range slices.Chunk(recs, recoveryChunk) {
		pipe := c.slow.Pipeline()
		for _, r := range chunk {
			ttl := c.KeyWindow - time.Since(r.At)
			if ttl <= time.Second {
				continue
			}
			applied := "0"
			if r.Applied {
				applied = "1"
			}
			val := r.RequestHash + "|" + applied + "|" + strconv.FormatInt(r.Amount, 10) + "|" + strconv.FormatInt(r.Used, 10)
			pipe.SetNX(ctx, c.layout.idempotencyKey(r.Subject, r.Key), val, ttl)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("restore idempotency keys: %w", err)
		}
		if err := c.src.ClearStaleIdempotency(ctx, chunk); err != nil {
			return err
		}
	}
	c.log.Info("copied idempotency keys taken while redis was unreachable", "keys", len(recs))
	return nil
}

// recoveryChunk is how many keys one Redis call of the recovery carries.
const recoveryChunk = 500

// SweepStale runs drop (the recovery's steps: DropStale of counters and
// settings) every interval while Redis is up, until ctx ends. A stale
// mark can be set after the recovery that should have taken it: a direct
// write whose client gave up at DirectTimeout and that Postgres committed
// later (the deadline is the client's; a frozen server still commits what
// it was sent), or a direct write of another instance still cut off from
// Redis. Swept, Redis's copy is dropped within an interval instead of at
// the next outage. The looks are two queries on partial indexes.
func SweepStale(ctx context.Context, h *Health, interval time.Duration, drop func(context.Context) error, log *slog.Logger) {
	periodic.Run(ctx, interval, func() {
		if !h.Up() {
			return // the recovery does it before Redis is used again
		}
		dctx, cancel := context.WithTimeout(ctx, interval)
		err := drop(dctx)
		cancel()
		// A slow sweep is not enough to leave Redis: a Redis starved of
		// CPU by a busy core answers late too, and switching every request
		// to Postgres for it made things worse. A connection refused or
		// reset switches; a hung Redis the request path and the probe see.
		if err != nil && !(gone(err) && h.Failed(err)) {
			log.Warn("sweep of stale copies failed; retrying", "err", err)
		}
	})
}
