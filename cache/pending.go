package cache

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
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
	// ConsumerTTL: a consumer of the group (one per quotad process ever
	// started) with nothing pending and idle this long is deleted, so the
	// group's consumer list does not grow with every restart.
	ConsumerTTL time.Duration
	// The scan for abandoned entries (the flusher calls Claim from one
	// goroutine): when it started, and where the next call goes on while
	// the last one stopped at its count with more of the list to walk.
	lastClaim time.Time
	claimFrom string
	// beforeDropIdle, in tests, runs as a drop of idle consumers decides.
	beforeDropIdle func()
	// AliveTTL: each flusher says it is alive (a key with this time to
	// live, renewed every AliveTTL/3 by its looks at the stream); the
	// entries of a consumer whose key is gone are claimed at once, not
	// after ClaimIdle. A live flusher whose key lapsed (a pause longer than
	// AliveTTL) has its entries flushed twice, which the ledger's event
	// ids make harmless.
	AliveTTL  time.Duration
	lastBeat  atomic.Int64 // unix nanoseconds
	lastDeath time.Time    // the last look for dead consumers
}

// LiveFlusher is a flusher whose alive key is set: a running quotad.
type LiveFlusher struct {
	Name    string  `json:"name"`    // host-pid-start of its process
	Pending int64   `json:"pending"` // entries it read and has not acknowledged
	IdleSec float64 `json:"idle_seconds"`
}

// LiveFlushers lists the consumers of the flush group that say they are
// alive (their heartbeat key has not lapsed): the running instances, for
// readiness and the console's overview.
func LiveFlushers(ctx context.Context, rdb redis.UniversalClient) ([]LiveFlusher, error) {
	cs, err := rdb.XInfoConsumers(ctx, PendingStream, FlushGroup).Result()
	if isNoGroup(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list flushers: %w", err)
	}
	pipe := rdb.Pipeline()
	alive := make([]*redis.IntCmd, len(cs))
	for i, c := range cs {
		alive[i] = pipe.Exists(ctx, aliveKey(c.Name))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("list flushers: %w", err)
	}
	var out []LiveFlusher
	for i, c := range cs {
		if alive[i].Val() == 1 {
			out = append(out, LiveFlusher{Name: c.Name, Pending: c.Pending, IdleSec: c.Idle.Seconds()})
		}
	}
	return out, nil
}

// NewPending returns the stream reader for consumer, a name unique to this
// process.
func NewPending(rdb redis.UniversalClient, consumer string) *Pending {
	return &Pending{rdb: rdb, consumer: consumer, ClaimIdle: 30 * time.Second, ConsumerTTL: 24 * time.Hour, AliveTTL: 3 * time.Second}
}

func (p *Pending) ensureGroup(ctx context.Context) error {
	err := p.rdb.XGroupCreateMkStream(ctx, PendingStream, FlushGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create consumer group: %w", err)
	}
	return nil
}

// Claim appends to into the events of up to n entries delivered before
// and never acknowledged: first this consumer's own (a flush gave up on
// them), else those of flushers whose alive key lapsed (killed: see
// AliveTTL), else, at most every ClaimIdle/2, any idle longer than
// ClaimIdle (a flusher that never said it lives). It also answers the
// number of entries read.
func (p *Pending) Claim(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error) {
	own, err := p.read(ctx, "0", n)
	if isNoGroup(err) { // first start, or Redis lost its data
		if err := p.ensureGroup(ctx); err != nil {
			return into, 0, err
		}
		return p.Claim(ctx, n, into)
	}
	if err != nil || len(own) > 0 {
		return p.decode(into, own, err)
	}
	if now := time.Now(); now.Sub(p.lastDeath) >= p.AliveTTL/3 {
		p.lastDeath = now
		msgs, err := p.claimDead(ctx, n)
		if err != nil || len(msgs) > 0 {
			return p.decode(into, msgs, err)
		}
	}
	// XAUTOCLAIM walks the group's pending list inside Redis, which holds
	// every other request meanwhile; an entry is not claimable before it
	// sat ClaimIdle, so starting a walk more often than every ClaimIdle/2
	// finds nothing new. A walk that stopped at n entries goes on at the
	// next call, though, so a dead flusher's backlog drains at flush speed.
	start := p.claimFrom
	if start == "" {
		now := time.Now()
		if now.Sub(p.lastClaim) < p.ClaimIdle/2 {
			return into, 0, nil
		}
		p.lastClaim, start = now, "0-0"
		p.dropIdleConsumers(ctx)
	}
	msgs, next, err := p.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream: PendingStream, Group: FlushGroup, Consumer: p.consumer, MinIdle: p.ClaimIdle, Start: start, Count: int64(n),
	}).Result()
	p.claimFrom = ""
	if err != nil {
		return into, 0, fmt.Errorf("claim abandoned entries: %w", err)
	}
	if next != "0-0" {
		p.claimFrom = next
	}
	return p.decode(into, msgs, nil)
}

