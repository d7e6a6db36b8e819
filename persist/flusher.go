package persist

// The write-behind flusher moves usage from the fast tier (the Redis
// stream of pending events, behind the Pending interface) into Postgres.
//
// Data flow, per flush (every Interval, or at once while more than Max
// events wait):
//
//	Claim + Next (reads of Batch    ──▶  one Postgres transaction:
//	entries, until Max events)          1. ledger rows by COPY; if the ledger has one of the event
//	                                       ids already (a replay), the flush is written again:
//	                                       COPY into a temp table, INSERT ... ON CONFLICT (event_id,
//	                                       created_at) DO NOTHING RETURNING event_id (see ledger.go:
//	                                       as unique as the id alone): only events Postgres did
//	                                       not have yet
//	                                    2. counter upserts from those events only, one row per
//	                                       (subject, meter, period) per flush, counting only
//	                                       events after the row's last reset (stream positions)
//	                                    3. idempotency answers and provisioned subjects
//	                                  COMMIT
//	                                  (step 1 paced: a 1 ms pause every
//	                                  PaceRows rows, see pacer)
//	                               ──▶  Ack (Redis: XACK + XDEL of the entries, in one
//	                                    script call per 500)
//
// An entry of the queue holds the events of one or more consumes (those
// one Redis script call counted together); events are acknowledged by
// whole entries. One transaction per flush, not per read, is what keeps
// Postgres at one counter row per (subject, meter) per interval however
// busy a counter is; reading in batches keeps each Redis call short.
//
// Exactly once: the ledger's unique event_id makes step 1 the dedup, and
// step 2 counts only what step 1 inserted, so events that were committed
// but never acknowledged (crash between COMMIT and Ack) add nothing when
// they are flushed again, by this flusher or by another one that claimed
// them. Postgres also arbitrates idempotency keys: on the careful path the
// keys go in first, and an event whose key Postgres holds for another
// event (taken on the direct path while Redis was unreachable, or by
// Redis twice) is a duplicate: no ledger row, no count, and its counter is
// marked stale, so Redis's copy, which counted it, is dropped (OnStale)
// and reloads from Postgres (see cache/recovery.go).
//
// What may block: Claim, Next and Ack wait on Redis, the transaction on
// Postgres. When Postgres is down the flusher keeps the events in memory
// and retries with exponential backoff (up to MaxBackoff); meanwhile they
// stay safe, unacknowledged, in Redis. Nothing here is on the request
// path.

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/internal/periodic"
	"github.com/quotad/quotad/quota"
)

// Pending is the queue of events the flusher drains; cache.Pending is the
// Redis implementation.
type Pending interface {
	// Claim appends to into the events of up to n entries of each of the
	// queue's streams delivered before but not acknowledged: this
	// flusher's own, or those a dead flusher abandoned; and answers the
	// most entries read from one stream. On an error it answers into as
	// it was.
	Claim(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error)
	// Next appends to into the events of up to n entries of each stream
	// never delivered before, and answers the most entries read from one
	// (n: that stream may hold more). On an error it answers into as it
	// was.
	Next(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error)
	// Ack acknowledges the entries of events written to Postgres (every
	// event of an entry in one call); acking twice is harmless.
	Ack(ctx context.Context, events []quota.Event) error
	// Stats returns the number of waiting entries, the time the oldest was
	// queued, and how long the oldest entry no flusher has read yet had
	// waited (0 for none), on the queue's own clock.
	Stats(ctx context.Context) (entries int64, oldest time.Time, unread time.Duration, err error)
}

// FlusherConfig tunes a Flusher.
type FlusherConfig struct {
	Interval   time.Duration // time between flushes; default 1s
	Batch      int           // queue entries per Redis read; default 200 (under load an entry holds ~30 events, so ~6,000 events a read)
	Max        int           // events per flush (one transaction; the last read may go past it); a full flush flushes again at once; default 100,000
	MaxBackoff time.Duration // longest wait between retries of a failing batch; default 10s
	// WriteTimeout bounds one write of a flush to Postgres (default 30s):
	// a hung Postgres must not hold the flusher for good. A write cut by it
	// may still commit; its retry then finds the events in the ledger and
	// counts none twice.
	WriteTimeout time.Duration
	// PaceRows: the ledger COPY, and the idempotency keys' COPY, pause for
	// a millisecond every PaceRows rows, so that a Postgres sharing
	// quotad's cores never has more than a few hundred rows to work
	// through at once (see pacer); default 256, negative for never. The
	// pauses of the ledger's COPY add up to a quarter of Interval at most,
	// the keys' to an eighth (a bigger flush pauses every more rows); a
	// flush written again (a replay, a retry) pauses again.
	PaceRows int
	// MaxLag is how long usage may wait unread in the queue, while flushes
	// succeed, before all new usage is refused (Pressure; from MaxLag/2 a
	// growing share of it is); default
	// three Intervals, at least 3s; never less than two Intervals (usage
	// waits up to one between flushes); negative for never. When flushing
	// fails (Postgres down) nothing waits: Redis keeps taking usage and the
	// lag grows.
	MaxLag time.Duration
	// AfterCommit, if set, runs between a batch's commit and its Ack. Tests
	// use it to kill the process at the worst moment.
	AfterCommit func()
	// OnStale, if set, runs after a write that marked counters stale (it
	// met events Postgres counts as duplicates, which Redis counted):
	// quotad drops Redis's copies of stale counters there (the recovery's
	// DropStale), so they reload from Postgres. Its failure leaves the
	// marks for the next recovery.
	OnStale  func(ctx context.Context) error
	Registry *prometheus.Registry
	Logger   *slog.Logger
}

