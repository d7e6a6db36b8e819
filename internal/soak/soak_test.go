package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// config is the soak's, from SOAK_* variables.
type config struct {
	duration  time.Duration // SOAK_DURATION: how long load and faults run; unset: the soak is skipped
	seed      uint64        // SOAK_SEED; default from the clock: draws of faults, subjects and operations
	instances int           // SOAK_INSTANCES; default 3
	subjects  int           // SOAK_SUBJECTS; default 300
	workers   int           // SOAK_WORKERS; default 32 concurrent clients
	rate      float64       // SOAK_RATE; default 300 operations a second in all (the machine has 2 cores shared with the stores)
	faults    []string      // SOAK_FAULTS; default every kind; a comma list, or "none"
	race      bool          // SOAK_RACE=1: quotad built with the race detector
	cluster   bool          // SOAK_REDIS=cluster: on a Redis Cluster (see cluster)
	waitRepl  string        // SOAK_WAIT_REPLICAS, quotad's on a cluster; default 1 (0 shows what a failover loses without it)
	// SOAK_RESETS=0: the reset group's resets become record consumes
	// (their own subjects' checks then are those of record subjects).
	resets bool
}

func readConfig(t *testing.T) config {
	t.Helper()
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	atoi := func(name, def string) int {
		n, err := strconv.Atoi(env(name, def))
		if err != nil || n < 1 {
			t.Fatalf("%s: %q is not a positive integer", name, env(name, def))
		}
		return n
	}
	c := config{
		seed:      uint64(time.Now().UnixNano()),
		instances: atoi("SOAK_INSTANCES", "3"),
		subjects:  atoi("SOAK_SUBJECTS", "300"),
		workers:   atoi("SOAK_WORKERS", "32"),
		rate:      float64(atoi("SOAK_RATE", "300")),
		race:      env("SOAK_RACE", "") == "1",
		cluster:   env("SOAK_REDIS", "one") == "cluster",
		waitRepl:  env("SOAK_WAIT_REPLICAS", "1"),
		resets:    env("SOAK_RESETS", "1") != "0",
	}
	var err error
	if c.duration, err = time.ParseDuration(os.Getenv("SOAK_DURATION")); err != nil || c.duration <= 0 {
		t.Fatalf("SOAK_DURATION: %q is not a positive duration", os.Getenv("SOAK_DURATION"))
	}
	if s := os.Getenv("SOAK_SEED"); s != "" {
		if c.seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("SOAK_SEED: %v", err)
		}
	}
	switch f := env("SOAK_FAULTS", "all"); f {
	case "all":
		c.faults = allFaults
	case "none":
	default:
		for _, k := range strings.Split(f, ",") {
			k = strings.TrimSpace(k)
			if !slices.Contains(allFaults, k) {
				t.Fatalf("SOAK_FAULTS: unknown fault %q (kinds: %s)", k, strings.Join(allFaults, ", "))
			}
			c.faults = append(c.faults, k)
		}
	}
	if r := env("SOAK_REDIS", "one"); r != "one" && r != "cluster" {
		t.Fatalf("SOAK_REDIS: %q is neither one nor cluster", r)
	}
	if c.subjects < 20 {
		t.Fatalf("SOAK_SUBJECTS: at least 20")
	}
	return c
}

// TestSoak is the fault-injection soak (`make soak`, README "Soak"). It
// runs only when SOAK_DURATION is set: `go test ./...` skips it.
func TestSoak(t *testing.T) {
	if os.Getenv("SOAK_DURATION") == "" {
		t.Skip("the soak runs with SOAK_DURATION set (make soak)")
	}
	cfg := readConfig(t)
	begin := time.Now()
	logDir, err := os.MkdirTemp("", "quotad-soak-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("SOAK_KEEP_LOGS") != "" {
			t.Logf("quotad logs and the report kept in %s", logDir)
			return
		}
		os.RemoveAll(logDir)
	})
	redisKind := "one Redis"
	if cfg.cluster {
		redisKind = "a Redis Cluster (3 masters, 3 replicas, WAIT 1)"
	}
	t.Logf("soak: %v, seed %d (SOAK_SEED=%d to draw the same faults and operations), %d instances on %s, %d subjects, %d clients at %.0f operations/s, resets %v, faults: %s",
		cfg.duration, cfg.seed, cfg.seed, cfg.instances, redisKind, cfg.subjects, cfg.workers, cfg.rate, cfg.resets, strings.Join(cfg.faults, ", "))

	bin := buildQuotad(t, logDir, cfg.race)
	c := newCluster(t, bin, logDir, cfg)
	rng := rand.New(rand.NewPCG(cfg.seed, 0))
	salt := strconv.FormatUint(cfg.seed%1_000_000, 36)
	subjects := makeSubjects(cfg.subjects, salt, rng)
	l := newLoader(c, subjects, time.Now(), salt)
	l.noResets = !cfg.resets
	l.svcKey = mintServiceKey(t, c)
	setLimits(t, l, rng)

	// Load and faults.
	t0 := time.Now()
	l.t0 = t0
	loadCtx, stopLoad := context.WithCancel(context.Background())
	var workers sync.WaitGroup
	interval := time.Duration(float64(cfg.workers) / cfg.rate * float64(time.Second))
	for i := range cfg.workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			l.run(loadCtx, rand.New(rand.NewPCG(cfg.seed, uint64(i+1))), interval)
		}()
	}
	fi := &injector{c: c, tb: fatalTB{t}, kinds: cfg.faults, rng: rand.New(rand.NewPCG(cfg.seed, 1<<32)), t0: t0}
	faultCtx, stopFaults := context.WithCancel(context.Background())
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		if len(fi.kinds) > 0 {
			fi.run(faultCtx)
		}
	}()
	progress := time.NewTicker(15 * time.Second)
	end := time.After(cfg.duration)
