package soak

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The load: workers send a mix of operations at a steady rate, each to a
// random instance, and retry every operation until it has a definite
// answer. What a client may take as definite is the contract's: a 2xx or
// a 4xx other than 429. A 503, any other 5xx, a timeout or a broken
// connection says nothing about whether the request was applied, so the
// same request (the same idempotency key, the same reservation id) is
// sent again, with a short backoff, to any instance. The first definite
// answer is what the client was told; per subject, the sum of the amounts
// answered as applied is what quotad acknowledged, and what it must hold
// at the end.

// group is what a subject is used for; the groups keep the checks exact.
type group int

const (
	// groupRecord: record consumes, batches and reservations; never reset,
	// limits never changed. user: subjects get a limit too large to reach
	// (so reservations are granted), anon: ones keep the default plan and
	// are recorded far past it.
	groupRecord group = iota
	// groupEnforce: enforce consumes only, under a fixed limit set before
	// the faults start: used must never pass it.
	groupEnforce
	// groupAdmin: record consumes while admin changes (PUT limits, plan)
	// go on; the period stays a month, so the counter is the same one.
	groupAdmin
	// groupReset: record consumes and resets. A reset zeroes the period,
	// so acknowledged usage is not compared here: the API, Postgres and
	// the rebuild from Postgres must agree with one another instead.
	groupReset
)

func (g group) String() string {
	return [...]string{"record", "enforce", "admin", "reset"}[g]
}

// subject is one subject's accounting.
type subject struct {
	name  string
	group group
	limit int64 // groupEnforce: its fixed limit; groupRecord user: its (huge) limit

	mu    sync.Mutex
	acked int64   // units answered as applied (a duplicate answer counts once: the key is unique)
	ops   []opLog // every consume-like operation, for the diagnosis of a mismatch
	// overLimit: answers that showed used past the limit (groupEnforce).
	overLimit []string
}

// opLog is one consume-like operation (consume, batch item, commit), as
// the client saw it.
type opLog struct {
	what     string // "record", "enforce", "batch", "commit"
	key      string // idempotency key, or the reservation id of a commit
	amount   int64  // what was asked (a commit: the actual cost)
	start    time.Duration
	end      time.Duration // when the definite answer came (0: never)
	attempts []string      // "q1:503", "q0:timeout", ... ending with the definite one
	status   int           // the definite answer's status
	applied  bool
	dup      bool
	answered int64 // the answer's amount
	used     int64 // the answer's used
}

func (o opLog) String() string {
	return fmt.Sprintf("%s key=%s amount=%d sent t+%.1fs answered t+%.1fs applied=%v duplicate=%v used=%d attempts=[%s]",
		o.what, o.key, o.amount, o.start.Seconds(), o.end.Seconds(), o.applied, o.dup, o.used, strings.Join(o.attempts, " "))
}

func (s *subject) record(o opLog) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ops = append(s.ops, o)
	if o.applied {
		s.acked += o.answered
	}
}

// stats are the load's figures.
type stats struct {
	requests   atomic.Int64 // HTTP attempts
	operations atomic.Int64
	retried    atomic.Int64 // operations that needed more than one attempt
	applied    atomic.Int64 // consume-like operations answered applied
	units      atomic.Int64
	gaveUp     atomic.Int64 // operations with no definite answer within giveUpAfter

	mu         sync.Mutex
	byAnswer   map[string]int64 // "200", "503", "timeout", "conn", ...
	byOp       map[string]int64
	durations  []time.Duration // first attempt to definite answer, per operation
	worst      time.Duration
	worstWhat  string
	violations []string // things that must never happen: a 500, an unexpected 4xx, an answer that breaks the contract
}

func newStats() *stats {
	return &stats{byAnswer: map[string]int64{}, byOp: map[string]int64{}}
}

func (st *stats) violation(format string, args ...any) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if len(st.violations) < 1000 {
		st.violations = append(st.violations, fmt.Sprintf(format, args...))
	}
}

const (
	// attemptTimeout is how long a client waits for one answer. Shorter
	// than quotad's own worst case on purpose: giving up and retrying
	// elsewhere while the first request is still inside quotad is the
	// "sent, outcome unknown" case idempotency must resolve.
	attemptTimeout = 3 * time.Second
	// giveUpAfter bounds one operation's retries: an operation with no
	// definite answer after this long is a failure (quotad unavailable
	// for longer than any fault lasts).
	giveUpAfter = 120 * time.Second
)

