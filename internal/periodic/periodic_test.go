package periodic_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/periodic"
)

// TestRun: fn runs again and again, and not once Run has returned.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		periodic.Run(ctx, time.Millisecond, func() {
			if calls.Add(1) == 3 {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	n := calls.Load()
	time.Sleep(20 * time.Millisecond)
	if n < 3 || calls.Load() != n {
		t.Fatalf("calls: %d, then %d after Run returned; want at least 3 and no more", n, calls.Load())
	}
}
