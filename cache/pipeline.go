package cache

// The batcher turns concurrent Redis calls of the hot path (consume
// scripts, counter reads) into pipelines: one write and one read on one
// connection for many requests, instead of one round trip each.
//
// Data flow: a request puts its call on calls and waits on the call's
// done channel. Each of the batcher's workers takes a call, then whatever
// else is already queued (up to maxBatch, without waiting), sends them as
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
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

type call struct {
	script *redis.Script // nil for a GET of keys[0]
	keys   []string
	args   []any
	val    any
	err    error
	done   chan struct{}
}

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

// do runs one call through a pipeline and returns its reply.
func (b *batcher) do(ctx context.Context, script *redis.Script, keys []string, args ...any) (any, error) {
	c := callPool.Get().(*call)
	c.script, c.keys, c.args = script, keys, args
	select {
	case b.calls <- c:
	case <-ctx.Done():
		callPool.Put(c)
		return nil, ctx.Err()
	}
	<-c.done
	val, err := c.val, c.err
	c.script, c.keys, c.args, c.val, c.err = nil, nil, nil, nil, nil
	callPool.Put(c)
	return val, err
}

func (b *batcher) work(ctx context.Context) {
	batch := make([]*call, 0, b.maxBatch)
	cmds := make([]*redis.Cmd, 0, b.maxBatch)
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-b.calls:
			batch = append(batch[:0], c)
		}
	fill:
		for len(batch) < b.maxBatch {
			select {
			case c := <-b.calls:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		cmds = b.send(batch, cmds[:0])
		for i, c := range batch {
			c.val, c.err = cmds[i].Val(), cmds[i].Err()
			c.done <- struct{}{}
		}
	}
}

// send pipelines the batch. A script Redis does not know yet (first use,
// or after a restart) is run again through Script.Run, which loads it.
func (b *batcher) send(batch []*call, cmds []*redis.Cmd) []*redis.Cmd {
	ctx := context.Background() // a batch serves many requests; the client's timeouts bound it
	pipe := b.rdb.Pipeline()
	for _, c := range batch {
		if c.script == nil {
			cmds = append(cmds, pipe.Do(ctx, "GET", c.keys[0]))
		} else {
			cmds = append(cmds, c.script.EvalSha(ctx, pipe, c.keys, c.args...))
		}
	}
	_, _ = pipe.Exec(ctx) // errors are per command
	for i, c := range batch {
		if c.script != nil && cmds[i].Err() != nil && strings.HasPrefix(cmds[i].Err().Error(), "NOSCRIPT") {
			cmds[i] = c.script.Run(ctx, b.rdb, c.keys, c.args...)
		}
	}
	return cmds
}
