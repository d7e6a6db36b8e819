package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// tiers is the storage stack the service runs on.
type tiers struct {
	stores      quota.Stores
	settings    *cache.Settings // nil for the Postgres-only tiers
	health      *cache.Health
	flusher     *persist.Flusher
	flusherDone chan struct{}
	pending     *cache.Pending // the flusher's source
	rdb         redis.UniversalClient
	bgRdb       redis.UniversalClient // the flusher's and the recovery's
	layout      cache.Layout
	feed        *cache.Feed // live changes; nil for the Postgres-only tiers
	keys        *keyEvents  // nil for the Postgres-only tiers
}

// keysMessage is the invalidation bus's message for "a key was revoked":
// every instance drops its cached keys.
const keysMessage = "keys"

// keyEvents carries keysMessage between the invalidation bus and the API
// server, which is built after the bus runs.
type keyEvents struct {
	bus    *cache.Bus
	forget atomic.Pointer[func()]
}

func (k *keyEvents) received() {
	if f := k.forget.Load(); f != nil {
		(*f)()
	}
}

// keysChanged is the API's Config.KeysChanged: nil (this instance only)
// without a bus.
func (t tiers) keysChanged() func(ctx context.Context) {
	if t.keys == nil {
		return nil
	}
	return func(ctx context.Context) { t.keys.bus.Publish(ctx, keysMessage) }
}

// onKeysChanged makes forget run when any instance revoked a key, or when
// messages may have been missed.
func (t tiers) onKeysChanged(forget func()) {
	if t.keys != nil {
		t.keys.forget.Store(&forget)
	}
}

// postgresTiers puts every request on Postgres: the benchmark baseline.
func postgresTiers(store *persist.Store) tiers {
	return tiers{stores: quota.Stores{Plans: store, Subjects: store, Prices: store, Counter: store, Reports: store}}
}

// adoptLayout makes layout the one in use in Redis (cache.AdoptLayout) so
// that a refusal stops the start with its reason. Any other error is left
// to the recovery, which runs the same check before Redis serves (at
// start too) and keeps the instance on Postgres until it passes.
func adoptLayout(ctx context.Context, rdb redis.UniversalClient, layout cache.Layout) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := cache.AdoptLayout(ctx, rdb, layout)
	if errors.Is(err, cache.ErrLayoutInUse) {
		return err
	}
	return nil
}

