package cache

// Feed carries live changes (quota.Change) from the instance that made
// them to the events streams of every instance, through one Redis stream.
//
//	Notify (request path) ─▶ queue (bounded) ─▶ publisher ─XADD─▶ q:events
//	q:events ─XREAD BLOCK─▶ reader (one per instance, while it has
//	subscribers) ─▶ a buffer per subscription ─▶ the SSE handler
//
// Guarantees:
//   - Order: q:events is one global order. Every subscription sees its
//     entries in stream order, and an entry's id is its SSE id.
//   - Gating: while no instance has a subscriber, Notify is one atomic
//     load. An instance with subscribers keeps q:events:watchers alive
//     (PX 3 × Poll, at least 1 s); its value is when the current watch began, on Redis's
//     clock. Every Feed reads the key each Poll, so all of them publish
//     within gateDelay of a watch beginning; Subscribe returns only after
//     that, so nothing after the caller's snapshot goes unpublished.
//   - Replay window: entries after a Last-Event-ID are replayed when none
//     after it was trimmed (History, ~2 min, and at most MaxEntries) and
//     publishing has not paused since (it was published at least gateDelay
//     into the current watch); replayed and live entries meet with no gap
//     and no duplicate. Otherwise Subscribe says so and the caller sends a
//     snapshot. Live delivery is at least once relative to that snapshot:
//     for one subject it starts Lookback before it, so that a snapshot
//     read from a cache is brought up to date.
//   - Loss: a change is a notification, not the record. One dropped (queue
//     full, XADD failed, outcome unknown) is followed by a gap entry; a
//     watch that lapsed while subscribed writes one too; and a reader that
//     could not read for a while tells its subscribers directly. Each
//     reaches subscribers as a Missed item: resend a snapshot. Changes an
//     instance had queued when it died are lost without a mark.
//   - Slow consumers: a subscription buffers up to Buffer items; one that
//     falls further behind is cut off with a final Overflow item. Nothing
//     waits for a subscriber: Notify never blocks, nor does the reader.
//
// What blocks: the publisher and the reader on Redis only (the reader up
// to Poll in XREAD BLOCK); Subscribe up to gateDelay plus a few round
// trips.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/quota"
)

// FeedConfig tunes a Feed; zero fields take the defaults.
type FeedConfig struct {
	// Poll is how often a Feed reads the watchers key (or, with
	// subscribers, renews it) and how long the reader blocks: 1 s.
	Poll time.Duration
	// History is how long entries stay in the stream for replays: 2 min.
	History time.Duration
	// MaxEntries caps the stream's length whatever History says, so that
	// a busy installation watched for hours keeps Redis's memory bounded
	// (~300 bytes an entry): 100,000.
	MaxEntries int64
	// Buffer is how many items a subscription holds before it is cut
	// off: 512.
	Buffer int
	// Queue is how many changes wait to be published before Notify drops
	// them: 8,192.
	Queue int
	// Lookback makes a subject's subscription that does not replay begin
	// with the subject's changes of this long before it: the snapshot a
	// caller sends first may be this old (quotad's snapshots come from
	// L1, up to its TTL old), and those changes bring it up to date.
	// 0 for none.
	Lookback time.Duration
}

func (c *FeedConfig) defaults() {
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.History <= 0 {
		c.History = 2 * time.Minute
	}
	if c.MaxEntries <= 0 {
		c.MaxEntries = 100_000
	}
	if c.Buffer <= 0 {
		c.Buffer = 512
	}
	if c.Queue <= 0 {
		c.Queue = 8192
	}
}

// Limits of one publish round trip and of one replay.
const (
	publishBatch = 256
	readCount    = 1000
)

// Feed implements quota.Notifier over EventsStream and serves
// subscriptions to it.
type Feed struct {
	rdb redis.UniversalClient
	cfg FeedConfig
	log *slog.Logger
	ctx context.Context
	// gateDelay bounds how long after a watch begins every Feed publishes:
	// one Poll, plus slack for the read of the key.
	gateDelay time.Duration

	open  atomic.Bool // some instance has a subscriber: publish
	lost  atomic.Bool // changes were dropped since the last gap entry
	queue chan quota.Change
	kick  chan struct{} // wakes the publisher to write a gap entry

	mu         sync.Mutex
	subs       map[string]map[*Subscription]struct{} // by subject; "" for every subject
	nsubs      int
	joining    int      // Subscribe calls on their way to registering
	reading    bool     // the reader runs
	pos        streamID // the last entry the reader handed out, or where it starts
	ended      bool     // Disconnect was called or ctx ended
	watchStart int64    // when the watch this instance renews began (ms, Redis time); 0 without subscribers

	dropped, published prometheus.Counter
	streams            prometheus.Gauge
}