// Flusher drains Pending into the Store.
type Flusher struct {
	store *Store
	src   Pending
	cfg   FlusherConfig
	m     flushMetrics

	mu      sync.Mutex
	lastErr error
	lag     time.Duration
	pending int64
	// buf is the events slice of the last flush, kept for the next one:
	// growing a new one for every flush of ~30,000 events was ~15 MB/s of
	// garbage at 30,000 consumes/s. Flushes take it and give it back
	// (buffer, keep), so one running beside another gets a new one.
	buf []quota.Event
	// Backpressure (see Pressure), as of the last look at the stream: how
	// long its oldest unread entry had waited and when that look was
	// (unix ns); when the flush under way started (0 between flushes);
	// whether the last flush failed; a channel closed at the next look.
	// Looks (refreshStats) run from Run and from its looker goroutine, one
	// at a time (lookMu), so the last one stored is the newest.
	lookMu   sync.Mutex
	unread   atomic.Int64
	lookedAt atomic.Int64
	flushing atomic.Int64
	failing  atomic.Bool
	looked   chan struct{}
	hurry    chan struct{} // see Hurry
}

type flushMetrics struct {
	pending prometheus.Gauge
	lag     prometheus.Gauge
	batch   prometheus.Histogram
	took    prometheus.Histogram
	rows    *prometheus.CounterVec
	errors  prometheus.Counter
}

// NewFlusher returns a flusher from src into s.
func NewFlusher(s *Store, src Pending, cfg FlusherConfig) *Flusher {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 200
	}
	if cfg.Max <= 0 {
		cfg.Max = 100_000
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if cfg.PaceRows == 0 {
		cfg.PaceRows = 256
	}
	if cfg.MaxLag == 0 {
		cfg.MaxLag = max(3*cfg.Interval, 3*time.Second)
	}
	if cfg.MaxLag > 0 {
		cfg.MaxLag = max(cfg.MaxLag, 2*cfg.Interval)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Flusher{store: s, src: src, cfg: cfg, looked: make(chan struct{}), hurry: make(chan struct{}, 1), m: flushMetrics{
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "quotad_flush_pending", Help: "Entries of the Redis pending stream not yet written to Postgres (an entry holds one or more events)."}),
		lag:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "quotad_flush_lag_seconds", Help: "Age of the oldest event not yet written to Postgres."}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "quotad_flush_batch_size", Help: "Events per flush (one Postgres transaction).",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		took: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "quotad_flush_write_seconds", Help: "Time to write one flush to Postgres (the transaction).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		rows:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quotad_flush_rows_written_total", Help: "Postgres rows written by the flusher, by table."}, []string{"table"}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_flush_errors_total", Help: "Failed flush attempts."}),
	}}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(f.m.pending, f.m.lag, f.m.batch, f.m.took, f.m.rows, f.m.errors)
	}
	return f
}

// Run flushes every Interval, at once again while a flush came back full,
// and early when a load waits for it (Hurry), until ctx ends. A second goroutine looks at the stream every
// Interval/10, during flushes too (a flush slowed down by the load it is
// behind must not hide that load from Pressure); between ticks a look that
// finds Max events waiting starts a flush early.
func (f *Flusher) Run(ctx context.Context) {
	tick := time.NewTicker(f.cfg.Interval)
	defer tick.Stop()
	looks := make(chan struct{})
	defer func() { <-looks }()
	go func() {
		defer close(looks)
		periodic.Run(ctx, max(f.cfg.Interval/10, 10*time.Millisecond), func() { _, _ = f.refreshStats(ctx) })
	}()
	prunes := make(chan struct{})
	defer func() { <-prunes }()
	go func() {
		defer close(prunes)
		f.pruneEvery(ctx, pruneInterval)
	}()
	for {
		for {
			n, err := f.flushRetrying(ctx)
			// After every flush, not only when caught up: under a load that
			// keeps every flush full the flusher never is, and the lag
			// gauge, /readyz and Pressure would keep the value from before.
			_, _ = f.refreshStats(ctx)
			if err != nil || n < f.cfg.Max {
				break
			}
		}
		flushed := time.Now()
	wait:
		for {
			f.mu.Lock()
			looked := f.looked
			f.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				break wait
			case <-f.hurry:
				// A load waits for this flush: now, but not more often
				// than every Interval/10, however many loads wait.
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(flushed.Add(f.cfg.Interval / 10))):
				}
				break wait
			case <-looked:
				f.mu.Lock()
				full := f.pending >= int64(f.cfg.Max) // entries, so at least Max events
				f.mu.Unlock()
				if full {
					break wait
				}
			}
		}
	}
}

// Hurry asks for a flush now rather than at the next tick. A load of a
// counter Postgres has a row for waits until the stream is flushed past
// the newest entry it saw (cache.Counter.load): up to a whole Interval
// per cold counter otherwise, which after many counters were dropped
// (a recovery, a lost Redis, lost replies) held every consume that
// met one for about a second. It never blocks.
func (f *Flusher) Hurry() {
	select {
	case f.hurry <- struct{}{}:
	default:
	}
}

// pruneInterval is how often a flusher deletes expired idempotency keys.
const pruneInterval = 10 * time.Minute

// pruneEvery deletes the idempotency keys past their window, every
// interval, a batch at a time, until ctx ends. Every instance does it;
// two at once delete different rows or none.
func (f *Flusher) pruneEvery(ctx context.Context, interval time.Duration) {
	periodic.Run(ctx, interval, func() {
		before := time.Now().Add(-IdempotencyWindow - time.Hour)
		for {
			n, err := f.store.PruneIdempotency(ctx, before, 10_000)
			if err != nil {
				f.cfg.Logger.Warn("prune idempotency keys", "err", err)
				return
			}
			if n < 10_000 {
				return
			}
		}
	})
}