// loader is the load generator.
type loader struct {
	c        *cluster
	svcKey   string
	subjects []*subject
	byGroup  [4][]*subject
	st       *stats
	t0       time.Time
	hc       *http.Client
	seq      atomic.Int64 // idempotency keys
	salt     string
	noResets bool // the reset group gets record consumes instead of resets (SOAK_RESETS=0)
}

func newLoader(c *cluster, subjects []*subject, t0 time.Time, salt string) *loader {
	l := &loader{c: c, subjects: subjects, st: newStats(), t0: t0, salt: salt}
	for _, s := range subjects {
		l.byGroup[s.group] = append(l.byGroup[s.group], s)
	}
	l.hc = &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 64,
		DialContext:         (&net.Dialer{Timeout: time.Second}).DialContext,
	}}
	return l
}

func (l *loader) since() time.Duration { return time.Since(l.t0) }

// answer is one definite answer.
type answer struct {
	status int
	body   []byte
}

// attempt sends one request to one instance and classifies what came back.
func (l *loader) attempt(ctx context.Context, in *instance, method, path, key string, body []byte) (answer, string) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+in.addr+path, rd)
	if err != nil {
		panic(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	l.st.requests.Add(1)
	resp, err := l.hc.Do(req)
	if err == nil {
		var b []byte
		b, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			return answer{resp.StatusCode, b}, strconv.Itoa(resp.StatusCode)
		}
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return answer{}, "timeout"
	}
	return answer{}, "conn"
}