var _ quota.Notifier = (*Feed)(nil)

// NewFeed returns a Feed on rdb; its publisher and its watch of the
// watchers key run until ctx ends, which also ends every subscription.
func NewFeed(ctx context.Context, rdb redis.UniversalClient, cfg FeedConfig, log *slog.Logger) *Feed {
	cfg.defaults()
	f := &Feed{
		rdb: rdb, cfg: cfg, log: log, ctx: ctx,
		gateDelay: cfg.Poll + max(cfg.Poll/4, 100*time.Millisecond),
		queue:     make(chan quota.Change, cfg.Queue),
		kick:      make(chan struct{}, 1),
		subs:      map[string]map[*Subscription]struct{}{},
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_events_dropped_total",
			Help: "Changes not published to the events stream: the queue was full or Redis did not take them."}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "quotad_events_published_total",
			Help: "Changes published to the events stream."}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "quotad_events_streams",
			Help: "Events streams (subscriptions) open on this instance."}),
	}
	go f.publish()
	go f.watch()
	return f
}

// Register registers the feed's metrics on reg.
func (f *Feed) Register(reg *prometheus.Registry) {
	reg.MustRegister(f.dropped, f.published, f.streams)
}

// Notify queues c for publishing while some instance has a subscriber,
// and drops it (counted) when the queue is full. It never blocks.
func (f *Feed) Notify(c quota.Change) {
	if !f.open.Load() {
		return
	}
	select {
	case f.queue <- c:
	default:
		f.dropped.Inc()
		f.lost.Store(true)
	}
}