// Drain flushes until nothing is pending or ctx ends; quotad calls it on
// SIGTERM after the HTTP server stopped.
func (f *Flusher) Drain(ctx context.Context) error {
	for {
		n, err := f.flushRetrying(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

// Status reports the flush lag, the pending count and the last flush
// error (nil when the last flush worked), for /readyz.
func (f *Flusher) Status() (lag time.Duration, pending int64, lastErr error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lag, f.pending, f.lastErr
}

// refreshStats looks at the stream: the gauges, Status, and Pressure's
// view of the backlog. It answers the number of waiting entries.
func (f *Flusher) refreshStats(ctx context.Context) (int64, error) {
	f.lookMu.Lock()
	defer f.lookMu.Unlock()
	n, oldest, unread, err := f.src.Stats(ctx)
	if err != nil {
		return 0, err
	}
	var lag time.Duration
	if !oldest.IsZero() {
		lag = max(0, time.Since(oldest))
	}
	f.m.pending.Set(float64(n))
	f.m.lag.Set(lag.Seconds())
	f.unread.Store(int64(unread))
	f.lookedAt.Store(time.Now().UnixNano())
	f.mu.Lock()
	f.lag, f.pending = lag, n
	close(f.looked)
	f.looked = make(chan struct{})
	f.mu.Unlock()
	return n, nil
}

// Pressure is the share of new usage the consume path should refuse, from
// how long usage waited before a flusher read it (as of the flusher's
// last look at the stream: every Interval/10, and after each flush): none
// up to MaxLag/2, then rising in step with the wait, to all of it at
// MaxLag. A ramp rather than a switch: refusing everything at MaxLag and
// nothing below it made goodput swing between none and more than the
// flusher takes, while a share that grows with the wait settles where
// the admitted usage is what Postgres ingests. Without any refusal a load
// the flusher cannot keep up with (on a core shared with quotad and
// Redis, Postgres can be starved of it) grows the
// backlog, and with it what a loss of Redis would lose, for as long as the
// load lasts. It is 0 where refusing cannot help: a failing flush
// (Postgres down), a flush under way for more than 5 × MaxLag (Postgres
// hung), entries a dead flusher read and left (they are not unread;
// another flusher claims them), or a last look older than a second or an
// Interval (the flusher cannot read the stream).
func (f *Flusher) Pressure() float64 {
	if f.cfg.MaxLag < 0 || f.failing.Load() || time.Since(time.Unix(0, f.lookedAt.Load())) > max(time.Second, f.cfg.Interval) {
		return 0
	}
	if started := f.flushing.Load(); started != 0 && time.Since(time.Unix(0, started)) > 5*f.cfg.MaxLag {
		return 0
	}
	half := f.cfg.MaxLag / 2
	return min(1, max(0, float64(time.Duration(f.unread.Load())-half)/float64(half)))
}

func (f *Flusher) setErr(err error) {
	f.failing.Store(err != nil)
	f.mu.Lock()
	f.lastErr = err
	f.mu.Unlock()
}

// collect gathers one flush into events (empty, kept from the last
// flush): events left unacknowledged earlier first, then new ones, reading
// Batch entries at a time, until Max events.
func (f *Flusher) collect(ctx context.Context, events []quota.Event) ([]quota.Event, error) {
	events, _, err := f.src.Claim(ctx, f.cfg.Batch, events)
	if err != nil {
		return events, err
	}
	for len(events) < f.cfg.Max {
		var entries int
		events, entries, err = f.src.Next(ctx, f.cfg.Batch, events)
		if err != nil {
			if len(events) > 0 {
				break // flush what we have; the rest waits for the next flush
			}
			return events, err
		}
		if entries < f.cfg.Batch {
			break
		}
	}
	return events, nil
}

// buffer takes the events slice the last flush kept (see Flusher.buf),
// and keep gives one back, emptied.
func (f *Flusher) buffer() []quota.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.buf
	f.buf = nil
	return b
}

func (f *Flusher) keep(events []quota.Event) {
	if cap(events) > 4*len(events)+1024 {
		events = nil // sized for a backlog long gone: let it go
	}
	// Not cleared (7 MB of memclr for 30,000 events, on the one P): the
	// next flush overwrites what it reads, and until then the slice keeps
	// the last flush's strings (a few MB at most) alive.
	f.mu.Lock()
	f.buf = events[:0]
	f.mu.Unlock()
}

// flushRetrying collects one flush and writes it, retrying the same events
// with backoff while Postgres fails, then acknowledges them, retrying
// while Redis fails. It answers the number of events.
func (f *Flusher) flushRetrying(ctx context.Context) (int, error) {
	f.flushing.Store(time.Now().UnixNano())
	defer f.flushing.Store(0)
	events, err := f.collect(ctx, f.buffer())
	defer func() { f.keep(events) }()
	if err != nil {
		f.m.errors.Inc()
		f.setErr(err)
		f.cfg.Logger.Warn("flush: reading pending events from redis failed", "err", err)
		return 0, err
	}
	if len(events) == 0 {
		f.setErr(nil)
		return 0, nil
	}
	backoff := 100 * time.Millisecond
	for {
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, f.cfg.WriteTimeout)
		err := f.Write(wctx, events)
		cancel()
		if err == nil {
			f.m.took.Observe(time.Since(start).Seconds())
			break
		}
		f.m.errors.Inc()
		f.setErr(err)
		_, _ = f.refreshStats(ctx)
		f.cfg.Logger.Warn("flush: postgres write failed; retrying", "events", len(events), "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return 0, ctx.Err() // unacknowledged: claimed again later
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.cfg.MaxBackoff)
	}
	if f.cfg.AfterCommit != nil {
		f.cfg.AfterCommit()
	}
	backoff = 100 * time.Millisecond
	for {
		err := f.src.Ack(ctx, events)
		if err == nil {
			break
		}
		// Written but not acknowledged. Until the ack lands, the entries
		// stay in the stream and Redis cannot reload their counters, so
		// keep trying; if this process dies first, another flusher claims the
		// events and the ledger's dedup makes their second write a no-op.
		f.m.errors.Inc()
		f.setErr(err)
		f.cfg.Logger.Warn("flush: ack to redis failed; retrying", "events", len(events), "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, f.cfg.MaxBackoff)
	}
	f.setErr(nil)
	f.m.batch.Observe(float64(len(events)))
	return len(events), nil
}

// ledgerColumns are the usage_ledger columns the flusher writes, in the
// order of ledgerRow.row.
var ledgerColumns = []string{"event_id", "kind", "subject", "meter", "period_start", "amount", "mode",
	"model", "input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "idempotency_key", "created_at", "reservation_id"}

// idempotencyColumns are the idempotency columns a flush copies.
var idempotencyColumns = []string{"subject", "key", "request_hash", "applied", "amount", "used", "created_at", "event_id"}

var insertLedgerInSQL = `INSERT INTO usage_ledger (` + strings.Join(ledgerColumns, ", ") + `)
		SELECT ` + strings.Join(ledgerColumns, ", ") + ` FROM ledger_in
		ON CONFLICT (event_id, created_at) DO NOTHING RETURNING event_id`

const (
	// A flush that may hold events Postgres has already is copied into a
	// temporary table first, and only the events the ledger did not have
	// are counted (RETURNING).
	createLedgerInSQL = `CREATE TEMP TABLE ledger_in (LIKE usage_ledger INCLUDING DEFAULTS) ON COMMIT DROP`
	// addCountersSQL writes a flush's counters, one row each: used, the
	// sum of the counted events after the flush's last reset of the row
	// (all of them without one); reset_ms, reset_seq, that reset's place
	// in the stream (0, 0 for none); l2_stale, whether Redis's copy
	// counted a duplicate. A reset newer than the row's sets the row to
	// the sum; else the sum is added, and a row whose last reset is newer
	// than the flush's comes back (rows ever reset come back) so that
	// events from before that reset are taken off again (a batch replayed
	// after it, or flushed by a slower flusher: see upsertCounters).
	// Rows go in key order, every counter of a flush in this one
	// statement: two flushers (two instances) writing counters they share
	// take the rows' locks in the same order and cannot deadlock
	// (TestConcurrentFlushesDoNotDeadlock). Postgres also walks the index
	// in order, so the sort is cheap next to the writes.
	addCountersSQL = `WITH up AS (
		INSERT INTO counters AS c (subject, meter, period_start, period_end, used, reset_ms, reset_seq, l2_stale)
		SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[], $6::bigint[], $7::bigint[], $8::bool[])
		ORDER BY 1, 2, 3 ON CONFLICT (subject, meter, period_start) DO UPDATE SET
			used = CASE WHEN (EXCLUDED.reset_ms, EXCLUDED.reset_seq) > (c.reset_ms, c.reset_seq) THEN EXCLUDED.used ELSE c.used + EXCLUDED.used END,
			reset_ms = CASE WHEN (EXCLUDED.reset_ms, EXCLUDED.reset_seq) > (c.reset_ms, c.reset_seq) THEN EXCLUDED.reset_ms ELSE c.reset_ms END,
			reset_seq = CASE WHEN (EXCLUDED.reset_ms, EXCLUDED.reset_seq) > (c.reset_ms, c.reset_seq) THEN EXCLUDED.reset_seq ELSE c.reset_seq END,
			l2_stale = c.l2_stale OR EXCLUDED.l2_stale, updated_at = now()
		RETURNING subject, meter, period_start, reset_ms, reset_seq
	)
	SELECT subject, meter, period_start, reset_ms, reset_seq FROM up WHERE reset_ms > 0 OR reset_seq > 0`
	// takeBackSQL takes off a row's count what a flush added from before
	// the row's last reset; the flush holds the rows already.
	takeBackSQL = `UPDATE counters AS c SET used = c.used - k.u
		FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS k(s, m, ps, u)
		WHERE c.subject = k.s AND c.meter = k.m AND c.period_start = k.ps`
	// insertIdempotencySQL: a key Postgres holds from more than a day
	// before the event is a new use of it and is taken over. Answers the
	// keys taken.
	insertIdempotencySQL = `INSERT INTO idempotency AS i (subject, key, request_hash, applied, amount, used, created_at, event_id)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bigint[], $6::bigint[], $7::timestamptz[], $8::text[])
		ON CONFLICT (subject, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, applied = EXCLUDED.applied,
			amount = EXCLUDED.amount, used = EXCLUDED.used, created_at = EXCLUDED.created_at, event_id = EXCLUDED.event_id, l2_stale = false
			WHERE i.created_at < EXCLUDED.created_at - interval '24 hours'
		RETURNING subject, key`
	// keyHoldersSQL answers which event holds each key.
	keyHoldersSQL = `SELECT i.subject, i.key, coalesce(i.event_id, '') FROM idempotency i
		JOIN unnest($1::text[], $2::text[]) AS k(s, key) ON i.subject = k.s AND i.key = k.key`
	insertSubjectsSQL = `INSERT INTO subjects (subject, plan, cycle_anchor, overrides)
		SELECT s, p, a, '{}' FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS t(s, p, a)
		ON CONFLICT (subject) DO NOTHING`
)

// Write applies events to Postgres in one transaction, skipping events it
// already has and events whose idempotency key it holds for another event.
//
// The ledger rows go in with COPY, the cheapest way into Postgres, and the
// ledger's primary key on event_id refuses the whole flush if any event is
// there already. That happens only to a flush written before and never
// acknowledged (a crash between commit and ack), or holding an event the
// Postgres fallback path took; so does the keys' COPY for a key Postgres
// holds. Then the flush is written again the careful way, counting only
// the events the ledger did not have and whose keys are theirs. Either way
// each event counts once, and each key once.
func (f *Flusher) Write(ctx context.Context, events []quota.Event) error {
	stale, err := f.write(ctx, events, false)
	if isDuplicateEvent(err) || isDuplicateKey(err) {
		stale, err = f.write(ctx, events, true)
	}
	if err == nil && stale && f.cfg.OnStale != nil {
		if serr := f.cfg.OnStale(ctx); serr != nil {
			f.cfg.Logger.Warn("flush: dropping redis's copies of counters that counted duplicates failed; the next recovery does", "err", serr)
		}
	}
	return translate(err)
}

// write writes events in one transaction and answers whether it marked
// counters stale (it met duplicates by key).
func (f *Flusher) write(ctx context.Context, events []quota.Event, dedup bool) (bool, error) {
	if dedup {
		// The ledger takes an event id once; so must the counters. The
		// fast path cannot hold one twice (its COPY would be refused).
		events = firstOfEachEvent(events)
	}
	rows := map[string]int{} // by table, for the metric once committed
	var stale bool
	var written []*counterDelta // the counters written, for the subject_usage rollup
	err := pgx.BeginFunc(ctx, f.store.pool, func(tx pgx.Tx) error {
		var fresh map[string]bool // nil: every event is new
		var dupes map[string]bool // events whose key Postgres holds for another event
		moved, err := f.followAnchors(ctx, tx, events)
		if err != nil {
			return err
		}
		if dedup {
			if dupes, err = f.insertKeysDedup(ctx, tx, events, rows); err != nil {
				return err
			}
			fresh, err = f.insertLedgerDedup(ctx, tx, events, dupes, rows)
		} else {
			var n int64
			n, err = f.copyLedger(ctx, tx, "usage_ledger", events, nil)
			rows["usage_ledger"] += int(n)
		}
		if err != nil {
			return err
		}
		if written, err = f.upsertCounters(ctx, tx, events, fresh, dupes, moved, rows); err != nil {
			return err
		}
		stale = len(dupes) > 0 || len(moved) > 0
		return f.insertExtras(ctx, tx, events, dedup, rows)
	})
	// Marked whatever the outcome: a write whose commit was cut may have
	// committed (rollup.go's invariant 1).
	for _, d := range written {
		f.store.marks.mark(d.key.Subject, d.key.Meter)
	}
	if err == nil {
		for table, n := range rows {
			f.m.rows.WithLabelValues(table).Add(float64(n))
		}
	}
	return stale, err
}

// firstOfEachEvent answers events without the repeats of an event id
// (the first one stays), in order.
func firstOfEachEvent(events []quota.Event) []quota.Event {
	seen := make(map[string]bool, len(events))
	out := make([]quota.Event, 0, len(events))
	for _, e := range events {
		if !seen[e.ID] {
			seen[e.ID] = true
			out = append(out, e)
		}
	}
	return out
}

// isNew reports whether the event is one the ledger did not have.
func isNew(fresh map[string]bool, e *quota.Event) bool { return fresh == nil || fresh[e.ID] }

// keyed reports whether e takes an idempotency key in Postgres.
func keyed(e *quota.Event) bool { return e.Kind == quota.EventConsume && e.IdempotencyKey != "" }

// insertKeysDedup writes the idempotency keys of a flush on the careful
// path, before anything else of it, and answers the events that are
// duplicates: their key Postgres holds for another event (the direct path
// took it while Redis was unreachable, or Redis took it twice, having
// lost it in between), or another event of the flush took it first. A
// key held for the event itself is a replay, which the ledger dedups.
// A concurrent direct write of the same key is waited for by the insert
// and then seen by the read after it.
func (f *Flusher) insertKeysDedup(ctx context.Context, tx pgx.Tx, events []quota.Event, rows map[string]int) (map[string]bool, error) {
	type skey struct{ subject, key string }
	first := map[skey]string{} // the event of the flush that takes the key
	dupes := map[string]bool{}
	var sub, key, hash, ids []string
	var applied []bool
	var amount, used []int64
	var at []time.Time
	for i := range events {
		e := &events[i]
		if !keyed(e) {
			continue
		}
		k := skey{e.Subject, e.IdempotencyKey}
		if id, seen := first[k]; seen {
			if id != e.ID {
				dupes[e.ID] = true
			}
			continue
		}
		first[k] = e.ID
		sub, key, hash, ids = append(sub, e.Subject), append(key, e.IdempotencyKey), append(hash, e.RequestHash), append(ids, e.ID)
		applied, amount, used, at = append(applied, true), append(amount, e.Amount), append(used, e.Used), append(at, e.At)
	}
	if len(sub) == 0 {
		return dupes, nil
	}
	taken, err := tx.Query(ctx, insertIdempotencySQL, sub, key, hash, applied, amount, used, at, ids)
	if err != nil {
		return nil, fmt.Errorf("insert idempotency keys: %w", err)
	}
	got, err := pgx.CollectRows(taken, func(r pgx.CollectableRow) (skey, error) {
		var k skey
		err := r.Scan(&k.subject, &k.key)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("insert idempotency keys: %w", err)
	}
	rows["idempotency"] += len(got)
	if len(got) == len(sub) {
		return dupes, nil
	}
	for _, k := range got {
		delete(first, k)
	}
	var hs, hk []string
	for k := range first {
		hs, hk = append(hs, k.subject), append(hk, k.key)
	}
	held, err := tx.Query(ctx, keyHoldersSQL, hs, hk)
	if err != nil {
		return nil, fmt.Errorf("read idempotency keys: %w", err)
	}
	var k skey
	var holder string
	_, err = pgx.ForEachRow(held, []any{&k.subject, &k.key, &holder}, func() error {
		if id := first[k]; id != holder {
			dupes[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read idempotency keys: %w", err)
	}
	return dupes, nil
}

// copyLedger copies the ledger rows of events, but those in skip, into
// table and answers how many it copied.
func (f *Flusher) copyLedger(ctx context.Context, tx pgx.Tx, table string, events []quota.Event, skip map[string]bool) (int64, error) {
	ledger := make([]*quota.Event, 0, len(events))
	for i := range events {
		if events[i].Kind != quota.EventProvision && !skip[events[i].ID] {
			ledger = append(ledger, &events[i])
		}
	}
	var r ledgerRow
	row := r.row()
	pace := newPacer(len(ledger), f.cfg.PaceRows, f.cfg.Interval)
	n, err := tx.CopyFrom(ctx, pgx.Identifier{table}, ledgerColumns, pgx.CopyFromSlice(len(ledger), func(i int) ([]any, error) {
		pace.row(i)
		r.fill(ledger[i])
		return row, nil // pgx encodes a row before it asks for the next
	}))
	if err != nil {
		return 0, fmt.Errorf("copy ledger rows: %w", err)
	}
	return n, nil
}

// ledgerRow is one ledger row as pgtype values, which pgx encodes
// through their Valuer methods: no reflection and no allocation per row
// (plain values in an []any are boxed, one allocation each; pointers to
// them pgx dereferences with reflect, boxing the value all the same: ten
// allocations per ledger row before).
type ledgerRow struct {
	id, kind, subject, meter, mode, model, idem, rsv pgtype.Text
	start, at                                        pgtype.Timestamptz
	amount, in, out, cw, cr                          pgtype.Int8
}

// row answers the row's values in the order of ledgerColumns; they point
// into r, so each fill changes them.
func (r *ledgerRow) row() []any {
	return []any{&r.id, &r.kind, &r.subject, &r.meter, &r.start, &r.amount, &r.mode,
		&r.model, &r.in, &r.out, &r.cw, &r.cr, &r.idem, &r.at, &r.rsv}
}

// fill sets r to e's ledger columns.
func (r *ledgerRow) fill(e *quota.Event) {
	text := func(s string, valid bool) pgtype.Text { return pgtype.Text{String: s, Valid: valid} }
	r.id, r.kind, r.subject, r.meter = text(e.ID, true), text(string(e.Kind), true), text(e.Subject, true), text(e.Meter, true)
	r.start, r.at = pgtype.Timestamptz{Time: e.Start, Valid: true}, pgtype.Timestamptz{Time: e.At, Valid: true}
	r.amount = pgtype.Int8{Int64: e.Amount, Valid: true}
	mode := quota.ModeRecord
	if e.Enforce {
		mode = quota.ModeEnforce
	}
	r.mode = text(mode, e.Kind == quota.EventConsume)
	r.idem = text(e.IdempotencyKey, e.IdempotencyKey != "")
	r.rsv = text(e.Reservation, e.Reservation != "")
	u := e.Usage
	if u == nil {
		u = &quota.Usage{}
	}
	r.model = text(u.Model, e.Usage != nil)
	tokens := func(n int64) pgtype.Int8 { return pgtype.Int8{Int64: n, Valid: e.Usage != nil} }
	r.in, r.out, r.cw, r.cr = tokens(u.InputTokens), tokens(u.OutputTokens), tokens(u.CacheWriteTokens), tokens(u.CacheReadTokens)
}

// yieldEvery lets other goroutines run every yieldRows iterations of a
// loop over a flush's events (tens of thousands under load). quotad runs
// with one P when pinned to one core, and there a goroutine holds it
// until it blocks or is preempted after 10 ms: a flush's encoding would
// stall every request for that long. Gosched costs ~0.1 µs.
func yieldEvery(i int) {
	if i%yieldRows == yieldRows-1 {
		runtime.Gosched()
	}
}

const yieldRows = 256

// pacer spreads a flush's ledger rows over time. Sent as fast as quotad
// encodes them, the rows of a flush (~30,000 at 30,000 consumes/s) piled
// up in the Postgres backend, which then ran for whole scheduler slices
// (1.4-7 ms at a time, perf sched) while requests waited on the core it
// shared with quotad and Redis: the consumes' p99 was 11.6-12 ms and
// p99.9 28-29 ms, against 3.4-3.7 and 7.9-8.9 ms with no flush during the
// run.
// A 1 ms pause every 256 rows keeps the backend's work at a time to a few
// hundred rows (pgx sends the COPY in messages of up to 64 KB): p99
// 8.1-8.5 ms, p99.9 20-22 ms, throughput the same (+1-2 %); mixed
// unchanged (means of four alternating quick runs per scenario, quotad
// pinned with Postgres and Redis, 2026-11-27). Pacing the counter upserts
// too changed little more and would split their one ordered statement
// (see addCountersSQL).
type pacer struct{ every int } // rows between pauses; 0: no pauses

const pacePause = time.Millisecond

// newPacer paces rows rows: a pause every paceRows rows (none if paceRows
// < 1), or every more rows when the pauses would add up to more than a
// quarter of interval.
func newPacer(rows, paceRows int, interval time.Duration) pacer {
	pauses := int(interval / 4 / pacePause) // the most one COPY may take
	if paceRows < 1 || pauses < 1 {
		return pacer{}
	}
	return pacer{every: max(paceRows, (rows+pauses-1)/pauses)}
}

// row comes before row i: it pauses when i starts a new slice of rows,
// and otherwise yields now and then (yieldEvery).
func (p pacer) row(i int) {
	if p.every > 0 && i > 0 && i%p.every == 0 {
		time.Sleep(pacePause)
		return
	}
	yieldEvery(i)
}

// insertLedgerDedup writes the ledger rows Postgres does not have yet,
// but those of duplicates, and answers their event ids.
func (f *Flusher) insertLedgerDedup(ctx context.Context, tx pgx.Tx, events []quota.Event, dupes map[string]bool, rows map[string]int) (map[string]bool, error) {
	if _, err := tx.Exec(ctx, createLedgerInSQL); err != nil {
		return nil, fmt.Errorf("create ledger_in: %w", err)
	}
	if _, err := f.copyLedger(ctx, tx, "ledger_in", events, dupes); err != nil {
		return nil, err
	}
	inserted, err := tx.Query(ctx, insertLedgerInSQL)
	if err != nil {
		return nil, fmt.Errorf("insert ledger: %w", err)
	}
	got, err := pgx.CollectRows(inserted, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("insert ledger: %w", err)
	}
	fresh := make(map[string]bool, len(got))
	for _, id := range got {
		fresh[id] = true
	}
	rows["usage_ledger"] += len(got)
	return fresh, nil
}

// directAnchorsSQL answers the anchors of the given subjects that were
// provisioned on the direct path (direct_anchor).
const directAnchorsSQL = `SELECT subject, cycle_anchor FROM subjects WHERE direct_anchor AND subject = ANY($1::text[])`

// followAnchors moves month usage to its subject's anchor in Postgres.
// A subject provisioned on an instance's direct path, while Redis was
// unreachable to it, may also have been provisioned in Redis by another
// instance with another anchor (its provisioning event not flushed yet):
// Postgres keeps the row it has, the recovery drops Redis's copy of the
// subject, and the usage Redis counted meanwhile under the other anchor's
// month is moved here to the month of the row's anchor that holds its
// time, so that one subject has one anchor. Events are changed in place
// (ledger rows too); the moved ones are answered by id, and their
// counters' Redis copies, which lack them, are marked stale. Months are
// told by their length: the other periods are a week or shorter.
func (f *Flusher) followAnchors(ctx context.Context, tx pgx.Tx, events []quota.Event) (map[string]bool, error) {
	seen := map[string]bool{}
	var subjects []string
	for i := range events {
		e := &events[i]
		if e.Kind != quota.EventProvision && e.End.Sub(e.Start) > 8*24*time.Hour && !seen[e.Subject] {
			seen[e.Subject] = true
			subjects = append(subjects, e.Subject)
		}
	}
	if len(subjects) == 0 {
		return nil, nil
	}
	rows, err := tx.Query(ctx, directAnchorsSQL, subjects)
	if err != nil {
		return nil, fmt.Errorf("read direct anchors: %w", err)
	}
	anchors := map[string]time.Time{}
	var sub string
	var anchor time.Time
	if _, err := pgx.ForEachRow(rows, []any{&sub, &anchor}, func() error {
		anchors[sub] = anchor.UTC()
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read direct anchors: %w", err)
	}
	var moved map[string]bool
	for i := range events {
		e := &events[i]
		a, ok := anchors[e.Subject]
		if !ok || e.Kind == quota.EventProvision || e.End.Sub(e.Start) <= 8*24*time.Hour {
			continue
		}
		at := e.At
		if at.Before(a) {
			at = a
		}
		start, end := quota.PeriodMonth.Window(a, at)
		if start.Equal(e.Start) {
			continue
		}
		e.Start, e.End = start, end
		if moved == nil {
			moved = map[string]bool{}
		}
		moved[e.ID] = true
	}
	return moved, nil
}

// counterDelta is what one batch does to one counter.
type counterDelta struct {
	key   quota.CounterKey
	sum   int64     // the counted consumes after reset (all of them without one)
	reset streamPos // the batch's last reset of the counter; zero: none
	stale bool      // Redis's copy counted a duplicate
}

// streamPos is an event's place in the pending stream: its entry's id,
// <ms>-<seq>. Events of one entry share it (an entry holding a reset holds
// nothing else).
type streamPos struct{ ms, seq int64 }

func (p streamPos) after(q streamPos) bool { return p.ms > q.ms || p.ms == q.ms && p.seq > q.seq }

// positionOf answers the stream position of events[i]: its entry's id;
// for an event that has none (written by a test or a tool, not read from
// the stream), its time and its place in the flush.
func positionOf(events []quota.Event, i int) streamPos {
	ms, seq, ok := strings.Cut(events[i].Ref, "-")
	if ok {
		m, err1 := strconv.ParseInt(ms, 10, 64)
		q, err2 := strconv.ParseInt(seq, 10, 64)
		if err1 == nil && err2 == nil {
			return streamPos{m, q}
		}
	}
	return streamPos{events[i].At.UnixMilli(), int64(i)}
}

// upsertCounters writes the counters of a flush (addCountersSQL). A reset
// counts only the consumes after it in the stream, whatever the order of
// the flushes that bring them: a batch of events from before a reset that
// is flushed after it (replayed after a crash, claimed from a dead
// flusher, or slower than another flusher's batch holding the reset)
// adds nothing to the counter. Duplicates by key (dupes) count nothing and
// mark their counter stale in Redis, as do events moved to another
// counter (moved: see followAnchors), whose Redis copy lacks them.
func (f *Flusher) upsertCounters(ctx context.Context, tx pgx.Tx, events []quota.Event, fresh, dupes, moved map[string]bool, rows map[string]int) ([]*counterDelta, error) {
	type id struct {
		subject, meter string
		start          int64
	}
	deltas := map[id]*counterDelta{}
	var order []*counterDelta
	delta := func(e *quota.Event) *counterDelta {
		k := id{e.Subject, e.Meter, e.Start.UnixNano()}
		d := deltas[k]
		if d == nil {
			d = &counterDelta{key: e.Key()}
			deltas[k] = d
			order = append(order, d)
		}
		return d
	}
	// Resets first: a consume counts if it comes after its counter's last
	// reset of the batch, wherever it stands in the batch.
	for i := range events {
		if e := &events[i]; e.Kind == quota.EventReset && isNew(fresh, e) {
			d, p := delta(e), positionOf(events, i)
			if p.after(d.reset) {
				d.reset = p
			}
			d.stale = d.stale || moved[e.ID]
		}
	}
	for i := range events {
		yieldEvery(i)
		e := &events[i]
		if e.Kind != quota.EventConsume {
			continue
		}
		if dupes[e.ID] {
			delta(e).stale = true
			continue
		}
		if !isNew(fresh, e) {
			continue
		}
		d := delta(e)
		d.stale = d.stale || moved[e.ID]
		if d.reset != (streamPos{}) && !positionOf(events, i).after(d.reset) {
			continue
		}
		if d.sum > (1<<63-1)-e.Amount {
			return nil, fmt.Errorf("counter %s/%s overflows", e.Subject, e.Meter)
		}
		d.sum += e.Amount
	}
	if len(order) == 0 {
		return nil, nil
	}
	n := len(order)
	subjects, meters, starts := make([]string, n), make([]string, n), make([]time.Time, n)
	ends, sums := make([]*time.Time, n), make([]int64, n)
	resetMS, resetSeq, stale := make([]int64, n), make([]int64, n), make([]bool, n)
	for i, d := range order {
		subjects[i], meters[i], starts[i], ends[i], sums[i] = d.key.Subject, d.key.Meter, d.key.Start, nullTime(d.key.End), d.sum
		resetMS[i], resetSeq[i], stale[i] = d.reset.ms, d.reset.seq, d.stale
	}
	reset, err := tx.Query(ctx, addCountersSQL, subjects, meters, starts, ends, sums, resetMS, resetSeq, stale)
	if err != nil {
		return order, fmt.Errorf("upsert counters: %w", err)
	}
	// Rows whose last reset is newer than the batch's: what the batch
	// added from before it is taken back.
	later := map[id]streamPos{}
	var k id
	var start time.Time
	var p streamPos
	_, err = pgx.ForEachRow(reset, []any{&k.subject, &k.meter, &start, &p.ms, &p.seq}, func() error {
		k.start = start.UnixNano()
		if d := deltas[k]; d != nil && p.after(d.reset) {
			later[k] = p
		}
		return nil
	})
	if err != nil {
		return order, fmt.Errorf("upsert counters: %w", err)
	}
	rows["counters"] += n
	if len(later) == 0 {
		return order, nil
	}
	back := map[id]int64{}
	for i := range events {
		e := &events[i]
		if e.Kind != quota.EventConsume || dupes[e.ID] || !isNew(fresh, e) {
			continue
		}
		k := id{e.Subject, e.Meter, e.Start.UnixNano()}
		if last, ok := later[k]; ok && positionOf(events, i).after(deltas[k].reset) && !positionOf(events, i).after(last) {
			back[k] += e.Amount
		}
	}
	var bs, bm []string
	var bps []time.Time
	var bu []int64
	for k, u := range back {
		if u > 0 {
			bs, bm, bps, bu = append(bs, k.subject), append(bm, k.meter), append(bps, time.Unix(0, k.start)), append(bu, u)
		}
	}
	if len(bs) > 0 {
		if _, err := tx.Exec(ctx, takeBackSQL, bs, bm, bps, bu); err != nil {
			return order, fmt.Errorf("take back usage from before a reset: %w", err)
		}
	}
	return order, nil
}

// insertExtras writes the provisioned subjects of a flush and, on the
// fast path, its idempotency keys (the careful path wrote them first:
// insertKeysDedup). The keys go in with COPY, the cheapest way (a keyed
// consume cost about twice an unkeyed one in the flush with an INSERT ...
// ON CONFLICT); a key Postgres has already (taken on the direct path too,
// or reused after its day) refuses the COPY, and the flush is written
// again the careful way.
func (f *Flusher) insertExtras(ctx context.Context, tx pgx.Tx, events []quota.Event, dedup bool, rows map[string]int) error {
	var isub, ikey, ihash, iid []string
	var iapplied []bool
	var iamount, iused []int64
	var iat []time.Time
	var psub, pplan []string
	var panchor []time.Time
	for i := range events {
		e := &events[i]
		switch {
		case e.Kind == quota.EventProvision && e.Settings != nil:
			psub, pplan, panchor = append(psub, e.Settings.ID), append(pplan, e.Settings.Plan), append(panchor, e.Settings.CycleAnchor)
		case keyed(e) && !dedup:
			isub, ikey, ihash, iid = append(isub, e.Subject), append(ikey, e.IdempotencyKey), append(ihash, e.RequestHash), append(iid, e.ID)
			iapplied, iamount, iused, iat = append(iapplied, true), append(iamount, e.Amount), append(iused, e.Used), append(iat, e.At)
		}
	}
	if len(psub) > 0 {
		if _, err := tx.Exec(ctx, insertSubjectsSQL, psub, pplan, panchor); err != nil {
			return fmt.Errorf("insert subjects: %w", err)
		}
		rows["subjects"] += len(psub)
	}
	if len(isub) > 0 {
		// So that the Postgres fallback path knows keys first seen in Redis.
		// Paced as the ledger's COPY is (with a key on every consume it is
		// a second COPY of the same size), within half its budget, so that
		// the two pause for at most 3/8 of Interval.
		pace := newPacer(len(isub), f.cfg.PaceRows, f.cfg.Interval/2)
		_, err := tx.CopyFrom(ctx, pgx.Identifier{"idempotency"}, idempotencyColumns, pgx.CopyFromSlice(len(isub), func(i int) ([]any, error) {
			pace.row(i)
			return []any{isub[i], ikey[i], ihash[i], iapplied[i], iamount[i], iused[i], iat[i], iid[i]}, nil
		}))
		if err != nil {
			return fmt.Errorf("copy idempotency keys: %w", err)
		}
		rows["idempotency"] += len(isub)
	}
	return nil
}