// fullTiers wires L1 (ristretto) over L2 (Redis) over Postgres, the
// invalidation bus and the write-behind flusher. Background work runs
// until bg ends.
func fullTiers(bg context.Context, cfg Config, store *persist.Store, reg *prometheus.Registry, log *slog.Logger) (tiers, error) {
	// Short timeouts and no retries: when Redis is gone the hot path must
	// switch to Postgres in milliseconds, not after a retry loop.
	rdb, db, cluster, err := cache.Dial(cfg.RedisURL, cache.Timeouts{Dial: 250 * time.Millisecond, Read: 250 * time.Millisecond,
		Write: 250 * time.Millisecond, Pool: 500 * time.Millisecond, PoolSize: 128})
	if err != nil {
		return tiers{}, err
	}
	// Background work (the flusher's reads and acks, the recovery) reads
	// replies of thousands of events and runs beside the requests on the
	// same cores: the request path's timeouts failed its calls under load,
	// and a flusher that cannot read leaves every cold counter's load
	// waiting. Its own client waits longer and needs few connections.
	bgRdb, _, _, err := cache.Dial(cfg.RedisURL, cache.Timeouts{Dial: 250 * time.Millisecond, Read: 5 * time.Second,
		Write: 5 * time.Second, Pool: 5 * time.Second, PoolSize: 8})
	if err != nil {
		return tiers{}, err
	}
	buckets := cfg.RedisBuckets
	if buckets < 0 { // unset: one stream on one Redis; a cluster needs buckets
		buckets = 0
		if cluster {
			buckets = cache.DefaultClusterBuckets
		}
	}
	if cluster && buckets == 0 {
		return tiers{}, fmt.Errorf("QUOTAD_REDIS_BUCKETS=0 names the one-Redis layout, whose scripts cross hash slots: a cluster needs 1 or more")
	}
	layout := cache.NewLayout(buckets)
	if err := adoptLayout(bg, bgRdb, layout); err != nil {
		return tiers{}, err
	}
	cache.Instrument(reg, rdb, bgRdb)

	health := cache.NewHealth(rdb, log)
	health.SetConfirmClient(bgRdb)
	health.Register(reg)
	bus := cache.NewBus(rdb, db, log)
	keys := &keyEvents{bus: bus}
	l2 := cache.NewCounter(bg, rdb, store, health, log)
	l2.DirectEnforce = cfg.DirectEnforce == "admit"
	l2.KeyWindow = cfg.KeyWindow
	l2.SetWaitReplicas(cfg.WaitReplicas)
	l2.SetRecoveryClient(bgRdb)
	l2.SetLayout(layout)
	l2.Register(reg)
	snaps, err := cache.NewSnapshots(bg, l2, bus, cache.SnapshotConfig{TTL: cfg.CacheTTL, NearLimit: cfg.NearLimit, MaxItems: cfg.L1MaxItems, Registry: reg})
	if err != nil {
		return tiers{}, err
	}
	settings, err := cache.NewSettings(bg, store, rdb, health, bus, time.Minute, cfg.L1MaxItems)
	if err != nil {
		return tiers{}, err
	}
	settings.SetLayout(layout)
	redisUp := prometheus.NewGauge(prometheus.GaugeOpts{Name: "quotad_redis_up", Help: "1 while Redis is reachable."})
	reg.MustRegister(redisUp)
	health.OnChange = func(up bool) {
		if up {
			redisUp.Set(1)
		} else {
			redisUp.Set(0)
		}
	}
	dropStale := func(ctx context.Context) error {
		if err := l2.DropStale(ctx); err != nil {
			return err
		}
		return settings.DropStale(ctx)
	}
	health.Start(bg, func(ctx context.Context) error {
		// Before Redis serves, at start and after every outage: a Redis
		// that was away, or lost its data, may be in use with another
		// layout by now.
		if err := cache.AdoptLayout(ctx, bgRdb, layout); err != nil {
			return err
		}
		// Counters and subject settings Postgres took directly while
		// Redis was away are stale in Redis; and invalidations may have
		// been missed.
		if err := dropStale(ctx); err != nil {
			return err
		}
		snaps.Clear()
		settings.Clear()
		keys.received()
		return nil
	})
	go cache.SweepStale(bg, health, staleSweep, dropStale, log)
	if health.Up() {
		redisUp.Set(1)
	}
	bus.Run(bg, func(msg string) {
		snaps.Invalidate(msg)
		settings.Invalidate(bg, msg)
		if msg == keysMessage {
			keys.received()
		}
	}, func() {
		snaps.Clear()
		settings.Clear()
		keys.received()
	})

	host, _ := os.Hostname()
	fcfg := flusherConfig(cfg)
	fcfg.Registry, fcfg.Logger = reg, log
	// A flush that met duplicates by idempotency key marked their counters
	// stale: Redis's copies counted them and are dropped now, not at the
	// next outage.
	fcfg.OnStale = l2.DropStale
	switch cfg.TestHook {
	case "crash-after-commit":
		fcfg.AfterCommit = func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
	case "slow-flush":
		fcfg.AfterCommit = func() { time.Sleep(400 * time.Millisecond) }
	}
	pending := cache.NewPending(bgRdb, fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano()))
	pending.ClaimIdle = cfg.FlushClaimIdle
	pending.SetLayout(layout)
	flusher := persist.NewFlusher(store, pending, fcfg)
	l2.Pace(flusher)
	done := make(chan struct{})
	go func() {
		defer close(done)
		flusher.Run(bg)
	}()
	// A stream's first snapshot comes through L1, up to a TTL old: its
	// subscription starts that far back (and a little more, for the
	// clocks of quotad and Redis).
	feed := cache.NewFeed(bg, rdb, cache.FeedConfig{Lookback: cfg.CacheTTL + 250*time.Millisecond}, log)
	feed.Register(reg)
	return tiers{
		stores:      quota.Stores{Plans: settings, Subjects: settings, Prices: settings, Counter: snaps, Holds: snaps, Reports: store},
		settings:    settings,
		health:      health,
		flusher:     flusher,
		flusherDone: done,
		pending:     pending,
		rdb:         rdb,
		bgRdb:       bgRdb,
		layout:      layout,
		feed:        feed,
		keys:        keys,
	}, nil
}