// markLost makes the publisher write a gap entry now.
func (f *Feed) markLost() {
	f.lost.Store(true)
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// publish writes queued changes, up to publishBatch per round trip, each
// in an entry of its own.
func (f *Feed) publish() {
	batch := make([]quota.Change, 0, publishBatch)
	var lastTrim time.Time
	failing := false
	for {
		batch = batch[:0]
		select {
		case <-f.ctx.Done():
			return
		case c := <-f.queue:
			batch = append(batch, c)
		case <-f.kick:
		}
	fill:
		for len(batch) < publishBatch {
			select {
			case c := <-f.queue:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		now := time.Now()
		trim := now.Sub(lastTrim) >= time.Second
		err := f.write(batch, now, trim)
		if err != nil {
			// Sent, outcome unknown: some entries may be in the stream.
			// They count as dropped, and the gap entry written with the
			// next batch tells subscribers to resync either way.
			f.dropped.Add(float64(len(batch)))
			f.lost.Store(true)
			if !failing && f.ctx.Err() == nil {
				f.log.Warn("publishing usage events failed; subscribers will be told to resync", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		if trim {
			lastTrim = now
		}
		f.published.Add(float64(len(batch)))
	}
}

// write sends batch in one pipeline, after a gap entry if changes were
// lost; trim also caps the stream's length.
func (f *Feed) write(batch []quota.Change, now time.Time, trim bool) error {
	minID := strconv.FormatInt(now.Add(-f.cfg.History).UnixMilli(), 10)
	pipe := f.rdb.Pipeline()
	if f.lost.Swap(false) {
		pipe.XAdd(f.ctx, &redis.XAddArgs{Stream: EventsStream, MinID: minID, Approx: true, Values: []any{"g", "1"}})
	}
	for i := range batch {
		data, err := json.Marshal(&batch[i])
		if err != nil { // a Change always encodes; keep the loss visible anyway
			f.lost.Store(true)
			continue
		}
		pipe.XAdd(f.ctx, &redis.XAddArgs{Stream: EventsStream, MinID: minID, Approx: true,
			Values: []any{"t", batch[i].Type, "s", batch[i].Subject, "c", data}})
	}
	if trim {
		pipe.XTrimMaxLenApprox(f.ctx, EventsStream, f.cfg.MaxEntries, 0)
	}
	if pipe.Len() == 0 {
		return nil
	}
	_, err := pipe.Exec(f.ctx)
	return err
}

// watchScript renews the watchers key, creating it with Redis's time as
// the start of a new watch if it is missing.
// KEYS[1]: WatchersKey. ARGV[1]: its TTL in ms.
// Returns {start of the watch, now}, both in ms on Redis's clock.
var watchScript = redis.NewScript(`
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = tonumber(redis.call("GET", KEYS[1]))
if start then
  redis.call("PEXPIRE", KEYS[1], ARGV[1])
else
  start = now
  redis.call("SET", KEYS[1], now, "PX", ARGV[1])
end
return {start, now}
`)

// watch reads (or, while this instance has subscribers, renews) the
// watchers key every Poll until ctx ends, then ends every subscription.
func (f *Feed) watch() {
	t := time.NewTicker(f.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-f.ctx.Done():
			f.Disconnect()
			return
		case <-t.C:
		}
		f.mu.Lock()
		watching := f.nsubs+f.joining > 0
		f.mu.Unlock()
		if watching {
			_, _, _ = f.keepWatch(f.ctx)
			continue
		}
		// A failed read keeps the gate as it was: publishing to a Redis
		// that cannot be read costs little, and a Feed that publishes
		// when it need not loses nothing.
		if n, err := f.rdb.Exists(f.ctx, WatchersKey).Result(); err == nil {
			f.open.Store(n == 1)
		}
	}
}

// keepWatch renews the watch, opens this Feed's gate and returns when the
// watch began and Redis's time, in ms.
func (f *Feed) keepWatch(ctx context.Context) (start, now int64, err error) {
	// A renewal may be late by a slow round trip or two; tests poll
	// every few ms.
	ttl := max(3*f.cfg.Poll, time.Second)
	v, err := watchScript.Run(ctx, f.rdb, []string{WatchersKey}, ttl.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, err
	}
	if len(v) != 2 {
		return 0, 0, fmt.Errorf("watch script answered %v", v)
	}
	start, now = v[0], v[1]
	f.open.Store(true)
	f.mu.Lock()
	prev := f.watchStart
	if f.nsubs+f.joining > 0 {
		f.watchStart = start
	}
	f.mu.Unlock()
	if prev != 0 && prev != start {
		// The watch lapsed while this instance had subscribers (it could
		// not renew it in time), so other instances may have stopped
		// publishing. Once all of them publish again, a gap entry tells
		// every subscriber to resync.
		wait := f.gateDelay - time.Duration(now-start)*time.Millisecond
		time.AfterFunc(max(wait, 0), f.markLost)
	}
	return start, now, nil
}

// Item is what a subscription delivers: a change, or word that changes
// were missed, or that the subscription was cut off.
type Item struct {
	// ID is the entry's id in EventsStream, the SSE id; "" for a Missed
	// or Overflow item this instance made.
	ID string
	// Type and Subject are those of the change; Data is the change as
	// JSON (a quota.Change).
	Type    string
	Subject string
	Data    []byte
	// Missed says changes before this point may not have been delivered:
	// the subscriber should start over from a snapshot.
	Missed bool
	// Overflow is the last item of a subscription that fell behind by
	// more than its buffer.
	Overflow bool

	pos streamID
}

// Subscription is one subscriber's view of the feed: Replay's items
// first, then live ones, through Next.
type Subscription struct {
	feed     *Feed
	subject  string
	replayed bool
	ready    chan struct{}
	done     chan struct{}

	// under feed.mu
	registered bool

	mu     sync.Mutex
	after  streamID // deliver only entries after this one
	replay []Item
	ring   []Item // live items, a ring that grows up to limit+1
	limit  int    // items held before the subscription is cut off
	head   int
	n      int
	ended  bool
}

// Replayed reports whether the subscription delivers every change after
// the lastEventID it was asked for. When false the caller should send a
// snapshot first.
func (s *Subscription) Replayed() bool { return s.replayed }

// Ready is signalled when Next may have items.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Done is closed when the subscription ends: cut off (its last item is
// the Overflow one), or the feed disconnected. Items queued before stay
// readable.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Next returns the next item, if one is waiting.
func (s *Subscription) Next() (Item, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.replay) > 0 {
		it := s.replay[0]
		s.replay[0] = Item{}
		s.replay = s.replay[1:]
		return it, true
	}
	if s.n == 0 {
		return Item{}, false
	}
	it := s.ring[s.head]
	s.ring[s.head] = Item{}
	s.head = (s.head + 1) % len(s.ring)
	s.n--
	return it, true
}

// Close ends the subscription.
func (s *Subscription) Close() {
	f := s.feed
	f.mu.Lock()
	f.unregister(s)
	f.mu.Unlock()
	s.mu.Lock()
	s.end()
	s.mu.Unlock()
}

// end marks s ended; s.mu is held.
func (s *Subscription) end() {
	if !s.ended {
		s.ended = true
		close(s.done)
	}
}

func (s *Subscription) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// push appends it to the ring, growing it (most subscriptions never hold
// more than a few items, and thousands may be open); s.mu is held.
func (s *Subscription) push(it Item) {
	if s.n == len(s.ring) {
		grown := make([]Item, min(2*len(s.ring), s.limit+1))
		for i := range s.n {
			grown[i] = s.ring[(s.head+i)%len(s.ring)]
		}
		s.ring, s.head = grown, 0
	}
	s.ring[(s.head+s.n)%len(s.ring)] = it
	s.n++
}

// deliver hands a live item to s and reports whether s was cut off. An
// item without a position (Missed, made here) always passes. f.mu is held.
func (s *Subscription) deliver(it Item) (cut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended || it.pos != (streamID{}) && !s.after.less(it.pos) {
		return false
	}
	if s.n == s.limit {
		s.push(Item{Overflow: true})
		s.end()
		s.signal()
		return true
	}
	s.push(it)
	s.signal()
	return false
}

// Subscribe starts a subscription to the changes of subject ("" for every
// subject). With a lastEventID inside the replay window (see the file's
// opening comment) it first delivers the changes after it; otherwise
// Replayed is false and only changes from now on are delivered (for one
// subject, from Lookback before now). It waits,
// when a watch has just begun, until every instance publishes. Errors
// wrap quota.ErrUnavailable: Redis did not answer, or the feed has
// disconnected.
func (f *Feed) Subscribe(ctx context.Context, subject, lastEventID string) (*Subscription, error) {
	s := &Subscription{feed: f, subject: subject, ready: make(chan struct{}, 1), done: make(chan struct{}),
		ring: make([]Item, 4), limit: f.cfg.Buffer}
	// Counted as watching from here, so that the watch is renewed while
	// this call waits for it to reach every instance.
	f.mu.Lock()
	f.joining++
	f.mu.Unlock()
	joined := false
	defer func() {
		if !joined {
			f.mu.Lock()
			f.joining--
			f.unwatched()
			f.mu.Unlock()
		}
	}()
	start, now, err := f.keepWatch(ctx)
	if err != nil {
		return nil, fmt.Errorf("events watch: %w: %w", quota.ErrUnavailable, err)
	}
	if wait := f.gateDelay - time.Duration(now-start)*time.Millisecond; wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	info, err := f.info(ctx)
	if err != nil {
		return nil, fmt.Errorf("events stream: %w: %w", quota.ErrUnavailable, err)
	}
	from, replay := f.replayable(lastEventID, start, info)
	lookback := !replay && subject != "" && f.cfg.Lookback > 0
	if lookback {
		since := now + max(f.gateDelay.Milliseconds()-(now-start), 0) - f.cfg.Lookback.Milliseconds()
		from = streamID{ms: uint64(max(since, 0))}
	}

	f.mu.Lock()
	if f.ended {
		f.mu.Unlock()
		return nil, fmt.Errorf("events: %w: shutting down", quota.ErrUnavailable)
	}
	f.joining--
	joined = true
	if !f.reading {
		f.reading, f.pos = true, info.last
		go f.read(info.last)
	}
	s.after = f.pos
	if replay || lookback {
		s.after = from
	}
	f.register(s)
	f.mu.Unlock()

	if replay || lookback {
		items, last, ok, err := f.rangeAfter(ctx, from, subject)
		if err == nil && ok {
			// Entries trimmed while the pages were read may be a gap
			// (which a lookback, followed by a snapshot, can afford).
			var after streamInfo
			if after, err = f.info(ctx); err == nil && (lookback || !after.trimmedAfter(from)) {
				s.finishReplay(items, last, replay)
				return s, nil
			}
		}
		if err != nil && ctx.Err() != nil {
			s.Close()
			return nil, ctx.Err()
		}
		// No replay after all: start from now, as without a lastEventID.
		f.mu.Lock()
		s.mu.Lock()
		clear(s.ring)
		s.head, s.n, s.after = 0, 0, f.pos
		s.mu.Unlock()
		f.mu.Unlock()
	}
	return s, nil
}

// finishReplay queues items ahead of the live ones and drops the live
// ones they already hold; replayed says whether they are a replay after
// the caller's lastEventID (or a lookback).
func (s *Subscription) finishReplay(items []Item, last streamID, replayed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replay, s.replayed = items, replayed
	if s.after.less(last) {
		s.after = last
	}
	live := make([]Item, 0, s.n)
	for i := range s.n {
		it := s.ring[(s.head+i)%len(s.ring)]
		if it.pos == (streamID{}) || s.after.less(it.pos) {
			live = append(live, it)
		}
	}
	clear(s.ring)
	s.head, s.n = 0, copy(s.ring, live)
	if len(items) > 0 || s.n > 0 {
		s.signal()
	}
}

// register adds s; f.mu is held.
func (f *Feed) register(s *Subscription) {
	m := f.subs[s.subject]
	if m == nil {
		m = map[*Subscription]struct{}{}
		f.subs[s.subject] = m
	}
	m[s] = struct{}{}
	s.registered = true
	f.nsubs++
	f.streams.Inc()
}

// unregister removes s, if it is there; f.mu is held.
func (f *Feed) unregister(s *Subscription) {
	if !s.registered {
		return
	}
	s.registered = false
	m := f.subs[s.subject]
	delete(m, s)
	if len(m) == 0 {
		delete(f.subs, s.subject)
	}
	f.nsubs--
	f.streams.Dec()
	f.unwatched()
}

// unwatched forgets the watch once this instance has no subscriber left;
// f.mu is held.
func (f *Feed) unwatched() {
	if f.nsubs+f.joining == 0 {
		f.watchStart = 0
	}
}

// Disconnect ends every subscription and refuses new ones; publishing goes
// on. quotad calls it when it starts shutting down, so that open streams
// do not hold the shutdown up.
func (f *Feed) Disconnect() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ended = true
	for _, m := range f.subs {
		for s := range m {
			f.unregister(s)
			s.mu.Lock()
			s.end()
			s.mu.Unlock()
		}
	}
}

// read hands out the stream's entries after from to the subscriptions,
// until none is left (or ctx ends).
func (f *Feed) read(from streamID) {
	pos := from.String()
	failing := false
	for {
		res, err := f.rdb.XRead(f.ctx, &redis.XReadArgs{Streams: []string{EventsStream, pos}, Count: readCount, Block: f.cfg.Poll}).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			if f.ctx.Err() == nil && !failing {
				f.log.Warn("reading usage events failed; retrying", "err", err)
			}
			failing = true
			select {
			case <-f.ctx.Done():
			case <-time.After(f.cfg.Poll / 4):
			}
		}
		var items []Item
		if err == nil && len(res) > 0 {
			items = make([]Item, 0, len(res[0].Messages))
			for _, m := range res[0].Messages {
				if it, ok := entryItem(m); ok {
					items = append(items, it)
				}
				pos = m.ID
			}
		}
		f.mu.Lock()
		if f.nsubs == 0 || f.ctx.Err() != nil {
			f.reading = false
			f.mu.Unlock()
			return
		}
		if failing && err == nil {
			// Entries may have been trimmed, or not written, meanwhile.
			failing = false
			f.fanout(Item{Missed: true})
		}
		for _, it := range items {
			f.fanout(it)
		}
		if p, ok := toStreamID(pos); ok {
			f.pos = p
		}
		f.mu.Unlock()
	}
}

// fanout delivers it to the subscriptions that want it; f.mu is held.
func (f *Feed) fanout(it Item) {
	var cut []*Subscription
	send := func(m map[*Subscription]struct{}) {
		for s := range m {
			if s.deliver(it) {
				cut = append(cut, s)
			}
		}
	}
	if it.Subject == "" { // a gap: every subscription
		for _, m := range f.subs {
			send(m)
		}
	} else {
		send(f.subs[it.Subject])
		send(f.subs[""])
	}
	for _, s := range cut {
		f.unregister(s)
	}
}

// entryItem turns a stream entry into an item; ok is false for an entry
// this quotad does not know.
func entryItem(m redis.XMessage) (Item, bool) {
	pos, ok := toStreamID(m.ID)
	if !ok {
		return Item{}, false
	}
	if _, gap := m.Values["g"]; gap {
		return Item{ID: m.ID, Missed: true, pos: pos}, true
	}
	typ, _ := m.Values["t"].(string)
	subject, _ := m.Values["s"].(string)
	data, _ := m.Values["c"].(string)
	if typ == "" || subject == "" || data == "" {
		return Item{}, false
	}
	return Item{ID: m.ID, Type: typ, Subject: subject, Data: []byte(data), pos: pos}, true
}

// rangeAfter reads the entries after from for subject (all for ""). ok is
// false when there are more than a replay may hold (the caller then sends
// a snapshot instead).
func (f *Feed) rangeAfter(ctx context.Context, from streamID, subject string) (items []Item, last streamID, ok bool, err error) {
	last = from
	maxItems := 4 * f.cfg.Buffer
	for scanned := int64(0); scanned < f.cfg.MaxEntries; {
		msgs, err := f.rdb.XRangeN(ctx, EventsStream, "("+last.String(), "+", readCount).Result()
		if err != nil {
			return nil, last, false, err
		}
		for _, m := range msgs {
			it, known := entryItem(m)
			if p, ok := toStreamID(m.ID); ok {
				last = p
			}
			if !known || it.Subject != "" && subject != "" && it.Subject != subject {
				continue
			}
			if len(items) == maxItems {
				return nil, last, false, nil
			}
			items = append(items, it)
		}
		if len(msgs) < readCount {
			return items, last, true, nil
		}
		scanned += int64(len(msgs))
	}
	return nil, last, false, nil
}

// streamInfo is what a replay decision needs to know of the stream.
type streamInfo struct {
	exists     bool
	last       streamID // the last id ever given; 0-0 for no stream
	maxDeleted streamID // the greatest id removed by XDEL (Redis 7)
	first      streamID // the first entry left
}

// trimmedAfter reports whether an entry after id may have been trimmed.
// Redis does not say what trimming removed (max-deleted-entry-id counts
// XDEL only), so the entries after id are known to be all there only
// when the first entry left is not after it.
func (i streamInfo) trimmedAfter(id streamID) bool {
	return id.less(i.first) || id.less(i.maxDeleted)
}

func (f *Feed) info(ctx context.Context) (streamInfo, error) {
	x, err := f.rdb.XInfoStream(ctx, EventsStream).Result()
	if err != nil {
		if strings.Contains(err.Error(), "no such key") {
			return streamInfo{}, nil
		}
		return streamInfo{}, err
	}
	i := streamInfo{exists: true}
	var ok bool
	if i.last, ok = toStreamID(x.LastGeneratedID); !ok {
		return streamInfo{}, fmt.Errorf("xinfo: last-generated-id %q", x.LastGeneratedID)
	}
	if x.MaxDeletedEntryID != "" {
		if i.maxDeleted, ok = toStreamID(x.MaxDeletedEntryID); !ok {
			return streamInfo{}, fmt.Errorf("xinfo: max-deleted-entry-id %q", x.MaxDeletedEntryID)
		}
	}
	if x.FirstEntry.ID != "" {
		i.first, _ = toStreamID(x.FirstEntry.ID)
	} else {
		i.first = i.last
	}
	return i, nil
}

// replayable decides whether the entries after lastEventID can be
// replayed: it must be an id the stream gave, with nothing after it
// trimmed, published once the watch that began at start (ms, Redis time)
// had reached every instance.
func (f *Feed) replayable(lastEventID string, start int64, info streamInfo) (streamID, bool) {
	if lastEventID == "" || !info.exists {
		return streamID{}, false
	}
	id, ok := toStreamID(lastEventID)
	if !ok || info.last.less(id) || info.trimmedAfter(id) {
		return streamID{}, false
	}
	if int64(id.ms) < start+f.gateDelay.Milliseconds() {
		return streamID{}, false
	}
	return id, true
}

// streamID is a Redis stream entry id, <ms>-<seq>.
type streamID struct{ ms, seq uint64 }

// toStreamID parses s; ok is false when it is not a stream id.
func toStreamID(s string) (id streamID, ok bool) {
	id.ms, id.seq, ok = parseStreamID(s)
	return id, ok
}

func (id streamID) String() string {
	return strconv.FormatUint(id.ms, 10) + "-" + strconv.FormatUint(id.seq, 10)
}

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || id.ms == o.ms && id.seq < o.seq
}
