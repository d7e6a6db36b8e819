package bench

import (
	"strings"
	"testing"
	"time"
)

// TestSweepStep: an open-loop step counts its rates per second of
// scheduled arrivals and is sustained only with nearly every scheduled
// request answered OK and a p99 under the bound.
func TestSweepStep(t *testing.T) {
	o := SweepOptions{Load: LoadOptions{Duration: 10 * time.Second}, P99Bound: 50 * time.Millisecond, ServedShare: 0.99}
	mk := func(ok, shed, scheduled int64, p99us int64) *LoadResult {
		h := NewHistogram()
		for range 98 {
			_ = h.RecordValue(1000)
		}
		_ = h.RecordValue(p99us)
		_ = h.RecordValue(p99us)
		return &LoadResult{Requests: ok + shed, OK: ok, Status: map[int]int64{200: ok, 503: shed}, Scheduled: scheduled,
			Elapsed: 12 * time.Second, Hist: h, MaxMicros: p99us}
	}
	s := sweepStep(0.5, 1000, mk(9950, 0, 10000, 20_000), o)
	if s.OK != 995 || !s.Sustained || s.Shed != 0 {
		t.Fatalf("all served fast: %+v", s)
	}
	if s := sweepStep(0.5, 1000, mk(9950, 0, 10000, 80_000), o); s.Sustained {
		t.Fatalf("p99 80 ms counted as sustained: %+v", s)
	}
	if s := sweepStep(1.5, 3000, mk(20000, 10000, 30000, 20_000), o); s.Sustained || s.Shed != 1000 || s.Errors != 0 {
		t.Fatalf("a third shed: %+v", s)
	}
	closed := sweepStep(0, 0, mk(12000, 0, 0, 20_000), o)
	if closed.OK != 1000 || closed.Sustained {
		t.Fatalf("closed loop: %+v", closed)
	}
	r := &SweepResult{Scenario: "consume-record", ClosedOK: closed.OK, Steps: []SweepStep{closed, s}, Sustainable: 1000}
	if tab := r.Table(); !strings.Contains(tab, "open loop at 50 %") || !strings.Contains(tab, "sustainable: 1,000/s") {
		t.Fatalf("table:\n%s", tab)
	}
}
