package cache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/quota"
)

// Pending is the Redis stream of usage not yet in Postgres, read through a
// consumer group so that several flushers share it: each entry is
// delivered to one flusher, stays in that flusher's pending list until it
// is acknowledged, and is claimed by another flusher when it sat
// unacknowledged longer than ClaimIdle (its flusher died).
type Pending struct {
	rdb       redis.UniversalClient
	consumer  string
	ClaimIdle time.Duration
}

// NewPending returns the stream reader for consumer, a name unique to this
// process.
func NewPending(rdb redis.UniversalClient, consumer string) *Pending {
	return &Pending{rdb: rdb, consumer: consumer, ClaimIdle: 30 * time.Second}
}

func (p *Pending) ensureGroup(ctx context.Context) error {
	err := p.rdb.XGroupCreateMkStream(ctx, PendingStream, FlushGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group: %w", err)
	}
	return nil
}

// Claim returns up to n events delivered before and never acknowledged:
// first this consumer's own (a flush gave up on them), else those
// abandoned by a dead flusher (idle longer than ClaimIdle).
func (p *Pending) Claim(ctx context.Context, n int) ([]quota.Event, error) {
	own, err := p.read(ctx, "0", n)
	if isNoGroup(err) { // first start, or Redis lost its data
		if err := p.ensureGroup(ctx); err != nil {
			return nil, err
		}
		return p.Claim(ctx, n)
	}
	if err != nil || len(own) > 0 {
		return p.decode(own, err)
	}
	msgs, _, err := p.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: PendingStream, Group: FlushGroup, Consumer: p.consumer, MinIdle: p.ClaimIdle, Start: "0-0", Count: int64(n),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("claim abandoned entries: %w", err)
	}
	return p.decode(msgs, nil)
}

// Next returns up to n events never delivered to any flusher.
func (p *Pending) Next(ctx context.Context, n int) ([]quota.Event, error) {
	msgs, err := p.read(ctx, ">", n)
	if isNoGroup(err) {
		if err := p.ensureGroup(ctx); err != nil {
			return nil, err
		}
		msgs, err = p.read(ctx, ">", n)
	}
	return p.decode(msgs, err)
}

// read reads this consumer's entries after id: "0" for its own
// unacknowledged ones, ">" for new ones.
func (p *Pending) read(ctx context.Context, id string, n int) ([]redis.XMessage, error) {
	streams, err := p.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: FlushGroup, Consumer: p.consumer, Streams: []string{PendingStream, id}, Count: int64(n), Block: -1,
	}).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read pending: %w", err)
	}
	var msgs []redis.XMessage
	for _, s := range streams {
		for _, m := range s.Messages {
			if m.Values != nil { // an own entry deleted since delivery
				msgs = append(msgs, m)
			}
		}
	}
	return msgs, nil
}

func (p *Pending) decode(msgs []redis.XMessage, err error) ([]quota.Event, error) {
	if err != nil {
		return nil, err
	}
	events := make([]quota.Event, 0, len(msgs))
	for _, m := range msgs {
		ev, err := decodeEntry(m)
		if err != nil {
			return nil, err
		}
		events = append(events, ev)
	}
	return events, nil
}

func isNoGroup(err error) bool { return err != nil && strings.Contains(err.Error(), "NOGROUP") }

func decodeEntry(m redis.XMessage) (quota.Event, error) {
	raw, _ := m.Values["e"].(string)
	ev, err := decodeEvent(raw)
	if err != nil {
		return ev, fmt.Errorf("pending entry %s: %w", m.ID, err)
	}
	ev.Ref = m.ID
	if u, ok := m.Values["used"].(string); ok {
		ev.Used, _ = strconv.ParseInt(u, 10, 64)
	}
	return ev, nil
}

// Ack acknowledges events written to Postgres and lowers their counters'
// unflushed counts, once per event however often it is called.
func (p *Pending) Ack(ctx context.Context, events []quota.Event) error {
	if len(events) == 0 {
		return nil
	}
	keys := []string{PendingStream}
	index := map[string]int{}
	args := make([]any, 1, 2*len(events)+1)
	args[0] = FlushGroup
	for i := range events {
		n := 0
		if events[i].Kind != quota.EventProvision {
			_, uk := counterKeys(events[i].Key())
			if n = index[uk]; n == 0 {
				keys = append(keys, uk)
				n = len(keys) - 1
				index[uk] = n
			}
		}
		args = append(args, events[i].Ref, n)
	}
	if err := ackScript.Run(ctx, p.rdb, keys, args...).Err(); err != nil {
		return fmt.Errorf("ack %d events: %w", len(events), err)
	}
	return nil
}

// Stats returns how many events wait to be flushed and when the oldest was
// queued (zero when none).
func (p *Pending) Stats(ctx context.Context) (int64, time.Time, error) {
	n, err := p.rdb.XLen(ctx, PendingStream).Result()
	if err != nil {
		return 0, time.Time{}, err
	}
	if n == 0 {
		return 0, time.Time{}, nil
	}
	first, err := p.rdb.XRangeN(ctx, PendingStream, "-", "+", 1).Result()
	if err != nil || len(first) == 0 {
		return n, time.Time{}, err
	}
	ms, _, _ := strings.Cut(first[0].ID, "-")
	msec, _ := strconv.ParseInt(ms, 10, 64)
	return n, time.UnixMilli(msec), nil
}
