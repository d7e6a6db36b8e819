package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Health tracks whether Redis is reachable. An error that says the
// connection is gone (refused, reset, closed) marks it down at once, so the
// hot path stops waiting on timeouts and goes to Postgres. A call that
// only answered late (a timeout, no free connection) raises a doubt
// instead: one PING on a client of its own, and Redis is marked down only
// if that fails too. A Redis starved of CPU by a busy core answers late
// while it is there, and switching every request to Postgres for that
// made an overload worse. Once down, a probe pings Redis until it
// answers, runs the recovery (dropping counters Postgres changed
// meanwhile) and marks it up again.
type Health struct {
	rdb      redis.UniversalClient
	confirm  redis.UniversalClient // pings a doubt; rdb unless SetConfirmClient
	doubting atomic.Bool
	verdict  atomic.Pointer[chan struct{}] // closed when the last doubt is settled
	late     prometheus.Counter
	recover  func(ctx context.Context) error
	log      *slog.Logger
	interval time.Duration
	up       atomic.Bool
	wasUp    atomic.Bool // up once before: a switch to up ends an outage
	probing  atomic.Bool
	// direct is held shared by each write that goes to Postgres directly
	// while Redis is down, and exclusively by the switch back to up: the
	// recovery lists what Postgres changed directly, so a direct write
	// still running then would be missed, and Redis's copy of its counter
	// (reloaded from Postgres just before that write commits) would stay
	// short of Postgres by the write.
	direct sync.RWMutex
	ctx    context.Context
	// OnChange, if set, is called with the new state on every change.
	OnChange func(up bool)
	// beforeDirect, in tests, runs after a try through Redis failed and
	// before the op goes to Postgres.
	beforeDirect func()
}

// NewHealth returns a Health that reports Redis down until Start finds it.
func NewHealth(rdb redis.UniversalClient, log *slog.Logger) *Health {
	return &Health{rdb: rdb, confirm: rdb, log: log, interval: 250 * time.Millisecond, ctx: context.Background(),
		late: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_redis_late_total",
			Help: "Redis calls answered late (a timeout, no free connection, replicas short of QUOTAD_REDIS_WAIT_REPLICAS) while Redis was up: each is a doubt a ping settles; quotad_redis_up says whether one switched to Postgres."})}
}

// Register registers the health's metrics on reg.
func (h *Health) Register(reg *prometheus.Registry) { reg.MustRegister(h.late) }

// SetConfirmClient makes doubts pinged on c: a client whose connections
// the requests do not hold, so a full pool or a queue of slow requests
// does not fail the ping too. Call it before Start.
func (h *Health) SetConfirmClient(c redis.UniversalClient) { h.confirm = c }

// ConfirmTimeout is how long the PING that settles a doubt may take. A
// Redis that answers within it is there, however late its replies to the
// requests were.
const ConfirmTimeout = time.Second

// Start pings Redis once, and keeps probing until ctx ends if it does not
// answer. recover runs before every switch to up.
func (h *Health) Start(ctx context.Context, recover func(ctx context.Context) error) {
	h.ctx, h.recover = ctx, recover
	if !h.try() {
		h.log.Warn("redis unreachable at start: serving from postgres until it answers")
		h.startProbe()
	}
}

// Up reports whether Redis is believed reachable.
func (h *Health) Up() bool { return h.up.Load() }

// BeginDirect starts a write to Postgres directly, for a caller that found
// Redis down. It answers true, and holds nothing, if Redis is up again by
// now: the caller uses Redis instead. Otherwise the caller must call
// EndDirect once the write has committed or failed; until then Redis is
// not switched back to up.
func (h *Health) BeginDirect() (redisUp bool) {
	h.direct.RLock()
	if h.up.Load() {
		h.direct.RUnlock()
		return true
	}
	return false
}

// HoldDirect starts a write to Postgres directly whatever Redis's state,
// for an op whose outcome in Redis is unknown (see redisOrDirect); the
// caller must call EndDirect.
func (h *Health) HoldDirect() { h.direct.RLock() }

// DirectTimeout bounds a write between BeginDirect and EndDirect, so that
// a hung Postgres cannot hold the switch back to Redis (which waits for
// them) for good.
const DirectTimeout = 5 * time.Second

// EndDirect ends a write started with BeginDirect.
func (h *Health) EndDirect() { h.direct.RUnlock() }

// UpAfterRecovery reports whether Redis is up, for a caller that has just
// committed a change to Postgres that a recovery would pick up (a stale
// mark) and now wants to copy it to Redis. A recovery under way may have
// looked before the change committed: this waits for it to end, and
// answers true once Redis is up. False means no recovery is under way:
// the next one comes after the change and picks it up.
func (h *Health) UpAfterRecovery() bool {
	if h.Up() || h.BeginDirect() {
		return true
	}
	h.EndDirect()
	return false
}

// Failed reports whether err means Redis is unreachable for this call; the
// caller then answers without it. An error that says the connection is
// gone marks Redis down and starts probing; a late answer (see slow)
// raises a doubt that a PING settles (Settle waits for it). Errors Redis
// itself answered (a script error, redis.Nil) do not count, except while
// it loads its data.
func (h *Health) Failed(err error) bool {
	if !unreachable(err) {
		return false
	}
	if slow(err) && h.up.Load() {
		h.late.Inc()
		h.doubt(err)
	} else {
		h.markDown(err)
	}
	return true
}

