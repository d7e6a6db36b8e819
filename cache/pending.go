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

// Pending is the Redis streams of usage not yet in Postgres (one, or one
// per bucket: see Layout), read through a consumer group on each so that
// several flushers share them: each entry is delivered to one flusher,
// stays in that flusher's pending list until it is acknowledged, and is
// claimed by another flusher when it sat unacknowledged longer than
// ClaimIdle (its flusher died). Every call covers every stream: a read
// takes up to n entries of each, in one pipeline (on a cluster, one per
// node), so no bucket waits behind another.
type Pending struct {
	rdb       redis.UniversalClient
	streams   []string // Layout.Streams; an event's Queue indexes it
	consumer  string
	ClaimIdle time.Duration
	// ConsumerTTL: a consumer of the group (one per quotad process ever
	// started) with nothing pending and idle this long is deleted, so the
	// group's consumer list does not grow with every restart.
	ConsumerTTL time.Duration
	// The scan for abandoned entries (the flusher calls Claim from one
	// goroutine): when it started, and for each stream where the next
	// call goes on while the last one stopped at its count with more of
	// the list to walk ("" when done).
	lastClaim time.Time
	claimFrom []string
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
// readiness and the console's overview. A flusher is a consumer of every
// stream's group, so its entries pending are summed over the streams and
// its idle time is the shortest of them.
func LiveFlushers(ctx context.Context, rdb redis.UniversalClient, l Layout) ([]LiveFlusher, error) {
	streams := l.Streams()
	pipe := rdb.Pipeline()
	infos := make([]*redis.XInfoConsumersCmd, len(streams))
	for i, s := range streams {
		infos[i] = pipe.XInfoConsumers(ctx, s, FlushGroup)
	}
	_, _ = pipe.Exec(ctx) // each command's error is looked at below
	var names []string
	byName := map[string]*LiveFlusher{}
	for _, cmd := range infos {
		cs, err := cmd.Result()
		if isNoGroup(err) || (err != nil && strings.Contains(err.Error(), "no such key")) {
			continue // no flusher has read this stream yet
		}
		if err != nil {
			return nil, fmt.Errorf("list flushers: %w", err)
		}
		for _, c := range cs {
			f := byName[c.Name]
			if f == nil {
				f = &LiveFlusher{Name: c.Name, IdleSec: c.Idle.Seconds()}
				byName[c.Name] = f
				names = append(names, c.Name)
			}
			f.Pending += c.Pending
			f.IdleSec = min(f.IdleSec, c.Idle.Seconds())
		}
	}
	alive, err := aliveOf(ctx, rdb, names)
	if err != nil {
		return nil, fmt.Errorf("list flushers: %w", err)
	}
	var out []LiveFlusher
	for _, n := range names {
		if alive[n] {
			out = append(out, *byName[n])
		}
	}
	return out, nil
}

// aliveOf answers which of the consumers names have their alive key set.
func aliveOf(ctx context.Context, rdb redis.UniversalClient, names []string) (map[string]bool, error) {
	pipe := rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(names))
	for i, n := range names {
		cmds[i] = pipe.Exists(ctx, aliveKey(n))
	}
	if len(names) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}
	alive := make(map[string]bool, len(names))
	for i, n := range names {
		alive[n] = cmds[i].Val() == 1
	}
	return alive, nil
}

// NewPending returns the stream reader for consumer, a name unique to this
// process, over the one-Redis layout's stream until SetLayout.
func NewPending(rdb redis.UniversalClient, consumer string) *Pending {
	p := &Pending{rdb: rdb, consumer: consumer, ClaimIdle: 30 * time.Second, ConsumerTTL: 24 * time.Hour, AliveTTL: 3 * time.Second}
	p.SetLayout(Layout{})
	return p
}

// SetLayout makes the reader read the streams of l. Call it before the
// flusher runs.
func (p *Pending) SetLayout(l Layout) {
	p.streams = l.Streams()
	p.claimFrom = make([]string, len(p.streams))
}

