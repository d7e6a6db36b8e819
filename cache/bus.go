package cache

import (
	"context"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// InvalidateChannel carries admin changes to every instance's L1 at once.
// Messages are "<kind> <args...>": "subject <id>", "plan <name>",
// "prices", "counter <subject> <meter> <period start unix>".
const InvalidateChannel = "quotad:invalidate"

// Bus publishes and receives L1 invalidations over Redis pub/sub.
// Pub/sub is fire-and-forget: an instance cut off from Redis misses
// messages, so L1 is cleared whenever Redis comes back (see Health) and
// settings entries also expire on their own.
type Bus struct {
	rdb redis.UniversalClient
	log *slog.Logger
}

// NewBus returns a Bus on rdb.
func NewBus(rdb redis.UniversalClient, log *slog.Logger) *Bus { return &Bus{rdb: rdb, log: log} }

// Publish sends msg to every instance, this one included.
func (b *Bus) Publish(ctx context.Context, msg string) {
	if err := b.rdb.Publish(ctx, InvalidateChannel, msg).Err(); err != nil {
		b.log.Warn("publish invalidation failed; other instances see the change when their L1 entries expire", "msg", msg, "err", err)
	}
}

// Run delivers messages to handle until ctx ends. It returns once the
// subscription is confirmed (or after a failed first try, while it keeps
// reconnecting in the background).
func (b *Bus) Run(ctx context.Context, handle func(msg string)) {
	sub := b.rdb.Subscribe(ctx, InvalidateChannel)
	if _, err := sub.Receive(ctx); err != nil {
		b.log.Warn("subscribe to invalidations failed; retrying in the background", "err", err)
	}
	go func() {
		defer sub.Close()
		ch := sub.Channel()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-ch:
				if !ok {
					return
				}
				handle(m.Payload)
			}
		}
	}()
}