// call sends a request until it has a definite answer (2xx or 4xx), to a
// random instance each time. It answers the definite answer (status 0 if
// none within giveUpAfter) and the attempts.
func (l *loader) call(ctx context.Context, rng *rand.Rand, what, method, path, key string, body []byte) (answer, []string, time.Duration) {
	start := time.Now()
	var attempts []string
	backoff := 10 * time.Millisecond
	for {
		in := l.c.insts[rng.IntN(len(l.c.insts))]
		a, class := l.attempt(ctx, in, method, path, key, body)
		attempts = append(attempts, in.name+":"+class)
		l.st.mu.Lock()
		l.st.byAnswer[class]++
		l.st.mu.Unlock()
		if a.status >= 500 && a.status != http.StatusServiceUnavailable {
			// The contract allows 503 alone; a 500 is a bug whatever the
			// fault. The outcome is unknown, so it is retried all the same.
			l.st.violation("t+%.1fs %s %s %s on %s answered %d: %s", l.since().Seconds(), what, method, path, in.name, a.status, truncate(a.body))
		}
		if a.status == http.StatusTooManyRequests {
			// Nothing was counted, so it is retried like a 503; but the
			// soak's clients send valid keys at a modest rate, which no
			// limit should refuse.
			l.st.violation("t+%.1fs %s %s %s on %s answered 429: %s", l.since().Seconds(), what, method, path, in.name, truncate(a.body))
		} else if a.status != 0 && a.status < 500 {
			l.finish(what, start, attempts)
			return a, attempts, time.Since(start)
		}
		if time.Since(start) > giveUpAfter {
			l.st.gaveUp.Add(1)
			l.st.violation("t+%.1fs %s %s %s: no definite answer in %v: %s", l.since().Seconds(), what, method, path, giveUpAfter, strings.Join(attempts, " "))
			l.finish(what, start, attempts)
			return answer{}, attempts, time.Since(start)
		}
		// Jittered exponential backoff, at most half a second: retries
		// from many clients must not all land on a store coming back in
		// the same millisecond.
		time.Sleep(backoff/2 + time.Duration(rng.Int64N(int64(backoff))))
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

func (l *loader) finish(what string, start time.Time, attempts []string) {
	d := time.Since(start)
	l.st.operations.Add(1)
	if len(attempts) > 1 {
		l.st.retried.Add(1)
	}
	l.st.mu.Lock()
	defer l.st.mu.Unlock()
	l.st.byOp[what]++
	l.st.durations = append(l.st.durations, d)
	if d > l.st.worst {
		l.st.worst = d
		l.st.worstWhat = fmt.Sprintf("%s at t+%.1fs, %d attempts", what, (time.Since(l.t0) - d).Seconds(), len(attempts))
	}
}

func truncate(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

func (l *loader) key() string {
	return fmt.Sprintf("soak-%s-%d", l.salt, l.seq.Add(1))
}

// consumeAnswer is the part of a consume's (or commit's) answer the soak
// reads.
type consumeAnswer struct {
	Applied   bool  `json:"applied"`
	Duplicate bool  `json:"duplicate"`
	Amount    int64 `json:"amount"`
	Used      int64 `json:"used"`
	Limit     int64 `json:"limit"`
}

// run is one worker: an operation every interval (paced from its own
// start, not catching up after a slow one), until ctx ends; the operation
// under way is finished first.
func (l *loader) run(ctx context.Context, rng *rand.Rand, interval time.Duration) {
	next := time.Now()
	for ctx.Err() == nil {
		l.one(rng)
		next = next.Add(interval)
		if now := time.Now(); next.Before(now) {
			next = now
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(next)):
		}
	}
}

// one draws an operation and runs it to its definite answer. Its context
// is not the load's: stopping the load lets every operation finish.
func (l *loader) one(rng *rand.Rand) {
	ctx := context.Background()
	pick := func(g group) *subject { return l.byGroup[g][rng.IntN(len(l.byGroup[g]))] }
	switch n := rng.IntN(100); {
	case n < 36:
		l.consume(ctx, rng, pick(groupRecord), "record")
	case n < 54:
		l.consume(ctx, rng, pick(groupEnforce), "enforce")
	case n < 59:
		l.batch(ctx, rng)
	case n < 64:
		l.reserve(ctx, rng)
	case n < 78:
		l.check(ctx, rng, l.subjects[rng.IntN(len(l.subjects))])
	case n < 83:
		l.view(ctx, rng, l.subjects[rng.IntN(len(l.subjects))])
	case n < 89:
		l.consume(ctx, rng, pick(groupAdmin), "record")
	case n < 92:
		l.admin(ctx, rng, pick(groupAdmin))
	case n < 98 || l.noResets:
		l.consume(ctx, rng, pick(groupReset), "record")
	default:
		l.reset(ctx, rng, pick(groupReset))
	}
}

func (l *loader) consume(ctx context.Context, rng *rand.Rand, s *subject, mode string) {
	amount := 1 + rng.Int64N(20)
	key := l.key()
	body, _ := json.Marshal(map[string]any{"subject": s.name, "amount": amount, "mode": mode, "idempotency_key": key})
	o := opLog{what: mode, key: key, amount: amount, start: l.since()}
	a, attempts, _ := l.call(ctx, rng, mode, "POST", "/v1/consume", l.svcKey, body)
	o.attempts, o.end, o.status = attempts, l.since(), a.status
	if a.status == 0 {
		s.record(o)
		return
	}
	if a.status != http.StatusOK {
		l.st.violation("t+%.1fs consume %s on %s: %d %s", o.end.Seconds(), key, s.name, a.status, truncate(a.body))
		s.record(o)
		return
	}
	l.consumed(s, &o, a.body)
	s.record(o)
}

// consumed reads a consume's 200 answer into o and checks it.
func (l *loader) consumed(s *subject, o *opLog, body []byte) {
	var ca consumeAnswer
	if err := json.Unmarshal(body, &ca); err != nil {
		l.st.violation("t+%.1fs %s %s on %s: answer %q: %v", o.end.Seconds(), o.what, o.key, s.name, truncate(body), err)
		return
	}
	o.applied, o.dup, o.answered, o.used = ca.Applied, ca.Duplicate, ca.Amount, ca.Used
	if ca.Applied {
		l.st.applied.Add(1)
		l.st.units.Add(ca.Amount)
		if o.what != "commit" && ca.Amount != o.amount {
			l.st.violation("t+%.1fs %s %s on %s: asked %d, answered amount %d", o.end.Seconds(), o.what, o.key, s.name, o.amount, ca.Amount)
		}
	}
	if o.what == "record" && !ca.Applied {
		l.st.violation("t+%.1fs record consume %s on %s was not applied: %s", o.end.Seconds(), o.key, s.name, truncate(body))
	}
	if s.group == groupEnforce && ca.Used > s.limit {
		s.mu.Lock()
		s.overLimit = append(s.overLimit, fmt.Sprintf("t+%.1fs %s %s answered used %d > limit %d", o.end.Seconds(), o.what, o.key, ca.Used, s.limit))
		s.mu.Unlock()
	}
}

// batch sends 2-5 record consumes in one request; items answered with an
// error that leaves their outcome unknown (a 5xx) go again, in a batch of
// their own, with the same keys.
func (l *loader) batch(ctx context.Context, rng *rand.Rand) {
	type item struct {
		s *subject
		o opLog
	}
	var items []*item
	for range 2 + rng.IntN(4) {
		s := l.byGroup[groupRecord][rng.IntN(len(l.byGroup[groupRecord]))]
		items = append(items, &item{s: s, o: opLog{what: "batch", key: l.key(), amount: 1 + rng.Int64N(20), start: l.since()}})
	}
	for len(items) > 0 {
		events := make([]map[string]any, len(items))
		for i, it := range items {
			events[i] = map[string]any{"subject": it.s.name, "amount": it.o.amount, "mode": "record", "idempotency_key": it.o.key}
		}
		body, _ := json.Marshal(map[string]any{"events": events})
		a, attempts, _ := l.call(ctx, rng, "batch", "POST", "/v1/consume/batch", l.svcKey, body)
		end := l.since()
		for _, it := range items {
			it.o.attempts = append(it.o.attempts, attempts...)
			it.o.end, it.o.status = end, a.status
		}
		if a.status != http.StatusOK {
			if a.status != 0 {
				l.st.violation("t+%.1fs batch: %d %s", end.Seconds(), a.status, truncate(a.body))
			}
			for _, it := range items {
				it.s.record(it.o)
			}
			return
		}
		var ba struct {
			Results []struct {
				consumeAnswer
				Error *struct {
					Status int    `json:"status"`
					Detail string `json:"detail"`
				} `json:"error"`
			} `json:"results"`
		}
		if err := json.Unmarshal(a.body, &ba); err != nil || len(ba.Results) != len(items) {
			l.st.violation("t+%.1fs batch answer %q: %v", end.Seconds(), truncate(a.body), err)
			return
		}
		var again []*item
		for i, it := range items {
			r := ba.Results[i]
			switch {
			case r.Error == nil:
				b, _ := json.Marshal(r.consumeAnswer)
				l.consumed(it.s, &it.o, b)
				it.s.record(it.o)
			case r.Error.Status >= 500:
				if r.Error.Status != http.StatusServiceUnavailable {
					l.st.violation("t+%.1fs batch item %s: %d %s", end.Seconds(), it.o.key, r.Error.Status, r.Error.Detail)
				}
				it.o.attempts = append(it.o.attempts, fmt.Sprintf("item:%d", r.Error.Status))
				again = append(again, it)
			default:
				l.st.violation("t+%.1fs batch item %s on %s: %d %s", end.Seconds(), it.o.key, it.s.name, r.Error.Status, r.Error.Detail)
				it.s.record(it.o)
			}
		}
		items = again
		if len(items) > 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// reserve holds an estimate on a record subject with a limit, then
// commits the actual cost (usually) or releases the hold.
func (l *loader) reserve(ctx context.Context, rng *rand.Rand) {
	var users []*subject
	for _, s := range l.byGroup[groupRecord] {
		if s.limit > 0 {
			users = append(users, s)
		}
	}
	s := users[rng.IntN(len(users))]
	key := l.key()
	body, _ := json.Marshal(map[string]any{"subject": s.name, "amount": 1 + rng.Int64N(50), "idempotency_key": key, "ttl_seconds": 600})
	a, _, _ := l.call(ctx, rng, "reserve", "POST", "/v1/reservations", l.svcKey, body)
	if a.status == 0 {
		return
	}
	var ra struct {
		ID      string `json:"id"`
		Granted bool   `json:"granted"`
	}
	if err := json.Unmarshal(a.body, &ra); err != nil || (a.status != http.StatusCreated && a.status != http.StatusOK) {
		l.st.violation("t+%.1fs reserve %s on %s: %d %s", l.since().Seconds(), key, s.name, a.status, truncate(a.body))
		return
	}
	if !ra.Granted {
		// A retry of a granted reservation answers its first result
		// (201), so a refusal here is the limit's.
		l.st.violation("t+%.1fs reserve %s on %s (limit %d) was refused: %s", l.since().Seconds(), key, s.name, s.limit, truncate(a.body))
		return
	}
	if rng.IntN(10) == 0 {
		a, _, _ := l.call(ctx, rng, "release", "DELETE", "/v1/reservations/"+ra.ID, l.svcKey, nil)
		if a.status != 0 && a.status != http.StatusOK {
			l.st.violation("t+%.1fs release %s on %s: %d %s", l.since().Seconds(), ra.ID, s.name, a.status, truncate(a.body))
		}
		return
	}
	amount := 1 + rng.Int64N(60)
	o := opLog{what: "commit", key: ra.ID, amount: amount, start: l.since()}
	body, _ = json.Marshal(map[string]any{"amount": amount})
	a, attempts, _ := l.call(ctx, rng, "commit", "POST", "/v1/reservations/"+ra.ID+"/commit", l.svcKey, body)
	o.attempts, o.end, o.status = attempts, l.since(), a.status
	if a.status == http.StatusOK {
		l.consumed(s, &o, a.body)
		if o.answered != amount {
			l.st.violation("t+%.1fs commit %s on %s: asked %d, answered amount %d", o.end.Seconds(), ra.ID, s.name, amount, o.answered)
		}
	} else if a.status != 0 {
		l.st.violation("t+%.1fs commit %s on %s: %d %s", o.end.Seconds(), ra.ID, s.name, a.status, truncate(a.body))
	}
	s.record(o)
}

func (l *loader) check(ctx context.Context, rng *rand.Rand, s *subject) {
	body, _ := json.Marshal(map[string]any{"subject": s.name, "amount": 1 + rng.Int64N(20)})
	a, _, _ := l.call(ctx, rng, "check", "POST", "/v1/check", l.svcKey, body)
	if a.status == 0 {
		return
	}
	var ca consumeAnswer
	if err := json.Unmarshal(a.body, &ca); err != nil || a.status != http.StatusOK {
		l.st.violation("t+%.1fs check %s: %d %s", l.since().Seconds(), s.name, a.status, truncate(a.body))
		return
	}
	if s.group == groupEnforce && ca.Used > s.limit {
		s.mu.Lock()
		s.overLimit = append(s.overLimit, fmt.Sprintf("t+%.1fs check answered used %d > limit %d", l.since().Seconds(), ca.Used, s.limit))
		s.mu.Unlock()
	}
}

func (l *loader) view(ctx context.Context, rng *rand.Rand, s *subject) {
	a, _, _ := l.call(ctx, rng, "view", "GET", "/v1/subjects/"+s.name, l.svcKey, nil)
	if a.status == 0 {
		return
	}
	used, ok := creditsUsed(a.body)
	if a.status != http.StatusOK || !ok {
		l.st.violation("t+%.1fs get %s: %d %s", l.since().Seconds(), s.name, a.status, truncate(a.body))
		return
	}
	if s.group == groupEnforce && used > s.limit {
		s.mu.Lock()
		s.overLimit = append(s.overLimit, fmt.Sprintf("t+%.1fs view answered used %d > limit %d", l.since().Seconds(), used, s.limit))
		s.mu.Unlock()
	}
}

// creditsUsed reads the credits meter's used from a subject view.
func creditsUsed(body []byte) (int64, bool) {
	var v struct {
		Meters []struct {
			Meter string `json:"meter"`
			Used  int64  `json:"used"`
		} `json:"meters"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, false
	}
	i := slices.IndexFunc(v.Meters, func(m struct {
		Meter string `json:"meter"`
		Used  int64  `json:"used"`
	}) bool {
		return m.Meter == "credits"
	})
	if i < 0 {
		return 0, false
	}
	return v.Meters[i].Used, true
}

// admin changes an admin subject's credits limit or plan; the period
// stays a month, so usage stays in the same counter.
func (l *loader) admin(ctx context.Context, rng *rand.Rand, s *subject) {
	var body []byte
	if rng.IntN(3) == 0 {
		body, _ = json.Marshal(map[string]any{"plan": []string{"free", "pro"}[rng.IntN(2)]})
	} else {
		body, _ = json.Marshal(map[string]any{"limits": map[string]any{"credits": map[string]any{"limit": 100 + rng.Int64N(100000), "period": "month"}}})
	}
	a, _, _ := l.call(ctx, rng, "admin", "PUT", "/v1/subjects/"+s.name, l.c.adminKey, body)
	if a.status != 0 && a.status != http.StatusOK {
		l.st.violation("t+%.1fs put %s: %d %s", l.since().Seconds(), s.name, a.status, truncate(a.body))
	}
}

func (l *loader) reset(ctx context.Context, rng *rand.Rand, s *subject) {
	a, _, _ := l.call(ctx, rng, "reset", "POST", "/v1/subjects/"+s.name+"/reset", l.c.adminKey, []byte(`{}`))
	if a.status != 0 && a.status != http.StatusOK {
		l.st.violation("t+%.1fs reset %s: %d %s", l.since().Seconds(), s.name, a.status, truncate(a.body))
	}
}
