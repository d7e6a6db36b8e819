package cache

// The batcher turns concurrent Redis calls of the hot path (consume
// scripts, counter reads) into pipelines: one write and one read on one
// connection for many requests, instead of one round trip each.
//
// Data flow: a request puts its call on calls and waits on the call's
// done channel. Each of the batcher's workers takes a call, then whatever
// else is already queued (up to maxBatch, without waiting; it yields once
// so that goroutines ready to queue a call do so first), sends them as
// one pipeline, and hands every call its own answer. Under light load a
// batch is one call and nothing waits longer than before; under heavy
// load batches grow by themselves. Each call is still its own command, so
// every script stays atomic and its guarantees are unchanged; a pipeline
// is not a transaction and does not need to be.
//
// What may block: callers wait for their batch's round trip (bounded by
// the client's read/write timeouts); workers wait on Redis.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

type call struct {
	consume bool          // a consume op (keys: counter, idempotency, holds; 8 args)
	stream  string        // a consume op's pending stream
	script  *redis.Script // else a call of its own of this script (see script)
	// else a read (see get)
	keys []string
	args []any
	val  any // a GET's reply, or a consume op's first answer value
	val2 any // a consume op's second answer value, or the live holds a read found
	val3 any // a consume op's third answer value
	err  error
	done chan struct{}
}

// maxOpsPerScript bounds how many consumes one script call runs, so that
// no call holds Redis for long (a consume op takes a few microseconds).
const maxOpsPerScript = 64

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

type batcher struct {
	rdb      redis.UniversalClient
	calls    chan *call
	maxBatch int
	// waitReplicas, when above 0, ends every pipeline that writes with
	// WAIT: its writes answer only once that many replicas have them
	// (Counter.WaitReplicas).
	waitReplicas int64
	// slotRetries counts calls sent again because their slot was moving.
	slotRetries atomic.Int64
}

// replicaWait bounds a WAIT, well inside the client's read timeout so
// that a lagging replica is told apart from an unreachable Redis.
const replicaWait = 100 * time.Millisecond

// notReplicated is a write Redis applied that fewer replicas than asked
// confirmed within replicaWait: a failover now could lose it. It reads as
// a reply lost in time (a timeout, maybe applied), so the callers treat
// it as an outcome unknown: an op that must not run twice goes to
// Postgres with its event id, one safe to rerun is retried, and Redis is
// not left for it (it answered a ping).
type notReplicated struct{ got, want int64 }

func (e notReplicated) Error() string {
	return fmt.Sprintf("redis applied the write but %d of %d replicas confirmed it within %s", e.got, e.want, replicaWait)
}
func (notReplicated) Timeout() bool   { return true }
func (notReplicated) Temporary() bool { return true }

// waitFor queues a WAIT on pipe when the batcher waits for replicas and
// the pipeline writes; nil otherwise.
func (b *batcher) waitFor(ctx context.Context, pipe redis.Pipeliner, writes bool) *redis.Cmd {
	if b.waitReplicas <= 0 || !writes {
		return nil
	}
	return pipe.Do(ctx, "WAIT", b.waitReplicas, replicaWait.Milliseconds())
}

// replicated answers nil when wait (nil: none was asked) confirmed the
// replicas, else why not.
func (b *batcher) replicated(wait *redis.Cmd) error {
	if wait == nil {
		return nil
	}
	got, err := wait.Int64()
	var refused redis.Error
	if errors.As(err, &refused) { // Redis answered, and not with a count: nothing confirmed
		return notReplicated{0, b.waitReplicas}
	}
	if err != nil {
		return err
	}
	if got < b.waitReplicas {
		return notReplicated{got, b.waitReplicas}
	}
	return nil
}

// firstErr is err, or else also.
func firstErr(err, also error) error {
	if err != nil {
		return err
	}
	return also
}

// newBatcher starts workers pipelining calls to rdb until ctx ends.
func newBatcher(ctx context.Context, rdb redis.UniversalClient, workers, maxBatch int) *batcher {
	b := &batcher{rdb: rdb, calls: make(chan *call, workers*maxBatch), maxBatch: maxBatch}
	for range workers {
		go b.work(ctx)
	}
	return b
}

// consume runs one consume op (see consumeScript) and returns its answer's
// three values.
func (b *batcher) consume(ctx context.Context, stream string, keys []string, args []any) (any, any, any, error) {
	c := callPool.Get().(*call)
	c.stream = stream
	c, err := b.queue(ctx, c, true, keys, args)
	if err != nil {
		return nil, nil, nil, err
	}
	v1, v2, v3 := c.val, c.val2, c.val3
	b.release(c)
	return v1, v2, v3, nil
}

// script runs one call of s (a reservation script) in a pipeline, as its
// own command, and returns its reply.
func (b *batcher) script(ctx context.Context, s *redis.Script, keys []string, args []any) ([]any, error) {
	c := callPool.Get().(*call)
	c.script = s
	c, err := b.queue(ctx, c, false, keys, args)
	if err != nil {
		return nil, err
	}
	reply, ok := c.val.([]any)
	b.release(c)
	if !ok {
		return nil, errShortReply
	}
	return reply, nil
}

