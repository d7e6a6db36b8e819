package cache

// The layout guard: instances of two layouts never share a Redis while
// either's usage is unflushed. Their keys and streams differ (keys.go),
// so two layouts side by side would count a subject twice over, and
// events left in the old layout's streams, once its last instance is
// gone, would never reach Postgres.
//
// Invariants:
//   - LayoutKey holds the bucket count of the layout in use; a Redis
//     without it was last used by the one-Redis layout (0), as every
//     deployment was before the key existed.
//   - An instance serves from Redis only after AdoptLayout answered nil:
//     the key names its own layout, or named another whose streams were
//     empty and whose flushers were all gone, and was switched to its
//     own with a compare-and-set.
//   - Otherwise it refuses to start (Redis reachable at start) or stays
//     on Postgres (the check is part of every recovery).

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// LayoutKey holds the number of buckets of the layout in use.
const LayoutKey = "q:layout"

// ErrLayoutInUse is a refusal: another layout's instances or events are
// still in Redis.
var ErrLayoutInUse = errors.New("redis is in use with another QUOTAD_REDIS_BUCKETS")

// switchLayout sets KEYS[1] to ARGV[2] if it still holds ARGV[1] (or is
// missing, when ARGV[1] is ""): a change seen by two instances at once is
// made by one.
var switchLayout = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
`)

// AdoptLayout makes l the layout in use in rdb, or answers an error that
// wraps ErrLayoutInUse and says what is left of the other one. Any other
// error is Redis's: nothing was decided.
func AdoptLayout(ctx context.Context, rdb redis.UniversalClient, l Layout) error {
	want := strconv.Itoa(l.Buckets())
	for range 3 { // a lost compare-and-set means another instance switched it: look again
		cur, err := rdb.Get(ctx, LayoutKey).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read %s: %w", LayoutKey, err)
		}
		if cur == want {
			return nil
		}
		held := 0 // a Redis without the key: the one-Redis layout
		if cur != "" {
			if held, err = strconv.Atoi(cur); err != nil || held < 0 || held > MaxBuckets {
				return fmt.Errorf("%w: %s holds %q, not a bucket count", ErrLayoutInUse, LayoutKey, cur)
			}
		}
		if held != l.Buckets() { // a missing key for the one-Redis layout itself only needs writing
			if err := layoutIdle(ctx, rdb, NewLayout(held)); err != nil {
				return err
			}
		}
		ok, err := switchLayout.Run(ctx, rdb, []string{LayoutKey}, cur, want).Int()
		if err != nil {
			return fmt.Errorf("set %s: %w", LayoutKey, err)
		}
		if ok == 1 {
			return nil
		}
	}
	return fmt.Errorf("%w: %s keeps changing", ErrLayoutInUse, LayoutKey)
}

// layoutIdle answers nil if old has no unflushed event and no running
// flusher in rdb.
func layoutIdle(ctx context.Context, rdb redis.UniversalClient, old Layout) error {
	pipe := rdb.Pipeline()
	lens := make([]*redis.IntCmd, 0, len(old.Streams()))
	for _, s := range old.Streams() {
		lens = append(lens, pipe.XLen(ctx, s))
	}
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	var entries int64
	for _, c := range lens {
		n, err := c.Result()
		if err != nil {
			return fmt.Errorf("look at the pending streams of QUOTAD_REDIS_BUCKETS=%d: %w", old.Buckets(), err)
		}
		entries += n
	}
	live, err := LiveFlushers(ctx, rdb, old)
	if err != nil {
		return err
	}
	if entries > 0 || len(live) > 0 {
		return fmt.Errorf("%w: QUOTAD_REDIS_BUCKETS=%d has %d unflushed events and %d running instances; stop every instance (each flushes its events on stop) before changing it",
			ErrLayoutInUse, old.Buckets(), entries, len(live))
	}
	return nil
}