func (p *Pending) ensureGroups(ctx context.Context) error {
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.StatusCmd, len(p.streams))
	for i, s := range p.streams {
		cmds[i] = pipe.XGroupCreateMkStream(ctx, s, FlushGroup, "0")
	}
	_, _ = pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
			return fmt.Errorf("create consumer group: %w", err)
		}
	}
	return nil
}

// Claim appends to into the events of up to n entries of each stream
// delivered before and never acknowledged: first this consumer's own (a
// flush gave up on them), else those of flushers whose alive key lapsed
// (killed: see AliveTTL), else, at most every ClaimIdle/2, any idle
// longer than ClaimIdle (a flusher that never said it lives). It also
// answers the most entries read from one stream.
func (p *Pending) Claim(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error) {
	own, err := p.readAll(ctx, "0", n)
	if err != nil || mostOf(own) > 0 {
		return p.decodeAll(into, own, err)
	}
	if now := time.Now(); now.Sub(p.lastDeath) >= p.AliveTTL/3 {
		p.lastDeath = now
		msgs, err := p.claimDead(ctx, n)
		if err != nil || mostOf(msgs) > 0 {
			return p.decodeAll(into, msgs, err)
		}
	}
	// XAUTOCLAIM walks the group's pending list inside Redis, which holds
	// every other request meanwhile; an entry is not claimable before it
	// sat ClaimIdle, so starting a walk more often than every ClaimIdle/2
	// finds nothing new. A walk that stopped at n entries goes on at the
	// next call, though, so a dead flusher's backlog drains at flush speed.
	if !slices.ContainsFunc(p.claimFrom, func(s string) bool { return s != "" }) {
		now := time.Now()
		if now.Sub(p.lastClaim) < p.ClaimIdle/2 {
			return into, 0, nil
		}
		p.lastClaim = now
		for i := range p.claimFrom {
			p.claimFrom[i] = "0-0"
		}
		p.dropIdleConsumers(ctx)
	}
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.XAutoClaimCmd, len(p.streams))
	for i, s := range p.streams {
		if p.claimFrom[i] != "" {
			cmds[i] = pipe.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: s, Group: FlushGroup, Consumer: p.consumer, MinIdle: p.ClaimIdle, Start: p.claimFrom[i], Count: int64(n),
			})
		}
	}
	_, _ = pipe.Exec(ctx) // errors are per command
	msgs := make([][]redis.XMessage, len(p.streams))
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		p.claimFrom[i] = ""
		got, next, err := cmd.Result()
		if err != nil {
			return into, 0, fmt.Errorf("claim abandoned entries: %w", err)
		}
		if next != "0-0" {
			p.claimFrom[i] = next
		}
		msgs[i] = got
	}
	return p.decodeAll(into, msgs, nil)
}

// mostOf is the most entries of one stream in msgs.
func mostOf(msgs [][]redis.XMessage) int {
	most := 0
	for _, m := range msgs {
		most = max(most, len(m))
	}
	return most
}

