package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// SuiteTarget is one quotad instance and the scenarios to run on it.
type SuiteTarget struct {
	Label     string
	URL       string
	Scenarios []Scenario
	// WantTiers, when set, fails the suite if the instance's /metrics
	// show other tiers ("full" has L1 metrics, "postgres" has none).
	WantTiers string
}

// SuiteOptions configures RunSuite.
type SuiteOptions struct {
	Targets []SuiteTarget
	// Load is the template of every run: Key, Gen, Mode, Concurrency,
	// Rate, Duration and Seed (URL and Scenario are set per run).
	Load LoadOptions
	// Warmup runs each target's scenarios round-robin before measuring;
	// not recorded. 0 skips it.
	Warmup time.Duration
	// FlushWait is the least wait after a run with consumes on full tiers
	// before the final scrape, so that the run's consumes are flushed;
	// then the suite waits for quotad_flush_pending to reach 0, at most
	// FlushDrainMax.
	FlushWait     time.Duration
	FlushDrainMax time.Duration
	// SkipSeedCheck skips the check that the subjects were seeded.
	SkipSeedCheck bool
	Progress      *Progress
	Log           io.Writer // one line per step; nil for none
}

// RunSuite runs every target's scenarios in order and returns the report
// (Command, Machine, Date and Notes are left to the caller). On an error
// the report holds the runs done so far.
func RunSuite(ctx context.Context, o SuiteOptions) (*Report, error) {
	if o.FlushDrainMax <= 0 {
		o.FlushDrainMax = 15 * time.Second
	}
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	rep := &Report{
		Started: time.Now(),
		Settings: Settings{
			Mode:        o.Load.Mode,
			Concurrency: o.Load.Concurrency,
			Duration:    o.Load.Duration.String(),
			Warmup:      o.Warmup.String(),
			FlushWait:   o.FlushWait.String(),
			Seed:        o.Load.Seed,
			Gen:         genJSON(o.Load.Gen),
		},
	}
	if o.Load.Mode == "open" {
		rep.Settings.Rate = o.Load.Rate
	}
	defer func() { rep.Finished = time.Now() }()
	mc := NewClient(2, 10*time.Second) // scrapes: never queued behind the load

	for _, t := range o.Targets {
		info, err := describeTarget(ctx, mc, t)
		if err != nil {
			return rep, err
		}
		rep.Targets = append(rep.Targets, info)
		logf("target %s: %s, tiers %s", t.Label, t.URL, info.Tiers)
		if !o.SkipSeedCheck {
			if err := checkSeeded(ctx, mc, o.Load.Key, t); err != nil {
				return rep, err
			}
		}
		client, err := NewLoadClient(t.URL, o.Load.Concurrency, 30*time.Second)
		if err != nil {
			return rep, err
		}
		if o.Warmup > 0 && len(t.Scenarios) > 0 {
			lo := o.Load
			lo.URL, lo.Scenario, lo.Duration = t.URL, RoundRobin(t.Scenarios), o.Warmup
			lo.Seed = o.Load.Seed + 1_000_003 // other subjects than the measured runs draw first
			o.Progress.Start(t.Label+"/warm-up", o.Warmup)
			lo.Progress = o.Progress.Update
			before, err := Scrape(ctx, mc, t.URL)
			if err != nil {
				return rep, err
			}
			res, err := Run(ctx, client, lo)
			if err != nil {
				o.Progress.Finish("")
				return rep, fmt.Errorf("warm-up of %s: %w", t.Label, err)
			}
			summary := fmt.Sprintf("%s req/s, %d errors (not recorded)", fmtInt(res.RPS()), res.Errors())
			if info.Tiers == "full" && res.Consumes > 0 && o.FlushWait > 0 {
				// Let the warm-up's consumes reach Postgres now, not
				// during (and on the account of) the first measured run.
				_, waited, err := waitFlushed(ctx, mc, t.URL, before, res.Consumes, o.FlushWait, o.FlushDrainMax, nil)
				if err != nil {
					o.Progress.Finish("")
					return rep, err
				}
				summary += fmt.Sprintf(", flushed after %.1fs", waited.Seconds())
			}
			o.Progress.Finish(summary)
		}
		for _, sc := range t.Scenarios {
			rr, err := runOne(ctx, client, mc, o, t, info.Tiers, sc)
			if err != nil {
				return rep, fmt.Errorf("%s/%s: %w", t.Label, sc.Name, err)
			}
			rep.Runs = append(rep.Runs, rr)
		}
		client.CloseIdleConnections()
	}
	return rep, nil
}

