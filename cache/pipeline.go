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
	"runtime"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

type call struct {
	consume bool // a consume op (keys: counter, idempotency; 6 args); else a GET of keys[0]
	keys    []string
	args    []any
	val     any // a GET's reply, or a consume op's first answer value
	val2    any // a consume op's second answer value
	err     error
	done    chan struct{}
}

// maxOpsPerScript bounds how many consumes one script call runs, so that
// no call holds Redis for long (a consume op takes a few microseconds).
const maxOpsPerScript = 64

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

type batcher struct {
	rdb      redis.UniversalClient
	calls    chan *call
	maxBatch int
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
// two values.
func (b *batcher) consume(ctx context.Context, keys []string, args []any) (any, any, error) {
	c, err := b.do(ctx, true, keys, args)
	if err != nil {
		return nil, nil, err
	}
	v1, v2 := c.val, c.val2
	b.release(c)
	return v1, v2, nil
}

// get reads key through a pipeline.
func (b *batcher) get(ctx context.Context, key string) (any, error) {
	c, err := b.do(ctx, false, []string{key}, nil)
	if err != nil {
		return nil, err
	}
	v := c.val
	b.release(c)
	return v, nil
}

// do queues a call and waits for its answer; the caller releases the
// call when it has read it (only when do answered no error).
func (b *batcher) do(ctx context.Context, consume bool, keys []string, args []any) (*call, error) {
	c := callPool.Get().(*call)
	c.consume, c.keys, c.args = consume, keys, args
	select {
	case b.calls <- c:
	case <-ctx.Done():
		callPool.Put(c)
		return nil, ctx.Err()
	}
	<-c.done
	if err := c.err; err != nil {
		b.release(c)
		return nil, err
	}
	return c, nil
}

func (b *batcher) release(c *call) {
	c.keys, c.args, c.val, c.val2, c.err = nil, nil, nil, nil, nil
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

// send pipelines the batch, consumes merged into script calls of up to
// maxOpsPerScript ops, and sets every call's answer. A script Redis does
// not know yet (first use, or after a restart) is run again through
// Script.Run, which loads it.
func (b *batcher) send(batch []*call) {
	ctx := context.Background() // a batch serves many requests; the client's timeouts bound it
	pipe := b.rdb.Pipeline()
	type group struct {
		calls []*call
		keys  []string
		args  []any
		cmd   *redis.Cmd
	}
	var gets []*redis.Cmd
	var groups []*group
	var g *group
	for _, c := range batch {
		if !c.consume {
			gets = append(gets, pipe.Do(ctx, "GET", c.keys[0]))
			continue
		}
		if g == nil || len(g.calls) == maxOpsPerScript {
			g = &group{keys: []string{PendingStream}}
			groups = append(groups, g)
		}
		g.calls = append(g.calls, c)
		g.keys = append(g.keys, c.keys...)
		g.args = append(g.args, c.args...)
	}
	for _, g := range groups {
		g.cmd = consumeScript.EvalSha(ctx, pipe, g.keys, g.args...)
	}
	_, _ = pipe.Exec(ctx) // errors are per command
	n := 0
	for _, c := range batch {
		if !c.consume {
			c.val, c.err = gets[n].Val(), gets[n].Err()
			n++
		}
	}
	for _, g := range groups {
		if err := g.cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			g.cmd = consumeScript.Run(ctx, b.rdb, g.keys, g.args...)
		}
		replies, err := g.cmd.Slice()
		for i, c := range g.calls {
			switch {
			case err != nil:
				c.err = err
			case 2*i+1 < len(replies):
				c.val, c.val2 = replies[2*i], replies[2*i+1]
			default:
				c.err = errShortReply
			}
		}
	}
}

var errShortReply = errors.New("consume script answered fewer ops than it was given")
