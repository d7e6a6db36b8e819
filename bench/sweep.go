package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A sweep asks what a scenario sustains, the way real traffic arrives: it
// does not wait for the server. It measures the closed loop's maximum
// (what the server answers with OK when clients wait for it), then runs
// the open loop at fractions and multiples of that rate and reports, for
// each, what was served and how fast. The sustainable rate is the highest
// offered rate at which nearly everything was served with a low p99.

// SweepOptions configures Sweep.
type SweepOptions struct {
	Load      LoadOptions // Scenario, URL, Key, Gen, Duration; Concurrency is the closed loop's
	Fractions []float64   // of the closed loop's OK rate; default 0.25, 0.5, 0.75, 1, 1.5
	// InFlight bounds the open loop's requests in flight; default 1024.
	InFlight int
	// P99Bound and ServedShare define "sustained": p99 at most P99Bound
	// and at least ServedShare of the offered requests answered OK.
	P99Bound    time.Duration // default 50ms
	ServedShare float64       // default 0.99
	Log         func(format string, args ...any)
}

// SweepStep is one run of a sweep.
type SweepStep struct {
	Fraction  float64 `json:"fraction"` // of the closed loop's OK rate; 0 for the closed loop itself
	Offered   float64 `json:"offered_per_second"`
	OK        float64 `json:"ok_per_second"`
	Shed      float64 `json:"shed_per_second"` // 503 answers
	Errors    int64   `json:"errors"`          // other non-2xx answers and transport errors
	Unsent    int64   `json:"unsent"`
	P50, P99  float64 `json:"-"`
	P999, Max float64 `json:"-"`
	Latency   Latency `json:"latency"`
	Sustained bool    `json:"sustained"`
}

// SweepResult is a whole sweep.
type SweepResult struct {
	Scenario    string      `json:"scenario"`
	ClosedOK    float64     `json:"closed_loop_ok_per_second"`
	Steps       []SweepStep `json:"steps"`
	Sustainable float64     `json:"sustainable_per_second"` // the highest sustained offered rate; 0 for none
}

// Sweep runs the closed loop, then the open loop at each fraction.
func Sweep(ctx context.Context, o SweepOptions) (*SweepResult, error) {
	if len(o.Fractions) == 0 {
		o.Fractions = []float64{0.25, 0.5, 0.75, 1, 1.5}
	}
	if o.InFlight <= 0 {
		o.InFlight = 1024
	}
	if o.P99Bound <= 0 {
		o.P99Bound = 50 * time.Millisecond
	}
	if o.ServedShare <= 0 {
		o.ServedShare = 0.99
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	res := &SweepResult{Scenario: o.Load.Scenario.Name}
	closed := o.Load
	closed.Mode = "closed"
	r, err := Run(ctx, nil, closed)
	if err != nil {
		return res, err
	}
	step := sweepStep(0, 0, r, o)
	res.ClosedOK = step.OK
	res.Steps = append(res.Steps, step)
	logf("closed loop, %d workers: %.0f OK/s, p99 %.2f ms", closed.Concurrency, step.OK, step.P99)
	if res.ClosedOK <= 0 {
		return res, fmt.Errorf("the closed loop got no OK answer")
	}
	for _, f := range o.Fractions {
		open := o.Load
		open.Mode, open.Rate, open.Concurrency = "open", f*res.ClosedOK, o.InFlight
		r, err := Run(ctx, nil, open)
		if err != nil {
			return res, err
		}
		step := sweepStep(f, open.Rate, r, o)
		res.Steps = append(res.Steps, step)
		if step.Sustained {
			res.Sustainable = max(res.Sustainable, step.Offered)
		}
		logf("open loop at %.0f%% (%.0f/s): %.0f OK/s, %.0f shed/s, p99 %.2f ms", f*100, open.Rate, step.OK, step.Shed, step.P99)
	}
	return res, nil
}

func sweepStep(f, offered float64, r *LoadResult, o SweepOptions) SweepStep {
	secs := r.Elapsed.Seconds()
	lat := LatencyOf(r.Hist, r.MaxMicros)
	s := SweepStep{Fraction: f, Offered: offered, Unsent: r.Unsent, Latency: lat,
		P50: lat.P50, P99: lat.P99, P999: lat.P999, Max: lat.Max}
	if f > 0 {
		// The open loop's rates are per second of scheduled arrivals: its
		// elapsed time also holds the last requests' answers.
		secs = o.Load.Duration.Seconds()
	}
	if secs > 0 {
		s.OK = float64(r.OK) / secs
		s.Shed = float64(r.Status[503]) / secs
	}
	s.Errors = r.Errors() - r.Status[503]
	if f > 0 {
		s.Sustained = s.P99 <= float64(o.P99Bound.Microseconds())/1000 && float64(r.OK) >= o.ServedShare*float64(r.Scheduled)
	}
	return s
}

// Table renders a sweep as a Markdown table.
func (r *SweepResult) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| %s | offered/s | OK/s | 503/s | other errors | p50 ms | p99 ms | p99.9 ms | max ms | sustained |\n", r.Scenario)
	b.WriteString("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
	for _, s := range r.Steps {
		load, offered, sustained := "closed loop", dash, dash
		if s.Fraction > 0 {
			load = "open loop at " + strconv.FormatFloat(s.Fraction*100, 'f', 0, 64) + " %"
			offered = fmtInt(s.Offered)
			sustained = "no"
			if s.Sustained {
				sustained = "yes"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |\n", load, offered, fmtInt(s.OK), fmtInt(s.Shed),
			s.Errors+s.Unsent, fmtMS(s.P50), fmtMS(s.P99), fmtMS(s.P999), fmtMS(s.Max), sustained)
	}
	fmt.Fprintf(&b, "\nsustainable: %s/s (the highest offered rate answered OK at ≥ 99 %% with p99 ≤ 50 ms)\n", fmtInt(r.Sustainable))
	return b.String()
}