// get reads a counter and its live holds (the members of holds scored
// after now, unix milliseconds) through a pipeline: GET's reply, and
// ZRANGEBYSCORE's.
func (b *batcher) get(ctx context.Context, counter, holds string, now int64) (any, any, error) {
	c, err := b.do(ctx, false, []string{counter, holds}, []any{"(" + strconv.FormatInt(now, 10)})
	if err != nil {
		return nil, nil, err
	}
	v, h := c.val, c.val2
	b.release(c)
	return v, h, nil
}

// do queues a call and waits for its answer; the caller releases the
// call when it has read it (only when do answered no error).
func (b *batcher) do(ctx context.Context, consume bool, keys []string, args []any) (*call, error) {
	return b.queue(ctx, callPool.Get().(*call), consume, keys, args)
}

// queue sends c through a worker and waits for its answer. A call
// refused because its slot is moving between masters is sent again, for
// up to slotMoveWait, before the refusal is the caller's (see slotMoving).
func (b *batcher) queue(ctx context.Context, c *call, consume bool, keys []string, args []any) (*call, error) {
	c.consume, c.keys, c.args = consume, keys, args
	var giveUp time.Time
	for pause := slotMovePause; ; pause *= 2 {
		select {
		case b.calls <- c:
		case <-ctx.Done():
			b.release(c) // cleared: a pooled call must not keep its script for the next user
			return nil, ctx.Err()
		}
		<-c.done
		if !slotMoving(c.err) {
			break
		}
		if giveUp.IsZero() {
			giveUp = time.Now().Add(slotMoveWait)
		}
		if time.Now().Add(pause).After(giveUp) {
			break
		}
		b.slotRetries.Add(1)
		if cc, ok := b.rdb.(*redis.ClusterClient); ok && replyIs(c.err, []string{"MOVED "}) {
			cc.ReloadState(ctx) // the slot has a new master: read the map again
		}
		c.val, c.val2, c.val3, c.err = nil, nil, nil, nil
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			b.release(c)
			return nil, ctx.Err()
		}
	}
	if err := c.err; err != nil {
		b.release(c)
		return nil, err
	}
	return c, nil
}

// While a cluster moves a slot to another master, a script whose keys are
// split between the two, or not there yet (a new idempotency key), is
// refused with TRYAGAIN or ASK, and a client with the old map of slots
// gets MOVED once it has moved. Redis ran nothing, and a short move ends
// within a few pauses: sent again, the call is served by Redis instead of
// switching the whole instance to Postgres for it. A longer move is
// refused as before (unreachable), which keeps it exact.
const (
	slotMovePause = 5 * time.Millisecond
	slotMoveWait  = 250 * time.Millisecond
)

// slotMoving reports Redis's refusal of a call whose slot is moving (a
// part of refusedForNow).
func slotMoving(err error) bool { return replyIs(err, slotMovingReplies) }

var slotMovingReplies = []string{"TRYAGAIN", "ASK ", "MOVED "}

func (b *batcher) release(c *call) {
	c.script, c.stream, c.keys, c.args, c.val, c.val2, c.val3, c.err = nil, "", nil, nil, nil, nil, nil, nil
	callPool.Put(c)
}