// events returns the feed as the API serves it; nil without one.
func (t tiers) events() api.Feed {
	if t.feed == nil {
		return nil
	}
	return eventsFeed{t.feed}
}

// eventsFeed adapts cache.Feed to api.Feed (adapters do not import each
// other).
type eventsFeed struct{ f *cache.Feed }

func (e eventsFeed) Subscribe(ctx context.Context, subject, lastEventID string) (api.Subscription, error) {
	s, err := e.f.Subscribe(ctx, subject, lastEventID)
	if err != nil {
		return nil, err
	}
	return eventsSub{s}, nil
}

type eventsSub struct{ *cache.Subscription }

func (s eventsSub) Next() (api.Event, bool) {
	it, ok := s.Subscription.Next()
	return api.Event{ID: it.ID, Type: it.Type, Subject: it.Subject, Data: it.Data, Missed: it.Missed, Overflow: it.Overflow}, ok
}

func (t tiers) close() {
	if t.rdb != nil {
		_ = t.rdb.Close()
	}
	if t.bgRdb != nil {
		_ = t.bgRdb.Close()
	}
}

// ready reports each store and the flush lag. Full tiers are "degraded"
// while one store is down or flushing fails, and "unavailable" when both
// are down; Postgres-only tiers are unavailable without Postgres.
func (t tiers) ready(ctx context.Context, store *persist.Store) api.Readiness {
	r := api.Readiness{Status: "ok", Stores: map[string]string{"postgres": "up"}}
	pgUp := store.Ping(ctx) == nil
	if !pgUp {
		r.Stores["postgres"] = "down"
	}
	if t.health == nil {
		if !pgUp {
			r.Status = "unavailable"
		}
		return r
	}
	redisUp := t.health.Up()
	r.Stores["redis"] = "up"
	if !redisUp {
		r.Stores["redis"] = "down"
	}
	lag, pending, flushErr := t.flusher.Status()
	r.Detail = map[string]any{"flush_lag_seconds": lag.Seconds(), "pending": pending}
	if flushErr != nil {
		r.Detail["flush_error"] = "the last flush failed; retrying"
	}
	full := false
	if redisUp {
		// Unflushed usage waits in Redis's memory: during a long Postgres
		// outage it grows until maxmemory, where Redis refuses writes and
		// consumes answer 503. Say so well before.
		if used, limit, err := cache.MemoryUse(ctx, t.rdb); err == nil && limit > 0 {
			ratio := float64(used) / float64(limit)
			r.Detail["redis_memory_used_ratio"] = ratio
			if full = ratio >= redisMemoryWarn; full {
				r.Detail["redis_memory_warning"] = "redis is nearly full; at maxmemory it refuses usage (503)"
			}
		}
		if live, err := cache.LiveFlushers(ctx, t.rdb, t.layout); err == nil {
			r.Detail["instances"] = live
		}
	}
	switch {
	case !pgUp && !redisUp:
		r.Status = "unavailable"
	case !pgUp || !redisUp || flushErr != nil || full:
		r.Status = "degraded"
	}
	return r
}

// staleSweep is how often an instance on Redis drops Redis's copies of
// what Postgres marked stale since the last recovery (cache.SweepStale).
const staleSweep = 2 * time.Second

// redisMemoryWarn is the share of Redis's maxmemory above which /readyz
// says degraded.
const redisMemoryWarn = 0.8

// flusherConfig answers the flusher's settings from quotad's.
func flusherConfig(cfg Config) persist.FlusherConfig {
	fcfg := persist.FlusherConfig{Interval: cfg.FlushInterval, Batch: cfg.FlushBatch, Max: cfg.FlushMax, MaxLag: cfg.FlushMaxLag, PaceRows: cfg.FlushPaceRows}
	if cfg.FlushPaceRows == 0 {
		fcfg.PaceRows = -1 // no pauses: 0 is "the default" to the flusher
	}
	return fcfg
}