// claimDead claims up to n entries of each stream from consumers that
// have entries pending there and no longer say they are alive (killed
// instances).
func (p *Pending) claimDead(ctx context.Context, n int) ([][]redis.XMessage, error) {
	pipe := p.rdb.Pipeline()
	infos := make([]*redis.XInfoConsumersCmd, len(p.streams))
	for i, s := range p.streams {
		infos[i] = pipe.XInfoConsumers(ctx, s, FlushGroup)
	}
	_, _ = pipe.Exec(ctx)
	holding := make([][]string, len(p.streams)) // per stream, the others with entries pending
	var names []string
	for i, cmd := range infos {
		cs, err := cmd.Result()
		if err != nil {
			continue // no group yet: nothing to claim there
		}
		for _, c := range cs {
			if c.Name != p.consumer && c.Pending > 0 {
				holding[i] = append(holding[i], c.Name)
				if !slices.Contains(names, c.Name) {
					names = append(names, c.Name)
				}
			}
		}
	}
	if len(names) == 0 {
		return nil, nil
	}
	alive, err := aliveOf(ctx, p.rdb, names)
	if err != nil {
		return nil, fmt.Errorf("look for dead flushers: %w", err)
	}
	out := make([][]redis.XMessage, len(p.streams))
	for i, s := range p.streams {
		for _, c := range holding[i] {
			if alive[c] || len(out[i]) >= n {
				continue
			}
			pending, err := p.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s, Group: FlushGroup,
				Start: "-", End: "+", Count: int64(n - len(out[i])), Consumer: c}).Result()
			if err != nil || len(pending) == 0 {
				continue
			}
			ids := make([]string, len(pending))
			for j, e := range pending {
				ids[j] = e.ID
			}
			msgs, err := p.rdb.XClaim(ctx, &redis.XClaimArgs{Stream: s, Group: FlushGroup, Consumer: p.consumer, Messages: ids}).Result()
			if err != nil {
				return out, fmt.Errorf("claim a dead flusher's entries: %w", err)
			}
			for _, m := range msgs {
				if m.Values != nil { // deleted since delivery
					out[i] = append(out[i], m)
				}
			}
		}
	}
	return out, nil
}

// Leave ends this flusher's heartbeat, for a stop after its last drain:
// the layout guard and other flushers' claims need not wait AliveTTL for
// it to lapse.
func (p *Pending) Leave(ctx context.Context) error {
	p.lastBeat.Store(time.Now().Add(24 * time.Hour).UnixNano()) // no beat after this
	return p.rdb.Del(ctx, aliveKey(p.consumer)).Err()
}

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
	_ = p.onEach(ctx, dropIdleScript, func(int) []any {
		return []any{FlushGroup, p.consumer, p.ConsumerTTL.Milliseconds()}
	}, nil)
}

// onEach runs script once per stream (KEYS[1]: the stream; args(i): its
// ARGV), in one pipeline, loading the script where a node did not know
// it; each reply goes to reply(i, cmd) when reply is set. It answers the
// first error.
func (p *Pending) onEach(ctx context.Context, script *redis.Script, args func(i int) []any, reply func(i int, cmd *redis.Cmd) error) error {
	cmds := make([]*redis.Cmd, len(p.streams))
	for try := 0; ; try++ {
		pipe := p.rdb.Pipeline()
		for i, s := range p.streams {
			cmds[i] = script.EvalSha(ctx, pipe, []string{s}, args(i)...)
		}
		_, _ = pipe.Exec(ctx)
		noScript := slices.ContainsFunc(cmds, func(c *redis.Cmd) bool {
			return c.Err() != nil && strings.HasPrefix(c.Err().Error(), "NOSCRIPT")
		})
		if !noScript || try > 0 {
			break
		}
		if err := script.Load(ctx, p.rdb).Err(); err != nil { // on every master of a cluster
			return err
		}
	}
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return err
		}
		if reply != nil {
			if err := reply(i, cmd); err != nil {
				return err
			}
		}
	}
	return nil
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

// Next appends to into the events of up to n entries of each stream never
// delivered to any flusher, and answers the most entries read from one
// stream (n when one may have more).
func (p *Pending) Next(ctx context.Context, n int, into []quota.Event) ([]quota.Event, int, error) {
	msgs, err := p.readAll(ctx, ">", n)
	return p.decodeAll(into, msgs, err)
}