func runOne(ctx context.Context, client *LoadClient, mc *http.Client, o SuiteOptions, t SuiteTarget, tiers string, sc Scenario) (RunReport, error) {
	before, err := Scrape(ctx, mc, t.URL)
	if err != nil {
		return RunReport{}, err
	}
	lag := StartLagSampler(ctx, mc, t.URL, 500*time.Millisecond)
	lo := o.Load
	lo.URL, lo.Scenario = t.URL, sc
	o.Progress.Start(t.Label+"/"+sc.Name, lo.Duration)
	lo.Progress = o.Progress.Update
	runStart := time.Now()
	res, err := Run(ctx, client, lo)
	if err != nil {
		lag.Stop()
		o.Progress.Finish("")
		return RunReport{}, err
	}
	// CPU is taken at the end of the load, before any flush wait.
	atEnd, err := Scrape(ctx, mc, t.URL)
	if err != nil {
		lag.Stop()
		o.Progress.Finish("")
		return RunReport{}, err
	}
	window := time.Since(runStart)
	lag.ObserveMetrics(atEnd)
	after := atEnd
	var waited time.Duration
	if tiers == "full" && res.Consumes > 0 && o.FlushWait > 0 {
		after, waited, err = waitFlushed(ctx, mc, t.URL, before, res.Consumes, o.FlushWait, o.FlushDrainMax, lag)
		if err != nil {
			lag.Stop()
			o.Progress.Finish("")
			return RunReport{}, err
		}
	}
	lagMax := lag.Stop()
	rr := NewRunReport(t.Label, tiers, lo, res)
	rr.FlushWaitSec = waited.Seconds()
	rr.Server = ComputeStats(before, after, res.Requests, res.Consumes, window, lagMax, tiers == "postgres")
	if rr.Server.FlushLagMaxSec != nil {
		rr.Server.FlushLagSamples = lag.Samples()
	}
	if cpu, ok := Delta(before, atEnd, MetricCPU); ok && window > 0 {
		rr.Server.CPUCores = ptr(cpu / window.Seconds())
	}
	summary := fmt.Sprintf("%s req/s, p50 %s ms, p99 %s ms, errors %d", fmtInt(rr.RPS), fmtMS(rr.Latency.P50), fmtMS(rr.Latency.P99), rr.Errors())
	if waited > 0 {
		summary += fmt.Sprintf(", flushed after %.1fs", waited.Seconds())
	}
	o.Progress.Finish(summary)
	return rr, nil
}

// ledgerSeries is the flusher's ledger row counter: one row per applied
// consume.
const ledgerSeries = MetricFlushRows + `{table="usage_ledger"}`