// claimDead claims up to n entries of consumers that have entries pending
// and no longer say they are alive (killed instances).
func (p *Pending) claimDead(ctx context.Context, n int) ([]redis.XMessage, error) {
	dead, err := deadConsumersScript.Run(ctx, p.rdb, []string{PendingStream}, FlushGroup, p.consumer, aliveKey("")).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("look for dead flushers: %w", err)
	}
	var out []redis.XMessage
	for _, c := range dead {
		pending, err := p.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: PendingStream, Group: FlushGroup,
			Start: "-", End: "+", Count: int64(n - len(out)), Consumer: c}).Result()
		if err != nil || len(pending) == 0 {
			continue
		}
		ids := make([]string, len(pending))
		for i, e := range pending {
			ids[i] = e.ID
		}
		msgs, err := p.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: PendingStream, Group: FlushGroup, Consumer: p.consumer, Messages: ids}).Result()
		if err != nil {
			return out, fmt.Errorf("claim a dead flusher's entries: %w", err)
		}
		for _, m := range msgs {
			if m.Values != nil { // deleted since delivery
				out = append(out, m)
			}
		}
		if len(out) >= n {
			break
		}
	}
	return out, nil
}

// deadConsumersScript lists the group's consumers, other than ARGV[2],
// with entries pending and no alive key (ARGV[3] followed by the name).
//
//	KEYS[1] pending stream
//	ARGV    consumer group; this consumer; alive key prefix
var deadConsumersScript = redis.NewScript(`
local consumers = redis.pcall("XINFO", "CONSUMERS", KEYS[1], ARGV[1])
if type(consumers) ~= "table" or consumers.err then return {} end
local dead = {}
for _, c in ipairs(consumers) do
  local name, pending
  for i = 1, #c, 2 do
    if c[i] == "name" then name = c[i + 1] elseif c[i] == "pending" then pending = c[i + 1] end
  end
  if name and name ~= ARGV[2] and pending and pending > 0 and redis.call("EXISTS", ARGV[3] .. name) == 0 then
    dead[#dead + 1] = name
  end
end
return dead
`)

// beat says this flusher is alive, at most every AliveTTL/3.
func (p *Pending) beat(ctx context.Context) {
	now := time.Now().UnixNano()
	if last := p.lastBeat.Load(); now-last < int64(p.AliveTTL/3) || !p.lastBeat.CompareAndSwap(last, now) {
		return
	}
	_ = p.rdb.Set(ctx, aliveKey(p.consumer), 1, p.AliveTTL).Err()
}

// dropIdleConsumers deletes the group's consumers that have nothing
// pending and were idle longer than ConsumerTTL: processes gone for good.
// A consumer with pending entries stays until they are claimed. The look
// and the delete are one script: between a look and a delete a consumer
// could read entries, which its deletion would drop from every pending
// list for good. Best effort: a failure here only leaves the list as it
// was.
func (p *Pending) dropIdleConsumers(ctx context.Context) {
	if p.beforeDropIdle != nil {
		p.beforeDropIdle()
	}
	_ = dropIdleScript.Run(ctx, p.rdb, []string{PendingStream}, FlushGroup, p.consumer, p.ConsumerTTL.Milliseconds()).Err()
}

// dropIdleScript deletes the group's consumers, other than ARGV[2], with
// nothing pending and idle longer than ARGV[3] milliseconds.
//
//	KEYS[1] pending stream
//	ARGV    consumer group; this consumer; idle limit (ms)
var dropIdleScript = redis.NewScript(`
local consumers = redis.pcall("XINFO", "CONSUMERS", KEYS[1], ARGV[1])
if type(consumers) ~= "table" or consumers.err then return 0 end
local dropped = 0
for _, c in ipairs(consumers) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == "name" then name = c[i + 1]
    elseif c[i] == "pending" then pending = c[i + 1]
    elseif c[i] == "idle" then idle = c[i + 1] end
  end
  if name and name ~= ARGV[2] and pending == 0 and idle and idle > tonumber(ARGV[3]) then
    redis.call("XGROUP", "DELCONSUMER", KEYS[1], ARGV[1], name)
    dropped = dropped + 1
  end
end
return dropped
`)