func (b *batcher) work(ctx context.Context) {
	batch := make([]*call, 0, b.maxBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-b.calls:
			batch = append(batch[:0], c)
		}
		// Let the goroutines that are ready run first, so that their
		// calls join this batch. With one P (quotad pinned to one core gets
		// GOMAXPROCS=1) the handlers woken by the last batch's answers
		// would otherwise run only after this one was sent: batches of ~5
		// instead of ~25, and a Redis round trip (Redis on the same core)
		// per 5 consumes (closed loop, 64 connections: 27k -> 33k
		// consumes/s, Redis round trips per consume 0.18 -> 0.04). With
		// nothing else ready Gosched returns at once (~0.1 µs).
		runtime.Gosched()
	fill:
		for len(batch) < b.maxBatch {
			select {
			case c := <-b.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		b.send(batch)
		for _, c := range batch {
			c.done <- struct{}{}
		}
	}
}

// send sends the batch: to one Redis as one pipeline; to a cluster as
// one pipeline per master, all at once. The batcher splits it, not the
// cluster client, because a WAIT covers only the writes sent on its own
// connection. A call whose master is not known fails alone.
func (b *batcher) send(batch []*call) {
	cc, ok := b.rdb.(*redis.ClusterClient)
	if !ok {
		b.sendTo(b.rdb, batch)
		return
	}
	var nodes []*redis.Client
	var parts [][]*call
	for _, c := range batch {
		node, err := cc.MasterForKey(context.Background(), c.keys[0])
		if err != nil {
			c.err = err
			continue
		}
		i := slices.Index(nodes, node)
		if i < 0 {
			nodes, parts = append(nodes, node), append(parts, nil)
			i = len(nodes) - 1
		}
		parts[i] = append(parts[i], c)
	}
	var wg sync.WaitGroup
	for i := 1; i < len(nodes); i++ {
		wg.Go(func() { b.sendTo(nodes[i], parts[i]) })
	}
	if len(nodes) > 0 {
		b.sendTo(nodes[0], parts[0])
	}
	wg.Wait()
}

// sendTo pipelines calls to rdb (one Redis, or one master), consumes
// merged into script calls of up to maxOpsPerScript ops of one stream,
// and sets every call's answer. A script Redis does not know yet (first
// use, or after a restart) is run again through Script.Run, which loads
// it.
func (b *batcher) sendTo(rdb redis.UniversalClient, batch []*call) {
	ctx := context.Background() // a batch serves many requests; the client's timeouts bound it
	pipe := rdb.Pipeline()
	type group struct {
		calls []*call
		keys  []string
		args  []any
		cmd   *redis.Cmd
	}
	var gets, holds, scripts []*redis.Cmd
	var groups []*group
	filling := map[string]*group{} // by stream, the group that takes its next consume
	for _, c := range batch {
		if c.script != nil {
			scripts = append(scripts, c.script.EvalSha(ctx, pipe, c.keys, c.args...))
			continue
		}
		if !c.consume {
			gets = append(gets, pipe.Do(ctx, "GET", c.keys[0]))
			holds = append(holds, pipe.Do(ctx, "ZRANGEBYSCORE", c.keys[1], c.args[0], "+inf"))
			continue
		}
		g := filling[c.stream]
		if g == nil || len(g.calls) == maxOpsPerScript {
			g = &group{keys: []string{c.stream}}
			filling[c.stream] = g
			groups = append(groups, g)
		}
		g.calls = append(g.calls, c)
		g.keys = append(g.keys, c.keys...)
		g.args = append(g.args, c.args...)
	}
	for _, g := range groups {
		g.cmd = consumeScript.EvalSha(ctx, pipe, g.keys, g.args...)
	}
	writes := len(groups) > 0 || len(scripts) > 0
	wait := b.waitFor(ctx, pipe, writes)
	_, _ = pipe.Exec(ctx) // errors are per command

	// Scripts Redis did not know go again with their source, in a second
	// pipeline with a WAIT of its own (WAIT covers its connection's writes).
	var again redis.Pipeliner
	rerun := func(cmd *redis.Cmd, s *redis.Script, keys []string, args []any) (*redis.Cmd, bool) {
		if err := cmd.Err(); err == nil || !strings.HasPrefix(err.Error(), "NOSCRIPT") {
			return cmd, false
		}
		if again == nil {
			again = rdb.Pipeline()
		}
		return s.Eval(ctx, again, keys, args...), true
	}
	rerunScripts, rerunGroups := make([]bool, len(scripts)), make([]bool, len(groups))
	m := 0
	for _, c := range batch {
		if c.script != nil {
			scripts[m], rerunScripts[m] = rerun(scripts[m], c.script, c.keys, c.args)
			m++
		}
	}
	for i, g := range groups {
		g.cmd, rerunGroups[i] = rerun(g.cmd, consumeScript, g.keys, g.args)
	}
	unconfirmed, rerunUnconfirmed := b.replicated(wait), error(nil)
	if again != nil {
		againWait := b.waitFor(ctx, again, true)
		_, _ = again.Exec(ctx)
		rerunUnconfirmed = b.replicated(againWait)
	}
	verdict := func(cmd *redis.Cmd, rerun bool) {
		if rerun {
			cmd.SetErr(firstErr(cmd.Err(), rerunUnconfirmed))
		} else {
			cmd.SetErr(firstErr(cmd.Err(), unconfirmed))
		}
	}
	for i, cmd := range scripts {
		verdict(cmd, rerunScripts[i])
	}
	for i, g := range groups {
		verdict(g.cmd, rerunGroups[i])
	}

	n, m := 0, 0
	for _, c := range batch {
		if c.script != nil {
			c.val, c.err = scripts[m].Val(), scripts[m].Err()
			m++
			continue
		}
		if !c.consume {
			c.val, c.err = gets[n].Val(), gets[n].Err()
			if c.err == nil {
				c.val2, c.err = holds[n].Val(), holds[n].Err()
			}
			n++
		}
	}
	for _, g := range groups {
		replies, err := g.cmd.Slice()
		for i, c := range g.calls {
			switch {
			case err != nil:
				c.err = err
			case 3*i+2 < len(replies):
				c.val, c.val2, c.val3 = replies[3*i], replies[3*i+1], replies[3*i+2]
			default:
				c.err = errShortReply
			}
		}
	}
}

var errShortReply = errors.New("consume script answered fewer ops than it was given")