// readAll reads this consumer's entries after id from every stream: "0"
// for its own unacknowledged ones, ">" for new ones. A stream without the
// group (first start, or Redis lost its data) gets it, and is read again.
func (p *Pending) readAll(ctx context.Context, id string, n int) ([][]redis.XMessage, error) {
	for try := 0; ; try++ {
		pipe := p.rdb.Pipeline()
		cmds := make([]*redis.XStreamSliceCmd, len(p.streams))
		for i, s := range p.streams {
			cmds[i] = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
				Group: FlushGroup, Consumer: p.consumer, Streams: []string{s, id}, Count: int64(n), Block: -1,
			})
		}
		_, _ = pipe.Exec(ctx) // errors are per command
		out := make([][]redis.XMessage, len(p.streams))
		noGroup := false
		for i, cmd := range cmds {
			streams, err := cmd.Result()
			if isNoGroup(err) {
				noGroup = true
				continue
			}
			if err != nil && !errors.Is(err, redis.Nil) {
				return nil, fmt.Errorf("read pending: %w", err)
			}
			for _, s := range streams {
				for _, m := range s.Messages {
					if m.Values != nil { // an own entry deleted since delivery
						out[i] = append(out[i], m)
					}
				}
			}
		}
		if !noGroup || try > 0 {
			return out, nil
		}
		if err := p.ensureGroups(ctx); err != nil {
			return nil, err
		}
	}
}

// decodeAll decodes the entries of every stream (msgs[i]: stream i's)
// into events, as decode does, and answers the most entries of one.
func (p *Pending) decodeAll(events []quota.Event, msgs [][]redis.XMessage, err error) ([]quota.Event, int, error) {
	if err != nil {
		return events, 0, err
	}
	n := len(events)
	for i, m := range msgs {
		from := len(events)
		if events, _, err = p.decode(events, m, nil); err != nil {
			return events[:n], 0, err
		}
		for j := from; j < len(events); j++ {
			events[j].Queue = i
		}
	}
	return events, mostOf(msgs), nil
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
// them from their streams, once however often it is called. Every event
// of an entry must have been written: the entry is acknowledged as a
// whole.
func (p *Pending) Ack(ctx context.Context, events []quota.Event) error {
	ids := make([][]any, len(p.streams))
	seen := map[string]bool{}
	for i := range events {
		e := &events[i]
		if e.Queue < 0 || e.Queue >= len(ids) {
			return fmt.Errorf("ack: event %s is of stream %d, of %d", e.ID, e.Queue, len(ids))
		}
		if k := strconv.Itoa(e.Queue) + "/" + e.Ref; !seen[k] {
			seen[k] = true
			ids[e.Queue] = append(ids[e.Queue], e.Ref)
		}
	}
	for q, refs := range ids {
		for len(refs) > 0 {
			n := min(len(refs), ackEntries)
			args := append([]any{FlushGroup}, refs[:n]...)
			if err := ackScript.Run(ctx, p.rdb, []string{p.streams[q]}, args...).Err(); err != nil {
				return fmt.Errorf("ack %d entries: %w", n, err)
			}
			refs = refs[n:]
		}
	}
	return nil
}

// Stats looks at the streams, in one pipeline: how many entries wait to
// be flushed, when the oldest was queued (zero when none), and how long
// the oldest entry no flusher has read yet had waited (0 when every entry
// was read), the longest of the streams, each on its Redis's clock: the
// newest entry's time minus its, so the hosts' clocks do not matter.
func (p *Pending) Stats(ctx context.Context) (entries int64, oldest time.Time, unread time.Duration, err error) {
	p.beat(ctx) // a flusher that can look at the stream lives
	err = p.onEach(ctx, statsScript, func(int) []any { return []any{FlushGroup} }, func(_ int, cmd *redis.Cmd) error {
		v, err := cmd.Slice()
		if err != nil || len(v) != 4 {
			return fmt.Errorf("script answered %v (%v)", v, err)
		}
		n, _ := v[0].(int64)
		entries += n
		ids := [3]uint64{} // milliseconds of the oldest, the oldest unread, the newest
		for i := range ids {
			id, _ := v[i+1].(string)
			ids[i], _, _ = parseStreamID(id)
		}
		if t := time.UnixMilli(int64(ids[0])); ids[0] > 0 && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
		if ids[1] > 0 && ids[2] >= ids[1] {
			unread = max(unread, time.Duration(ids[2]-ids[1])*time.Millisecond)
		}
		return nil
	})
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("pending stats: %w", err)
	}
	return entries, oldest, unread, nil
}