// Next appends to into the events of up to n entries never delivered to
// any flusher, and answers the number of entries read.
func (p *Pending) Next(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error) {
	msgs, err := p.read(ctx, ">", n)
	if isNoGroup(err) {
		if err := p.ensureGroup(ctx); err != nil {
			return into, 0, err
		}
		msgs, err = p.read(ctx, ">", n)
	}
	return p.decode(into, msgs, err)
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

// decode appends the events of msgs to events, after growing it once to
// hold them all (each entry's records counted first: the events of one
// flush, ~30,000 structs of ~250 bytes under load, were copied from slice
// to slice and grown step by step, ~40 MB/s of garbage at 28,000
// consumes/s, ~30 % of quotad's); on an error it answers events as
// they were.
func (p *Pending) decode(events []quota.Event, msgs []redis.XMessage, err error) ([]quota.Event, int, error) {
	if err != nil {
		return events, 0, err
	}
	n, more := len(events), 0
	for _, m := range msgs {
		raw, _ := m.Values["e"].(string)
		more += records(raw)
	}
	if len(events)+more > cap(events) {
		// At least doubled: a flush reads in several calls, and the
		// flusher keeps the slice for the next flush.
		events = slices.Grow(events, max(more, 2*cap(events)-len(events)))
	}
	for i, m := range msgs {
		if i%8 == 7 {
			runtime.Gosched() // see persist.yieldEvery: entries hold ~30 events each
		}
		if events, err = appendEntry(events, m); err != nil {
			return events[:n], 0, err
		}
	}
	return events, len(msgs), nil
}

func isNoGroup(err error) bool { return err != nil && strings.Contains(err.Error(), "NOGROUP") }

// appendEntry appends the events of one stream entry to events, each with
// the entry's id as its Ref; on an error it answers events as they were.
func appendEntry(events []quota.Event, m redis.XMessage) ([]quota.Event, error) {
	raw, _ := m.Values["e"].(string)
	n := len(events)
	var err error
	if u, old := m.Values["used"].(string); old { // one event, written before records
		var ev quota.Event
		if ev, err = decodeEvent(raw); err == nil {
			// Lua formatted this number itself, as 1e+17 from 10^14 up;
			// it only goes into idempotency answers, so 0 as before.
			ev.Used, _ = strconv.ParseInt(u, 10, 64)
			events = append(events, ev)
		}
	} else {
		events, err = appendRecords(events, raw)
	}
	if err != nil {
		return events[:n], fmt.Errorf("pending entry %s: %w", m.ID, err)
	}
	for i := n; i < len(events); i++ {
		events[i].Ref = m.ID
	}
	return events, nil
}

// ackEntries bounds the entries one ack script call acknowledges and
// deletes: Redis runs nothing else meanwhile.
const ackEntries = 500

// Ack acknowledges the entries of events written to Postgres and deletes
// them from the stream, once however often it is called. Every event of an
// entry must have been written: the entry is acknowledged as a whole.
func (p *Pending) Ack(ctx context.Context, events []quota.Event) error {
	var ids []any
	seen := map[string]bool{}
	for i := range events {
		if ref := events[i].Ref; !seen[ref] {
			seen[ref] = true
			ids = append(ids, ref)
		}
	}
	for len(ids) > 0 {
		n := min(len(ids), ackEntries)
		args := append([]any{FlushGroup}, ids[:n]...)
		if err := ackScript.Run(ctx, p.rdb, []string{PendingStream}, args...).Err(); err != nil {
			return fmt.Errorf("ack %d entries: %w", n, err)
		}
		ids = ids[n:]
	}
	return nil
}

// Stats looks at the stream, in one round trip: how many entries wait to
// be flushed, when the oldest was queued (zero when none), and how long
// the oldest entry no flusher has read yet had waited (0 when every entry
// was read), on Redis's clock: the newest entry's time minus its, so the
// two hosts' clocks do not matter.
func (p *Pending) Stats(ctx context.Context) (entries int64, oldest time.Time, unread time.Duration, err error) {
	p.beat(ctx) // a flusher that can look at the stream lives
	v, err := statsScript.Run(ctx, p.rdb, []string{PendingStream}, FlushGroup).Slice()
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("pending stats: %w", err)
	}
	if len(v) != 4 {
		return 0, time.Time{}, 0, fmt.Errorf("pending stats: script answered %v", v)
	}
	entries, _ = v[0].(int64)
	ids := [3]uint64{} // milliseconds of the oldest, the oldest unread, the newest
	for i := range ids {
		id, _ := v[i+1].(string)
		ids[i], _, _ = parseStreamID(id)
	}
	if ids[0] > 0 {
		oldest = time.UnixMilli(int64(ids[0]))
	}
	if ids[1] > 0 && ids[2] >= ids[1] {
		unread = time.Duration(ids[2]-ids[1]) * time.Millisecond
	}
	return entries, oldest, unread, nil
}
