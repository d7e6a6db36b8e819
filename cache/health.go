package cache

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Health tracks whether Redis is reachable. The first connection error
// marks it down, so the hot path stops waiting on timeouts and goes to
// Postgres; a probe then pings Redis until it answers, runs the recovery
// (dropping counters Postgres changed meanwhile) and marks it up again.
type Health struct {
	rdb      redis.UniversalClient
	recover  func(ctx context.Context) error
	log      *slog.Logger
	interval time.Duration
	up       atomic.Bool
	probing  atomic.Bool
	ctx      context.Context
	// OnChange, if set, is called with the new state on every change.
	OnChange func(up bool)
}

// NewHealth returns a Health that starts down and probes Redis until ctx
// ends; recover runs before each switch to up.
func NewHealth(ctx context.Context, rdb redis.UniversalClient, recover func(ctx context.Context) error, log *slog.Logger) *Health {
	h := &Health{rdb: rdb, recover: recover, log: log, interval: 250 * time.Millisecond, ctx: ctx}
	if !h.try() {
		h.log.Warn("redis unreachable at start: serving from postgres until it answers")
		h.startProbe()
	}
	return h
}

// Up reports whether Redis is believed reachable.
func (h *Health) Up() bool { return h.up.Load() }

// Failed reports whether err means Redis is unreachable; if so it marks
// Redis down and starts probing. Errors Redis itself answered (a script
// error, redis.Nil) do not count, except while it loads its data.
func (h *Health) Failed(err error) bool {
	if !unreachable(err) {
		return false
	}
	if h.up.CompareAndSwap(true, false) {
		h.log.Warn("redis unreachable: serving from postgres", "err", err)
		if h.OnChange != nil {
			h.OnChange(false)
		}
	}
	h.startProbe()
	return true
}

func unreachable(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		return strings.HasPrefix(msg, "LOADING") || strings.HasPrefix(msg, "MASTERDOWN") || strings.HasPrefix(msg, "TRYAGAIN")
	}
	return true
}

func (h *Health) startProbe() {
	if !h.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer h.probing.Store(false)
		t := time.NewTicker(h.interval)
		defer t.Stop()
		for {
			if h.try() {
				return
			}
			select {
			case <-h.ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

func (h *Health) try() bool {
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	defer cancel()
	if err := h.rdb.Ping(ctx).Err(); err != nil {
		return false
	}
	if h.recover != nil {
		if err := h.recover(ctx); err != nil {
			h.log.Warn("redis is back but recovery failed; retrying", "err", err)
			return false
		}
	}
	if h.up.CompareAndSwap(false, true) {
		h.log.Info("redis reachable: serving from redis")
		if h.OnChange != nil {
			h.OnChange(true)
		}
	}
	return true
}
