package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// verifier runs the end checks, once faults and load have stopped:
//
//  1. every instance is up and ready, and the pending stream is empty
//     (every unit Redis took is in Postgres);
//  2. per subject, the API's used, Postgres's counters and the ledger's
//     sum of consumes each equal what was acknowledged;
//  3. the instances are stopped (SIGTERM: each must exit 0), Redis is
//     flushed, the instances start again, and the API's used, now rebuilt
//     from Postgres alone, equals what was acknowledged again;
//  4. no enforce subject was ever seen past its limit; no 500, no
//     unexpected answer.
type verifier struct {
	t      *testing.T
	c      *cluster
	l      *loader
	faults []faultRec
	rng    *rand.Rand

	drain      time.Duration
	apiBefore  map[string]int64
	apiAfter   map[string]int64
	counters   map[string]int64
	counterRow map[string]int64
	ledger     map[string]int64

	checks   []check
	details  []string // the diagnosis of each failure
	diagnose map[string]bool
}

type check struct {
	name   string
	failed []string // one line per subject or event at fault
}

func (v *verifier) fail(c *check, format string, args ...any) {
	c.failed = append(c.failed, fmt.Sprintf(format, args...))
}

func (v *verifier) verify() {
	t := v.t
	v.diagnose = map[string]bool{}
	ctx := context.Background()
	ready := check{name: "every instance up and ready, the flusher drained (pending stream empty)"}
	for _, in := range v.c.insts {
		if err := in.waitHealthy(time.Now()); err != nil {
			v.fail(&ready, "%s was not running at the end: %v", in.name, err)
			if err := in.startAndWait(60 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if err := in.waitReady(60 * time.Second); err != nil {
			v.fail(&ready, "%v", err)
		}
	}
	start := time.Now()
	var calm int
	for calm < 2 {
		n, err := v.c.pendingLen(ctx)
		if err == nil && n == 0 {
			calm++
		} else {
			calm = 0
		}
		if time.Since(start) > 2*time.Minute {
			v.fail(&ready, "the pending stream still holds %d entries (%v) 2 minutes after the load stopped", n, err)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	v.drain = time.Since(start)
	v.checks = append(v.checks, ready)

	v.apiBefore = v.readAPI()
	v.readPostgres(ctx)

	api := check{name: "API used = acknowledged"}
	pgc := check{name: "Postgres counters = acknowledged"}
	led := check{name: "ledger sum of consumes = acknowledged"}
	resets := check{name: "reset subjects: API used = Postgres counters (= rebuilt, below)"}
	for _, s := range v.l.subjects {
		if v.resetting(s) {
			if v.apiBefore[s.name] != v.counters[s.name] {
				v.fail(&resets, "%s: API %d, Postgres counters %d", s.name, v.apiBefore[s.name], v.counters[s.name])
			}
			continue
		}
		want := s.acked
		if got := v.apiBefore[s.name]; got != want {
			v.fail(&api, "%s (%s): acknowledged %d, API %d (%+d)", s.name, s.group, want, got, got-want)
			v.diagnose[s.name] = true
		}
		if got := v.counters[s.name]; got != want {
			v.fail(&pgc, "%s (%s): acknowledged %d, counters %d (%+d) in %d row(s)", s.name, s.group, want, got, got-want, v.counterRow[s.name])
			v.diagnose[s.name] = true
		}
		if got := v.ledger[s.name]; got != want {
			v.fail(&led, "%s (%s): acknowledged %d, ledger %d (%+d)", s.name, s.group, want, got, got-want)
			v.diagnose[s.name] = true
		}
	}
	v.checks = append(v.checks, api, pgc, led, resets)

	// Postgres alone: stop every instance (a graceful stop drains its
	// flusher and must exit 0), lose Redis's data, start again.
	shutdown := check{name: "graceful shutdown: every instance exited 0 on SIGTERM"}
	for _, in := range v.c.insts {
		if err := in.stop(30 * time.Second); err != nil {
			v.fail(&shutdown, "%v (log: %s)", err, in.logPath)
		}
	}
	v.checks = append(v.checks, shutdown)
	if err := v.c.flushRedis(ctx); err != nil {
		t.Fatalf("FLUSHALL: %v", err)
	}
	for _, in := range v.c.insts {
		if err := in.startAndWait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		if err := in.waitReady(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	v.apiAfter = v.readAPI()
	rebuilt := check{name: "rebuilt from Postgres (Redis flushed, instances restarted): API used = acknowledged"}
	for _, s := range v.l.subjects {
		want := s.acked
		if v.resetting(s) {
			want = v.apiBefore[s.name]
		}
		if got := v.apiAfter[s.name]; got != want {
			v.fail(&rebuilt, "%s (%s): expected %d, rebuilt %d (%+d)", s.name, s.group, want, got, got-want)
			if !v.resetting(s) {
				v.diagnose[s.name] = true
			}
		}
	}
	v.checks = append(v.checks, rebuilt)

	enforce := check{name: "enforce never admitted past a limit"}
	for _, s := range v.l.byGroup[groupEnforce] {
		s.mu.Lock()
		seen := s.overLimit
		s.mu.Unlock()
		if s.acked > s.limit || v.apiBefore[s.name] > s.limit || v.counters[s.name] > s.limit || len(seen) > 0 {
			line := fmt.Sprintf("%s: limit %d; acknowledged %d, API %d, Postgres %d", s.name, s.limit, s.acked, v.apiBefore[s.name], v.counters[s.name])
			if len(seen) > 0 {
				line += fmt.Sprintf("; %d answers showed used past the limit, the first: %s", len(seen), seen[0])
			}
			v.fail(&enforce, "%s", line)
			v.diagnose[s.name] = true
		}
	}
	v.checks = append(v.checks, enforce)

	answers := check{name: "no 500, no unexpected answer, every operation answered"}
	v.l.st.mu.Lock()
	answers.failed = append(answers.failed, v.l.st.violations...)
	v.l.st.mu.Unlock()
	v.checks = append(v.checks, answers)

	for _, c := range v.checks {
		if len(c.failed) > 0 {
			t.Errorf("FAILED: %s: %d at fault, first: %s", c.name, len(c.failed), c.failed[0])
		}
	}
	names := make([]string, 0, len(v.diagnose))
	for n := range v.diagnose {
		names = append(names, n)
	}
	sort.Strings(names)
	for i, n := range names {
		if i == 10 {
			v.details = append(v.details, fmt.Sprintf("(%d more subjects not diagnosed)", len(names)-10))
			break
		}
		v.details = append(v.details, v.explain(ctx, n))
	}
}

// readAPI reads every subject's credits used through the API, spread over
// the instances. Its requests are not the load's: they have figures of
// their own, and only their violations join the load's.
func (v *verifier) readAPI() map[string]int64 {
	r := &loader{c: v.c, st: newStats(), t0: v.l.t0, hc: v.l.hc}
	defer func() {
		for _, x := range r.st.violations {
			v.l.st.violation("final read: %s", x)
		}
	}()
	out := make(map[string]int64, len(v.l.subjects))
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan *subject)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for s := range work {
				a, _, _ := r.call(context.Background(), rng, "final-view", "GET", "/v1/subjects/"+s.name, v.c.adminKey, nil)
				used, ok := creditsUsed(a.body)
				if a.status != http.StatusOK || !ok {
					v.t.Errorf("final GET %s: %d %s", s.name, a.status, truncate(a.body))
					used = -1
				}
				mu.Lock()
				out[s.name] = used
				mu.Unlock()
			}
		}()
	}
	for _, s := range v.l.subjects {
		work <- s
	}
	close(work)
	wg.Wait()
	return out
}

// readPostgres reads every soak subject's credits counters and ledger
// sums, straight from Postgres (not through a proxy).
func (v *verifier) readPostgres(ctx context.Context) {
	conn, err := pgx.Connect(ctx, v.c.pg.URL())
	if err != nil {
		v.t.Fatal(err)
	}
	defer conn.Close(ctx)
	like := "%:soak-" + v.l.salt + "-%"
	v.counters, v.counterRow, v.ledger = map[string]int64{}, map[string]int64{}, map[string]int64{}
	scan := func(sql string, sums, rows map[string]int64) {
		r, err := conn.Query(ctx, sql, like)
		if err != nil {
			v.t.Fatal(err)
		}
		defer r.Close()
		for r.Next() {
			var s string
			var sum, n int64
			if err := r.Scan(&s, &sum, &n); err != nil {
				v.t.Fatal(err)
			}
			sums[s] = sum
			if rows != nil {
				rows[s] = n
			}
		}
		if err := r.Err(); err != nil {
			v.t.Fatal(err)
		}
	}
	scan(`SELECT subject, coalesce(sum(used), 0)::bigint, count(*) FROM counters WHERE meter = 'credits' AND subject LIKE $1 GROUP BY subject`, v.counters, v.counterRow)
	scan(`SELECT subject, coalesce(sum(amount), 0)::bigint, count(*) FROM usage_ledger WHERE kind = 'consume' AND meter = 'credits' AND subject LIKE $1 GROUP BY subject`, v.ledger, nil)
}

// resetting reports a subject whose usage resets zero: its acknowledged
// total is not what it holds. Without resets (SOAK_RESETS=0) the reset
// group's consumes are record consumes, checked like any other.
func (v *verifier) resetting(s *subject) bool { return s.group == groupReset && !v.l.noResets }

// explain compares one subject's ledger rows with what its clients were
// told, event by event, and names the operations at fault with the faults
// around them.
func (v *verifier) explain(ctx context.Context, name string) string {
	var s *subject
	for _, x := range v.l.subjects {
		if x.name == name {
			s = x
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): acknowledged %d; API %d; Postgres counters %d in %d row(s); ledger %d; rebuilt from Postgres %d\n",
		name, s.group, s.acked, v.apiBefore[name], v.counters[name], v.counterRow[name], v.ledger[name], v.apiAfter[name])
	conn, err := pgx.Connect(ctx, v.c.pg.URL())
	if err != nil {
		fmt.Fprintf(&b, "  (ledger not read: %v)\n", err)
		return b.String()
	}
	defer conn.Close(ctx)
	type row struct {
		event       string
		amount      int64
		createdAt   time.Time
		periodStart time.Time
	}
	byKey := map[string][]row{}
	rows, err := conn.Query(ctx, `SELECT event_id, amount, coalesce(idempotency_key, ''), coalesce(reservation_id, ''), created_at, period_start
		FROM usage_ledger WHERE subject = $1 AND kind = 'consume' AND meter = 'credits'`, name)
	if err == nil {
		for rows.Next() {
			var r row
			var key, rsv string
			if err = rows.Scan(&r.event, &r.amount, &key, &rsv, &r.createdAt, &r.periodStart); err != nil {
				break
			}
			k := key
			if rsv != "" {
				k = rsv // a commit's row names its reservation
			}
			byKey[k] = append(byKey[k], r)
		}
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		fmt.Fprintf(&b, "  (ledger not read: %v)\n", err)
		return b.String()
	}
	// The subject's periods: usage in a period the API does not show (not
	// the current one) is usage the subject's view has lost.
	var anchor time.Time
	_ = conn.QueryRow(ctx, `SELECT cycle_anchor FROM subjects WHERE subject = $1`, name).Scan(&anchor)
	fmt.Fprintf(&b, "  cycle anchor in Postgres: %s\n", anchor.UTC().Format(time.RFC3339Nano))
	if prs, err := conn.Query(ctx, `SELECT c.period_start, c.used, count(l.event_id),
			coalesce(string_agg(l.event_id || ' at ' || to_char(l.created_at AT TIME ZONE 'UTC', 'HH24:MI:SS.US') || ' key ' || coalesce(l.idempotency_key, l.reservation_id, '-'), '; ' ORDER BY l.created_at), '')
		FROM counters c LEFT JOIN usage_ledger l ON l.subject = c.subject AND l.meter = c.meter AND l.period_start = c.period_start AND l.kind = 'consume'
		WHERE c.subject = $1 AND c.meter = 'credits' GROUP BY c.period_start, c.used ORDER BY c.period_start`, name); err == nil {
		for prs.Next() {
			var ps time.Time
			var used, n int64
			var events string
			if prs.Scan(&ps, &used, &n, &events) == nil {
				fmt.Fprintf(&b, "  counter of the period from %s: used %d, %d ledger rows", ps.UTC().Format(time.RFC3339), used, n)
				if n <= 5 {
					fmt.Fprintf(&b, " (%s)", events)
				}
				if !anchor.IsZero() && ps.Before(anchor) {
					b.WriteString(" -- a period that ended before the subject's cycle anchor: the subject did not exist then, and its view never shows this usage")
				}
				b.WriteString("\n")
			}
		}
		prs.Close()
	}
	s.mu.Lock()
	ops := slices.Clone(s.ops)
	s.mu.Unlock()
	seen := map[string]bool{}
	var suspects []opLog
	for _, o := range ops {
		seen[o.key] = true
		rs := byKey[o.key]
		var sum int64
		for _, r := range rs {
			sum += r.amount
		}
		switch {
		case len(rs) > 1:
			fmt.Fprintf(&b, "  COUNTED %d TIMES in the ledger (%d units): %s\n", len(rs), sum, o)
		case o.applied && len(rs) == 0:
			fmt.Fprintf(&b, "  LOST (acknowledged, not in the ledger): %s\n", o)
		case !o.applied && len(rs) > 0:
			fmt.Fprintf(&b, "  IN THE LEDGER BUT NOT ACKNOWLEDGED (%d units): %s\n", sum, o)
		case o.applied && sum != o.answered:
			fmt.Fprintf(&b, "  LEDGER AMOUNT %d, ANSWERED %d: %s\n", sum, o.answered, o)
		case len(rs) == 1 && !anchor.IsZero() && rs[0].periodStart.Before(anchor):
			fmt.Fprintf(&b, "  COUNTED IN THE PERIOD BEFORE THE SUBJECT'S ANCHOR (event time %s, anchor %s): %s\n",
				rs[0].createdAt.UTC().Format("15:04:05.000000"), anchor.UTC().Format(time.TimeOnly), o)
		default:
			continue
		}
		suspects = append(suspects, o)
	}
	for k, rs := range byKey {
		if !seen[k] {
			fmt.Fprintf(&b, "  LEDGER ROW(S) NO CLIENT SENT: key %q, %d row(s), first event %s\n", k, len(rs), rs[0].event)
		}
	}
	if s.group == groupEnforce && s.acked > s.limit {
		v.explainOverLimit(&b, s, ops)
		return b.String()
	}
	if len(suspects) == 0 {
		fmt.Fprintf(&b, "  the ledger matches the answers event by event: the difference is in the counters or in Redis\n")
		for _, o := range ops {
			if len(o.attempts) > 1 {
				suspects = append(suspects, o)
			}
		}
		if len(suspects) > 0 {
			fmt.Fprintf(&b, "  operations that were retried:\n")
			for i, o := range suspects {
				if i == 10 {
					fmt.Fprintf(&b, "    ... %d more\n", len(suspects)-10)
					break
				}
				fmt.Fprintf(&b, "    %s\n", o)
			}
		}
	}
	if len(suspects) > 0 {
		from, to := suspects[0].start, suspects[0].end
		for _, o := range suspects {
			from, to = min(from, o.start), max(to, o.end)
		}
		fmt.Fprintf(&b, "  faults around t+%.1fs..t+%.1fs:\n", from.Seconds(), to.Seconds())
		for _, f := range around(v.faults, from, to) {
			fmt.Fprintf(&b, "    %s\n", f)
		}
	}
	return b.String()
}

// explainOverLimit shows the enforce consumes an enforce subject applied,
// in the order they were answered, up to the one that took the
// acknowledged total past the limit, and the faults around them.
func (v *verifier) explainOverLimit(b *strings.Builder, s *subject, ops []opLog) {
	var applied []opLog
	for _, o := range ops {
		if o.applied {
			applied = append(applied, o)
		}
	}
	slices.SortFunc(applied, func(x, y opLog) int { return int(x.end - y.end) })
	var sum int64
	cross := -1
	for i, o := range applied {
		sum += o.answered
		if sum > s.limit {
			cross = i
			break
		}
	}
	if cross < 0 {
		return
	}
	from := max(0, cross-6)
	fmt.Fprintf(b, "  past the limit (%d): applied enforce consumes in the order answered, the last one took the acknowledged total to %d:\n", s.limit, sum)
	for _, o := range applied[from : cross+1] {
		fmt.Fprintf(b, "    %s\n", o)
	}
	// The faults that matter are those around the crossing consume and
	// the one answered before it: the two saw different counts.
	lo, hi := applied[max(0, cross-1)].start, applied[cross].end
	lo = min(lo, applied[cross].start)
	fmt.Fprintf(b, "  faults around t+%.1fs..t+%.1fs:\n", lo.Seconds(), hi.Seconds())
	for _, f := range around(v.faults, lo, hi) {
		fmt.Fprintf(b, "    %s\n", f)
	}
}

// report prints the figures and the checks.
func (v *verifier) report(cfg config, total time.Duration) string {
	st := v.l.st
	st.mu.Lock()
	defer st.mu.Unlock()
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	counts := [4]int{}
	for _, s := range v.l.subjects {
		counts[s.group]++
	}
	p("=== quotad soak ===")
	p("load and faults for %v (%v in all with setup, drain and checks); seed %d; %d quotad instances; %d subjects (record %d, enforce %d, admin %d, reset %d); %d clients at %.0f operations/s",
		cfg.duration, total.Round(time.Second), cfg.seed, cfg.instances, len(v.l.subjects), counts[groupRecord], counts[groupEnforce], counts[groupAdmin], counts[groupReset], cfg.workers, cfg.rate)
	p("requests (HTTP attempts): %d   by answer: %s", st.requests.Load(), formatCounts(st.byAnswer))
	p("operations: %d   %s", st.operations.Load(), formatCounts(st.byOp))
	p("acknowledged: %d consumes and commits applied, %d units", st.applied.Load(), st.units.Load())
	ops := st.operations.Load()
	p("retried: %d operations (%.1f%%) needed more than one attempt; %d got no definite answer", st.retried.Load(), 100*float64(st.retried.Load())/float64(max(ops, 1)), st.gaveUp.Load())
	d := slices.Clone(st.durations)
	slices.Sort(d)
	q := func(f float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(f*float64(len(d))))].Round(time.Millisecond)
	}
	p("time to a definite answer: p50 %v, p99 %v, p99.9 %v; worst recovery %v (%s)", q(0.5), q(0.99), q(0.999), st.worst.Round(time.Millisecond), st.worstWhat)
	p("faults: %d   %s", len(v.faults), countKinds(v.faults))
	for _, f := range v.faults {
		p("  %s", f)
	}
	var restarts []string
	for _, in := range v.c.insts {
		restarts = append(restarts, fmt.Sprintf("%s killed %d", in.name, in.crashes))
	}
	p("instances: %s", strings.Join(restarts, ", "))
	p("drain: the pending stream was empty %.1fs after the load stopped", v.drain.Seconds())
	reached := 0
	for _, s := range v.l.byGroup[groupEnforce] {
		s.mu.Lock()
		if slices.ContainsFunc(s.ops, func(o opLog) bool { return o.status == http.StatusOK && !o.applied }) {
			reached++
		}
		s.mu.Unlock()
	}
	p("enforce subjects that reached their limit (a consume refused): %d of %d", reached, counts[groupEnforce])
	p("checks:")
	failed := 0
	for _, c := range v.checks {
		if len(c.failed) == 0 {
			p("  [ok]     %s", c.name)
			continue
		}
		failed++
		p("  [FAILED] %s: %d", c.name, len(c.failed))
		for i, f := range c.failed {
			if i == 20 {
				p("           ... %d more", len(c.failed)-20)
				break
			}
			p("           %s", f)
		}
	}
	if len(v.details) > 0 {
		p("diagnosis:")
		for _, d := range v.details {
			b.WriteString(d)
		}
	}
	if failed == 0 {
		p("PASS: every acknowledged unit counted exactly once, in the API, in Postgres's counters, in the ledger and after a rebuild from Postgres")
	} else {
		p("FAIL: %d checks failed; quotad logs: %s", failed, v.c.logDir)
	}
	return b.String()
}

func formatCounts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
