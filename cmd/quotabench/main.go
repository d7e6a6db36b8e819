// Command quotabench benchmarks quotad: it seeds the benchmark subjects
// (quotabench seed), runs scenarios against one instance (quotabench run)
// or the whole suite against a full-tiers and a Postgres-only instance
// (quotabench suite), and writes the reports under bench/results/<date>/.
// `make bench` (scripts/bench.sh) runs all of it on a private stack.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/quotad/quotad/bench"
)

const usage = `usage:
  quotabench seed  -url URL [-subjects N] [-workers 32] [-key K]
  quotabench run   -url URL -scenario NAME[,NAME...] [-d 10s] [-c 64] [-mode closed|open -rate R] [-label L] [-out DIR]
  quotabench suite -full-url URL [-postgres-url URL] [-d 15s] [-c 64] [-out bench/results]
  quotabench sweep -url URL -scenario NAME [-d 10s] [-c 64] [-fractions 0.25,0.5,0.75,1,1.5] [-in-flight 1024] [-out FILE]
  quotabench wait  -url URL [-timeout 30s]       wait until quotad answers /healthz
  quotabench list                                list the scenarios

Run "quotabench <command> -h" for the flags of a command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "quotabench:", err)
		}
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	cmd, rest := args[1], args[2:]
	switch cmd {
	case "seed":
		return cmdSeed(ctx, rest, stdout, stderr)
	case "run":
		return cmdRun(ctx, args, rest, stdout, stderr)
	case "suite":
		return cmdSuite(ctx, args, rest, stdout, stderr)
	case "wait":
		return cmdWait(ctx, rest, stderr)
	case "sweep":
		return cmdSweep(ctx, rest, stdout, stderr)
	case "list":
		for _, s := range bench.Scenarios {
			fmt.Fprintf(stdout, "%-17s %s\n", s.Name, s.Description)
		}
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func defaultKey() string {
	if k := os.Getenv("QUOTAD_KEY"); k != "" {
		return k
	}
	return "dev-admin-key"
}

// loadFlags are the flags shared by run and suite.
type loadFlags struct {
	key          string
	mode         string
	c            int
	rate         float64
	d            time.Duration
	subjects     int
	dist         string
	amount       int64
	model        string
	inputTokens  int64
	outputTokens int64
	seed         uint64
	warmup       time.Duration
	flushWait    time.Duration
	quiet        bool
}

func (l *loadFlags) register(fs *flag.FlagSet, d time.Duration) {
	g := bench.DefaultGenConfig()
	fs.StringVar(&l.key, "key", defaultKey(), "bearer key (default $QUOTAD_KEY or dev-admin-key)")
	fs.StringVar(&l.mode, "mode", "closed", "closed (workers send, wait, repeat) or open (fixed rate, latency from the intended start)")
	fs.IntVar(&l.c, "c", 64, "closed: workers; open: most requests in flight")
	fs.Float64Var(&l.rate, "rate", 0, "open loop: requests per second")
	fs.DurationVar(&l.d, "d", d, "measured duration per scenario")
	fs.IntVar(&l.subjects, "subjects", g.Subjects, "subject population (user:hot-<i>, user:near-<i>)")
	fs.StringVar(&l.dist, "dist", g.Dist, "subject distribution: uniform or zipf (s=1.1)")
	fs.Int64Var(&l.amount, "amount", g.Amount, "amount of checks and consumes")
	fs.StringVar(&l.model, "model", g.Model, "model of consume-priced")
	fs.Int64Var(&l.inputTokens, "input-tokens", g.InputTokens, "input tokens of consume-priced")
	fs.Int64Var(&l.outputTokens, "output-tokens", g.OutputTokens, "output tokens of consume-priced")
	fs.Uint64Var(&l.seed, "seed", 1, "random seed; worker i uses seed+i")
	fs.DurationVar(&l.warmup, "warmup", 3*time.Second, "warm-up per target before measuring, not recorded (0 skips)")
	fs.DurationVar(&l.flushWait, "flush-wait", 1500*time.Millisecond, "least wait after a run with consumes (full tiers) before the final /metrics scrape")
	fs.BoolVar(&l.quiet, "q", false, "no progress output")
}

func (l *loadFlags) options() (bench.LoadOptions, error) {
	o := bench.LoadOptions{
		Key:         l.key,
		Mode:        l.mode,
		Concurrency: l.c,
		Rate:        l.rate,
		Duration:    l.d,
		Seed:        l.seed,
		Gen: bench.GenConfig{
			Subjects: l.subjects, Dist: l.dist, Amount: l.amount,
			Model: l.model, InputTokens: l.inputTokens, OutputTokens: l.outputTokens,
		},
	}
	// Validate all but the per-run fields.
	probe := o
	probe.URL, probe.Scenario = "http://x", bench.Scenarios[0]
	return o, probe.Validate()
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("quotabench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func cmdSeed(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("seed", stderr)
	u := fs.String("url", "http://127.0.0.1:8080", "quotad base URL")
	key := fs.String("key", defaultKey(), "admin key (default $QUOTAD_KEY or dev-admin-key)")
	subjects := fs.Int("subjects", bench.DefaultGenConfig().Subjects, "subjects per plan")
	workers := fs.Int("workers", bench.SeedWorkers, "concurrent requests")
	quiet := fs.Bool("q", false, "no progress output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := bench.NewProgress(os.Stderr, *quiet)
	fmt.Fprintf(stderr, "seeding %s: plans %s and %s, %d user:hot-<i> and %d user:near-<i> (%d used of %d)\n",
		*u, bench.PlanHot, bench.PlanNear, *subjects, *subjects, bench.NearSeedUsed, bench.NearLimit)
	res, err := bench.Seed(ctx, nil, bench.SeedOptions{
		URL: *u, Key: *key, Subjects: *subjects, Workers: *workers,
		Progress: p.Count("seed"),
	})
	p.Finish("")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "seeded %d subjects in %.1fs (%d requests, %.0f/s); %s0 holds %d used\n",
		2**subjects, res.Elapsed.Seconds(), res.Requests, float64(res.Requests)/res.Elapsed.Seconds(), bench.NearPrefix, res.NearUsed)
	return nil
}

func cmdRun(ctx context.Context, argv, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	var lf loadFlags
	lf.register(fs, 10*time.Second)
	u := fs.String("url", "http://127.0.0.1:8080", "quotad base URL")
	scenario := fs.String("scenario", "check-hot", `scenario name, comma-separated names, or "all"`)
	label := fs.String("label", "", "target label in the report (default: the detected tiers)")
	out := fs.String("out", "", "also write report.json, report.md and chart.svg under DIR/<date>/")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lo, err := lf.options()
	if err != nil {
		return err
	}
	scs, err := bench.ParseScenarios(*scenario)
	if err != nil {
		return err
	}
	t := bench.SuiteTarget{Label: *label, URL: *u, Scenarios: scs}
	if t.Label == "" {
		m, err := bench.Scrape(ctx, http.DefaultClient, *u)
		if err != nil {
			return fmt.Errorf("%w (is quotad running?)", err)
		}
		t.Label = bench.DetectTiers(m)
	}
	return suite(ctx, argv, []bench.SuiteTarget{t}, lo, &lf, *out, "", nil, "", stdout, stderr)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, "; ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdSuite(ctx context.Context, argv, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("suite", stderr)
	var lf loadFlags
	lf.register(fs, 15*time.Second)
	fullURL := fs.String("full-url", "http://127.0.0.1:18080", "quotad with the full tiers and QUOTAD_BENCH_FLOOR=1")
	pgURL := fs.String("postgres-url", "", "quotad with QUOTAD_TIERS=postgres (empty: skip)")
	scenarios := fs.String("scenarios", "all", "scenarios on the full tiers")
	pgScenarios := fs.String("postgres-scenarios", strings.Join(bench.PostgresScenarios, ","), "scenarios on the postgres tiers")
	pgAll := fs.Bool("postgres-all", false, "run every scenario but floor on the postgres tiers too")
	out := fs.String("out", "bench/results", "write the reports under DIR/<date>/ (empty: do not write)")
	date := fs.String("date", "", "results folder name (default today, YYYY-MM-DD)")
	pinning := fs.String("pinning", "", "how the processes were pinned to CPUs, for the report")
	var notes multiFlag
	fs.Var(&notes, "note", "a note for the report (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lo, err := lf.options()
	if err != nil {
		return err
	}
	full, err := bench.ParseScenarios(*scenarios)
	if err != nil {
		return err
	}
	targets := []bench.SuiteTarget{{Label: "full", URL: *fullURL, Scenarios: full, WantTiers: "full"}}
	if *pgURL != "" {
		list := *pgScenarios
		if *pgAll {
			var names []string
			for _, s := range bench.Scenarios {
				if s.Name != "floor" {
					names = append(names, s.Name)
				}
			}
			list = strings.Join(names, ",")
		}
		pg, err := bench.ParseScenarios(list)
		if err != nil {
			return err
		}
		targets = append(targets, bench.SuiteTarget{Label: "postgres", URL: *pgURL, Scenarios: pg, WantTiers: "postgres"})
	}
	return suite(ctx, argv, targets, lo, &lf, *out, *date, notes, *pinning, stdout, stderr)
}

// suite runs the targets, prints the table and writes the reports.
func suite(ctx context.Context, argv []string, targets []bench.SuiteTarget, lo bench.LoadOptions, lf *loadFlags,
	out, date string, notes []string, pinning string, stdout, stderr io.Writer) error {
	p := bench.NewProgress(os.Stderr, lf.quiet)
	rep, runErr := bench.RunSuite(ctx, bench.SuiteOptions{
		Targets:   targets,
		Load:      lo,
		Warmup:    lf.warmup,
		FlushWait: lf.flushWait,
		Progress:  p,
		Log:       stderr,
	})
	if rep == nil || len(rep.Runs) == 0 {
		return runErr
	}
	if date == "" {
		date = rep.Started.Format("2006-01-02")
	}
	rep.Date = date
	rep.Command = bench.CommandLine(argv)
	rep.Machine = bench.CollectMachine()
	rep.Machine.PinningSummary = pinning
	rep.Notes = append(rep.Notes, notes...)
	if runErr != nil {
		rep.Notes = append(rep.Notes, "incomplete: "+runErr.Error())
	}

	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, bench.Table(rep.Runs))
	for _, n := range bench.Footnotes(rep.Runs) {
		fmt.Fprintln(stdout, n)
	}
	if out != "" {
		dir := filepath.Join(out, date)
		files, err := rep.Write(dir)
		if err != nil {
			return errors.Join(runErr, err)
		}
		fmt.Fprintf(stdout, "\nwrote %s (percentile distributions in %s)\n", strings.Join(files, ", "), filepath.Join(dir, "raw"))
	}
	return runErr
}

func cmdWait(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("wait", stderr)
	u := fs.String("url", "http://127.0.0.1:8080", "quotad base URL")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(*u, "/")+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer /healthz within %s", *u, *timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cmdSweep finds what a scenario sustains: the closed loop's maximum, then
// the open loop at fractions of it (bench.Sweep).
func cmdSweep(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sweep", stderr)
	var lf loadFlags
	lf.register(fs, 10*time.Second)
	u := fs.String("url", "http://127.0.0.1:8080", "quotad base URL")
	scenario := fs.String("scenario", "consume-record", "scenario name")
	fractions := fs.String("fractions", "0.25,0.5,0.75,1,1.5", "open-loop rates, as fractions of the closed loop's OK rate")
	inFlight := fs.Int("in-flight", 1024, "open loop: most requests in flight")
	out := fs.String("out", "", "also write the sweep as JSON to FILE")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lo, err := lf.options()
	if err != nil {
		return err
	}
	sc, ok := bench.LookupScenario(*scenario)
	if !ok {
		return fmt.Errorf("unknown scenario %q", *scenario)
	}
	lo.URL, lo.Scenario = *u, sc
	var fr []float64
	for _, f := range strings.Split(*fractions, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return fmt.Errorf("fractions: %q is not a positive number", f)
		}
		fr = append(fr, v)
	}
	res, err := bench.Sweep(ctx, bench.SweepOptions{Load: lo, Fractions: fr, InFlight: *inFlight,
		Log: func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }})
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, res.Table())
	if *out != "" {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(*out, b, 0o644)
	}
	return nil
}