// waitFlushed waits at least min, then until the flusher has written a
// ledger row for each of the run's consumes (counted from before) and its
// row counters have held still for 500ms, or,
// should some consumes not produce one, until nothing is pending and the
// row counters have not moved for over a flush interval; at most limit in
// all. (quotad_flush_pending alone is not enough: the flusher refreshes it
// only between flush loops, so under load it can read 0 while batches are
// still being written.) It returns the last scrape and the time waited.
func waitFlushed(ctx context.Context, mc *http.Client, base string, before Metrics, consumes int64, min, limit time.Duration, lag *LagSampler) (Metrics, time.Duration, error) {
	start := time.Now()
	sleepCtx(ctx, min)
	lastRows, lastChange := -1.0, time.Now()
	for {
		m, err := Scrape(ctx, mc, base)
		if err != nil {
			return Metrics{}, time.Since(start), err
		}
		if lag != nil {
			lag.ObserveMetrics(m)
		}
		ledger := m.Series[ledgerSeries] - before.Series[ledgerSeries]
		rows, _ := m.Sum(MetricFlushRows)
		if rows != lastRows {
			lastRows, lastChange = rows, time.Now()
		}
		pending, hasPending := m.Sum(MetricFlushPending)
		// The ledger and counter row counters move at different moments of
		// one flush: once every ledger row is in, wait for the counters to
		// hold still too.
		switch {
		case ledger >= float64(consumes) && time.Since(lastChange) >= 500*time.Millisecond,
			(!hasPending || pending == 0) && time.Since(lastChange) > 1200*time.Millisecond,
			time.Since(start) >= limit,
			ctx.Err() != nil:
			return m, time.Since(start), ctx.Err()
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// describeTarget scrapes a target once: its tiers (L1 metrics only exist
// with the full tiers), Go version and GOMAXPROCS.
func describeTarget(ctx context.Context, mc *http.Client, t SuiteTarget) (Target, error) {
	m, err := Scrape(ctx, mc, t.URL)
	if err != nil {
		return Target{}, fmt.Errorf("target %s: %w (is quotad running?)", t.Label, err)
	}
	info := Target{Label: t.Label, URL: t.URL, Tiers: DetectTiers(m)}
	if t.WantTiers != "" && info.Tiers != t.WantTiers {
		return info, fmt.Errorf("target %s (%s) runs the %s tiers, want %s", t.Label, t.URL, info.Tiers, t.WantTiers)
	}
	if m.Has(MetricGoInfo) {
		info.GoVersion = LabelValue(m.Labels[MetricGoInfo], "version")
	}
	if v, ok := m.Sum(MetricGoMaxProcs); ok {
		info.GOMAXPROCS = ptr(v)
	}
	return info, nil
}

// DetectTiers tells the tiers from a scrape: the full tiers expose the L1
// counters, the Postgres-only tiers do not.
func DetectTiers(m Metrics) string {
	if m.Has(MetricL1Hits) {
		return "full"
	}
	return "postgres"
}

// ErrNotSeeded says the seeded subjects are missing.
var ErrNotSeeded = errors.New("not seeded: run quotabench seed first")

// checkSeeded reads user:hot-0 (and user:near-0 when a scenario uses it)
// back and checks their plans.
func checkSeeded(ctx context.Context, mc *http.Client, key string, t SuiteTarget) error {
	hot, near := false, false
	for _, sc := range t.Scenarios {
		switch sc.Name {
		case "floor":
		case "check-near-limit":
			near = true
		default:
			hot = true
		}
	}
	check := func(subject, plan string, minUsed int64) error {
		b, err := adminCall(ctx, mc, key, http.MethodGet, trimSlash(t.URL)+"/v1/subjects/"+url.PathEscape(subject), "")
		if err != nil {
			return fmt.Errorf("target %s: %w", t.Label, err)
		}
		var v struct {
			Plan   string `json:"plan"`
			Meters []struct {
				Meter string `json:"meter"`
				Used  int64  `json:"used"`
			} `json:"meters"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("target %s: %s: %w", t.Label, subject, err)
		}
		var used int64
		for _, m := range v.Meters {
			if m.Meter == "credits" {
				used = m.Used
			}
		}
		if v.Plan != plan || used < minUsed {
			return fmt.Errorf("target %s: %s has plan %q and %d used, want plan %q and at least %d used: %w",
				t.Label, subject, v.Plan, used, plan, minUsed, ErrNotSeeded)
		}
		return nil
	}
	if hot {
		if err := check(HotPrefix+"0", PlanHot, 0); err != nil {
			return err
		}
	}
	if near {
		if err := check(NearPrefix+"0", PlanNear, NearSeedUsed); err != nil {
			return err
		}
	}
	return nil
}
