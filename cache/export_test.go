package cache

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/quotad/quotad/quota"
)

// SetLoadWait changes how long a consume waits to load its counter.
func (c *Counter) SetLoadWait(d time.Duration) { c.loadWait = d }

// Loading is what the tries to load one counter share.
type Loading = loading

// Load is one try to load a counter found missing.
func (c *Counter) Load(ctx context.Context, key quota.CounterKey, ld *Loading) (bool, error) {
	return c.load(ctx, key, time.Now(), ld)
}

// BeforeDropIdle sets a hook the next drop of idle consumers runs while it
// decides, where another consumer's read could come in.
func (p *Pending) BeforeDropIdle(f func()) { p.beforeDropIdle = f }

// BeforeDirect sets a hook that runs after a try through Redis failed and
// before the op goes to Postgres.
func (h *Health) BeforeDirect(f func()) { h.beforeDirect = f }

// Gone is gone for the tests.
var Gone = gone

// LateReplies is how many late replies h counted.
func (h *Health) LateReplies() float64 { return testutil.ToFloat64(h.late) }

// KeySlot is keySlot for the tests.
var KeySlot = keySlot