loop:
	for {
		select {
		case <-end:
			break loop
		case <-progress.C:
			log, _ := fi.faults()
			t.Logf("t+%3.0fs  operations %d  acknowledged %d  retried %d  503s %d  faults %d",
				time.Since(t0).Seconds(), l.st.operations.Load(), l.st.applied.Load(), l.st.retried.Load(), l.st.answers("503"), len(log))
		}
	}
	progress.Stop()
	stopFaults()
	<-faultsDone
	loadEnd := time.Since(t0)
	stopLoad()
	workers.Wait()
	faults, ferr := fi.faults()
	if ferr != nil {
		t.Errorf("%v", ferr)
	}
	t.Logf("t+%3.0fs  faults and load stopped (%d faults; the last operations finished at t+%.0fs)", loadEnd.Seconds(), len(faults), time.Since(t0).Seconds())

	v := &verifier{t: t, c: c, l: l, faults: faults, rng: rng}
	v.verify()
	report := v.report(cfg, time.Since(begin))
	t.Log("\n" + report)
	_ = os.WriteFile(filepath.Join(logDir, "report.txt"), []byte(report), 0o644)
}

// makeSubjects draws the subjects: 60 % record (half user:, half anon:),
// 20 % enforce, 10 % admin, 10 % reset.
func makeSubjects(n int, salt string, rng *rand.Rand) []*subject {
	var out []*subject
	add := func(kind string, g group, count int) {
		for i := range count {
			out = append(out, &subject{name: fmt.Sprintf("%s:soak-%s-%s-%d", kind, salt, g, i), group: g})
		}
	}
	nEnforce, nAdmin, nReset := n/5, n/10, n/10
	nRecord := n - nEnforce - nAdmin - nReset
	add("user", groupRecord, nRecord/2)
	add("anon", groupRecord, nRecord-nRecord/2)
	add("user", groupEnforce, nEnforce)
	add("user", groupAdmin, nAdmin)
	add("user", groupReset, nReset)
	for _, s := range out {
		switch {
		case s.group == groupEnforce:
			// Low enough that most subjects reach it within a minute (an
			// enforce subject takes ~400 units a minute at the default
			// rate), so that much of the run enforces at the limit.
			s.limit = 100 + rng.Int64N(600)
		case s.group == groupRecord && strings.HasPrefix(s.name, "user:"):
			s.limit = 1_000_000_000_000
		}
	}
	return out
}

func mintServiceKey(t *testing.T, c *cluster) string {
	t.Helper()
	st, b := adminCall(t, c, "POST", "/v1/keys", `{"scope":"service","name":"soak"}`)
	var k struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal(b, &k); err != nil || st != http.StatusCreated || k.Key == "" {
		t.Fatalf("mint a service key: %d %s", st, b)
	}
	return k.Key
}

// adminCall sends one request with the admin key before the faults start.
func adminCall(t *testing.T, c *cluster, method, path, body string) (int, []byte) {
	t.Helper()
	l := &loader{c: c, st: newStats(), hc: http.DefaultClient}
	a, _ := l.attempt(context.Background(), c.insts[0], method, path, c.adminKey, []byte(body))
	return a.status, a.body
}

// setLimits gives the enforce subjects their limits and the record user:
// subjects theirs, before the faults start: an enforce subject's limit
// never changes, so used <= limit is exact.
func setLimits(t *testing.T, l *loader, rng *rand.Rand) {
	t.Helper()
	for _, s := range l.subjects {
		if s.limit == 0 {
			continue
		}
		body := fmt.Sprintf(`{"limits":{"credits":{"limit":%d,"period":"month"}}}`, s.limit)
		a, _, _ := l.call(context.Background(), rng, "setup", "PUT", "/v1/subjects/"+s.name, l.c.adminKey, []byte(body))
		if a.status != http.StatusOK {
			t.Fatalf("set the limit of %s: %d %s", s.name, a.status, a.body)
		}
	}
	// The setup's figures are not the soak's.
	l.st = newStats()
}

func (st *stats) answers(class string) int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.byAnswer[class]
}