// markDown marks Redis down and starts the probe, whose switch back runs
// the recovery first.
func (h *Health) markDown(err error) {
	if h.up.CompareAndSwap(true, false) {
		h.log.Warn("redis unreachable: serving from postgres", "err", err)
		if h.OnChange != nil {
			h.OnChange(false)
		}
	}
	h.startProbe()
}

// doubt pings Redis once, unless a ping of an earlier doubt is still out,
// and marks it down if the ping fails as well.
func (h *Health) doubt(err error) {
	if !h.doubting.CompareAndSwap(false, true) {
		return
	}
	done := make(chan struct{})
	h.verdict.Store(&done)
	go func() {
		defer close(done)
		defer h.doubting.Store(false)
		// The clients leave deadlines to their own timeouts, not the
		// context's, so the bound is kept here; a ping still out when it
		// passes ends with its client's timeout.
		pinged := make(chan error, 1)
		go func() { pinged <- pingAll(h.ctx, h.confirm) }()
		t := time.NewTimer(ConfirmTimeout)
		defer t.Stop()
		var perr error
		select {
		case perr = <-pinged:
		case <-t.C:
			perr = fmt.Errorf("no answer to a ping within %s", ConfirmTimeout)
		case <-h.ctx.Done():
			return
		}
		if perr != nil {
			h.markDown(fmt.Errorf("%w (and a ping: %v)", err, perr))
		}
	}()
}

// Settle waits until the last doubt raised is settled (at most
// ConfirmTimeout) or ctx ends; Up then answers the verdict.
func (h *Health) Settle(ctx context.Context) {
	if p := h.verdict.Load(); p != nil {
		select {
		case <-*p:
		case <-ctx.Done():
		}
	}
}

// refusedForNow are the replies of a Redis that ran nothing of the call
// and may serve it later (see unreachable).
var refusedForNow = []string{"LOADING", "MASTERDOWN", "TRYAGAIN", "MOVED", "ASK", "CLUSTERDOWN"}

// replyIs reports an error that is a reply of Redis's starting with one
// of prefixes.
func replyIs(err error, prefixes []string) bool {
	var rerr redis.Error
	if err == nil || !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(msg, p) })
}

// pingAll pings Redis: every master of a cluster, with the cluster's
// map of slots read afresh first, so that a probe passes only once every
// slot has a master that answers (a replica promoted in a dead master's
// place, which the client then follows).
func pingAll(ctx context.Context, rdb redis.UniversalClient) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return rdb.Ping(ctx).Err()
	}
	return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return node.Ping(ctx).Err() })
}

// unreachable reports an error that says Redis could not serve the call:
// the connection failed or timed out, or Redis refused it for now
// (loading its data, or on a cluster, a slot that moved or has no master).
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		return replyIs(err, refusedForNow)
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// slow reports an error that says Redis answered late, or that no
// connection was free in time, not that it is gone.
func slow(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrPoolTimeout)
}

// gone reports an error that says the connection to Redis is gone
// (refused, reset, closed), not merely slow.
func gone(err error) bool { return unreachable(err) && !slow(err) }

// startProbe starts the probe unless one runs. A failure that comes
// after the probe's switch to up but before the probe ends finds it
// running and starts none; so the probe, once it has said it ended, looks
// again and goes on if Redis was marked down meanwhile.
func (h *Health) startProbe() {
	if !h.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		t := time.NewTicker(h.interval)
		defer t.Stop()
		for {
			if !h.probeUntilUp(t) {
				h.probing.Store(false)
				return
			}
			h.probing.Store(false)
			if h.up.Load() || !h.probing.CompareAndSwap(false, true) {
				return
			}
		}
	}()
}

// probeUntilUp tries until Redis is up (true) or the context ends.
func (h *Health) probeUntilUp(t *time.Ticker) bool {
	for {
		if h.try() {
			return true
		}
		select {
		case <-h.ctx.Done():
			return false
		case <-t.C:
		}
	}
}

func (h *Health) try() bool {
	pctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	// Both clients: on a cluster each rereads its map of slots, and the
	// recovery runs on the confirming (background) client.
	err := pingAll(pctx, h.rdb)
	if err == nil && h.confirm != h.rdb {
		err = pingAll(pctx, h.confirm)
	}
	cancel()
	if err != nil {
		return false
	}
	// Wait for direct writes in flight (each bounded by DirectTimeout),
	// and hold new ones back, until up. The recovery's own time starts
	// after the wait.
	h.direct.Lock()
	defer h.direct.Unlock()
	ctx, cancel := context.WithTimeout(h.ctx, 2*time.Second)
	defer cancel()
	if h.recover != nil {
		if err := h.recover(ctx); err != nil {
			h.log.Warn("redis is back but recovery failed; retrying", "err", err)
			return false
		}
	}
	if h.up.CompareAndSwap(false, true) {
		// After an outage, a warning as the switch away was: an operator
		// reading warnings sees both ends of it.
		if h.wasUp.Swap(true) {
			h.log.Warn("redis reachable again: serving from redis")
		} else {
			h.log.Info("redis reachable: serving from redis")
		}
		if h.OnChange != nil {
			h.OnChange(true)
		}
	}
	return true
}
