package cache

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// InvalidateChannel carries admin changes to every instance's L1 at once;
// Bus adds the Redis database number (pub/sub channels are server-wide,
// databases are not). Messages are "<id> <kind> <args...>": kinds
// "subject <id>", "subjects" (all of them), "plan <name>", "prices",
// "counter <subject> <meter> <period start unix>", "keys" (an API key was
// revoked: every cached key is dropped).
const InvalidateChannel = "quotad:invalidate"

// Bus publishes and receives L1 invalidations over Redis pub/sub.
//
// An admin change is seen by every instance at once: Publish returns only
// after every instance that received the message has applied it (each
// one counts itself in q:inv:<id> when done), or after AckWait. Pub/sub
// is fire-and-forget, so an instance cut off from Redis misses messages:
// L1 is cleared whenever Redis comes back (see Health), and settings
// entries also expire on their own.
type Bus struct {
	rdb     redis.UniversalClient
	channel string
	log     *slog.Logger
	AckWait time.Duration
}

// NewBus returns a Bus on rdb, whose database number is db.
func NewBus(rdb redis.UniversalClient, db int, log *slog.Logger) *Bus {
	return &Bus{rdb: rdb, channel: InvalidateChannel + ":" + strconv.Itoa(db), log: log, AckWait: time.Second}
}

// Publish sends msg to every instance, this one included, and waits until
// they have applied it.
func (b *Bus) Publish(ctx context.Context, msg string) {
	id := rand.Text()
	n, err := b.rdb.Publish(ctx, b.channel, id+" "+msg).Result()
	if err != nil {
		b.log.Warn("publish invalidation failed; other instances see the change when their L1 entries expire", "msg", msg, "err", err)
		return
	}
	deadline := time.Now().Add(b.AckWait)
	for {
		done, err := b.rdb.Get(ctx, ackKey(id)).Int64()
		if err == nil && done >= n || err != nil && !errors.Is(err, redis.Nil) {
			return
		}
		if time.Now().After(deadline) {
			b.log.Warn("not every instance confirmed an invalidation in time", "msg", msg, "receivers", n, "confirmed", done)
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// Run delivers messages to handle until ctx ends, and calls resubscribed
// whenever the subscription is made again after its connection broke:
// messages sent meanwhile were missed (an instance whose own Redis calls
// never failed would not know otherwise). It returns once the first
// subscription is confirmed (or after a failed first try, while it keeps
// reconnecting in the background).
func (b *Bus) Run(ctx context.Context, handle func(msg string), resubscribed func()) {
	sub := b.rdb.Subscribe(ctx, b.channel)
	if _, err := sub.Receive(ctx); err != nil {
		b.log.Warn("subscribe to invalidations failed; retrying in the background", "err", err)
	}
	go func() {
		defer sub.Close()
		ch := sub.ChannelWithSubscriptions()
		for {
			select {
			case <-ctx.Done():
				return
			case v, ok := <-ch:
				if !ok {
					return
				}
				m, isMsg := v.(*redis.Message)
				if !isMsg {
					if s, isSub := v.(*redis.Subscription); isSub && s.Kind == "subscribe" && resubscribed != nil {
						resubscribed()
					}
					continue
				}
				id, msg, _ := strings.Cut(m.Payload, " ")
				handle(msg)
				pipe := b.rdb.Pipeline()
				pipe.Incr(ctx, ackKey(id))
				pipe.Expire(ctx, ackKey(id), time.Minute)
				_, _ = pipe.Exec(ctx)
			}
		}
	}()
}
