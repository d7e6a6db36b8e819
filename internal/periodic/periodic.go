// Package periodic runs background work on a ticker: the loop every
// sweep, prune, rollup and sampler of quotad otherwise wrote out again.
package periodic

import (
	"context"
	"time"
)

// Run calls fn every interval, the first time one interval after it
// starts, until ctx ends. A call that outlasts the interval delays the
// next one (the ticker drops the ticks missed meanwhile); Run returns
// once ctx has ended and no call is running.
func Run(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
