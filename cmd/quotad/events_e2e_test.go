package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/quota"
)

// These tests run the events streams (Server-Sent Events) through the
// real binary: two instances on one Redis and one Postgres, a change made
// on one seen by a stream on the other.

// sseEvent is one dispatched Server-Sent Event.
type sseEvent struct {
	ID, Event, Data string
}

// sseStream reads an events stream in the background.
type sseStream struct {
	resp   *http.Response
	cancel context.CancelFunc
	events chan sseEvent
	pings  chan struct{}
}

// openEvents opens path on q with key, resuming after lastID if set, and
// checks that the answer is an event stream.
func openEvents(tb testing.TB, q *quotad, path, key, lastID string) *sseStream {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+q.addr+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		tb.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	for h, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(h); got != want {
			tb.Errorf("GET %s: %s %q, want %q", path, h, got, want)
		}
	}
	s := &sseStream{resp: resp, cancel: cancel, events: make(chan sseEvent, 1000), pings: make(chan struct{}, 100)}
	go s.read()
	tb.Cleanup(s.close)
	return s
}

func (s *sseStream) close() {
	s.cancel()
	s.resp.Body.Close()
}

// read parses the stream per the SSE rules quotad uses: "field: value"
// lines, a blank line dispatches, ":" starts a comment.
func (s *sseStream) read() {
	defer close(s.events)
	r := bufio.NewReader(s.resp.Body)
	var ev sseEvent
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			s.events <- ev
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			select {
			case s.pings <- struct{}{}:
			default:
			}
		default:
			field, value, _ := strings.Cut(line, ": ")
			switch field {
			case "id":
				ev.ID = value
			case "event":
				ev.Event = value
			case "data":
				ev.Data += value
			}
		}
	}
}

// next returns the next event, failing after 10 s or at the stream's end.
func (s *sseStream) next(tb testing.TB) sseEvent {
	tb.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			tb.Fatal("the stream ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		tb.Fatal("no event within 10 s")
	}
	return sseEvent{}
}

// nextChange returns the next event, which must be a change of type typ.
func (s *sseStream) nextChange(tb testing.TB, typ string) (sseEvent, quota.Change) {
	tb.Helper()
	ev := s.next(tb)
	var c quota.Change
	if err := json.Unmarshal([]byte(ev.Data), &c); err != nil {
		tb.Fatalf("event %+v: %v", ev, err)
	}
	if ev.Event != typ || c.Type != typ || ev.ID == "" {
		tb.Fatalf("event %+v, want a %s change with an id", ev, typ)
	}
	return ev, c
}

// snapshot checks that the next event is a snapshot and returns its used
// credits.
func (s *sseStream) snapshot(tb testing.TB, subject string) int64 {
	tb.Helper()
	ev := s.next(tb)
	var v quota.SubjectView
	if err := json.Unmarshal([]byte(ev.Data), &v); err != nil || ev.Event != "snapshot" || v.Subject != subject {
		tb.Fatalf("event %+v (%v), want a snapshot of %s", ev, err, subject)
	}
	for _, m := range v.Meters {
		if m.Meter == "credits" {
			return m.Used
		}
	}
	tb.Fatalf("snapshot %s has no credits meter", ev.Data)
	return 0
}

func (s *sseStream) quiet(tb testing.TB, d time.Duration) {
	tb.Helper()
	select {
	case ev, ok := <-s.events:
		if ok {
			tb.Fatalf("unexpected event %+v", ev)
		}
	case <-time.After(d):
	}
}

func consume(tb testing.TB, q *quotad, subject string, amount int) {
	tb.Helper()
	status, v := q.call(tb, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":`+itoa(amount)+`}`)
	if status != 200 || v["applied"] != true {
		tb.Fatalf("consume %d on %s: %d %v", amount, subject, status, v)
	}
}

// TestEventsAcrossInstances: a stream on B sees the consumes made on A,
// in order, with the threshold crossing at 50 %; a stream that comes back
// with Last-Event-ID gets exactly what it missed, and one whose id cannot
// be replayed starts again from a snapshot.
func TestEventsAcrossInstances(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	const subject = "user:events-1"
	setLimit(t, a, subject, 100)
	status, key := a.call(t, "POST", "/v1/keys", `{"scope":"service","name":"events"}`)
	if status != 201 {
		t.Fatalf("mint key: %d %v", status, key)
	}
	serviceKey := key["key"].(string)

	// The console's stream of every subject, on A; it keeps the watch
	// alive while B's stream is away.
	all := openEvents(t, a, "/v1/events", adminKey, "")
	if ev := all.next(t); ev.Event != "hello" {
		t.Fatalf("first event of /v1/events: %+v, want hello", ev)
	}
	s := openEvents(t, b, "/v1/subjects/"+subject+"/events", serviceKey, "")
	if used := s.snapshot(t, subject); used != 0 {
		t.Fatalf("snapshot used %d, want 0", used)
	}

	consume(t, a, subject, 30)
	_, c := s.nextChange(t, quota.ChangeUsage)
	if c.Subject != subject || c.Used != 30 || c.Amount != 30 || c.Limit != 100 || c.Remaining != 70 || c.Action != "consumed" {
		t.Fatalf("usage change %+v, want used 30 of 100", c)
	}
	consume(t, a, subject, 25)
	ev, c := s.nextChange(t, quota.ChangeUsage)
	if c.Used != 55 {
		t.Fatalf("usage change %+v, want used 55", c)
	}
	last, c := s.nextChange(t, quota.ChangeThreshold)
	if c.Threshold != 50 || c.Used != 55 {
		t.Fatalf("threshold change %+v, want 50 %% at 55", c)
	}
	if last.ID == ev.ID {
		t.Fatalf("two events share the id %s", ev.ID)
	}
	s.quiet(t, 200*time.Millisecond)
	// The console saw the same changes, with the same ids.
	for _, want := range []int64{30, 55, 55} {
		aev := all.next(t)
		var ac quota.Change
		if err := json.Unmarshal([]byte(aev.Data), &ac); err != nil || ac.Used != want || ac.Subject != subject {
			t.Fatalf("console event %+v, want used %d", aev, want)
		}
		if want == 55 && aev.Event == quota.ChangeThreshold && aev.ID != last.ID {
			t.Fatalf("console id %s, B's %s", aev.ID, last.ID)
		}
	}
	s.close()

	// Away: usage goes on, on both instances.
	consume(t, a, subject, 10)
	consume(t, b, subject, 20) // 85: crosses 80 %

	s = openEvents(t, b, "/v1/subjects/"+subject+"/events", serviceKey, last.ID)
	_, c = s.nextChange(t, quota.ChangeUsage)
	if c.Used != 65 {
		t.Fatalf("first change after reconnecting: %+v, want used 65 (no snapshot)", c)
	}
	_, c = s.nextChange(t, quota.ChangeUsage)
	if c.Used != 85 {
		t.Fatalf("second change after reconnecting: %+v, want used 85", c)
	}
	_, c = s.nextChange(t, quota.ChangeThreshold)
	if c.Threshold != 80 {
		t.Fatalf("threshold change %+v, want 80 %%", c)
	}
	// Then live, with nothing twice at the seam.
	consume(t, a, subject, 1)
	if _, c = s.nextChange(t, quota.ChangeUsage); c.Used != 86 {
		t.Fatalf("live change after the replay: %+v, want used 86", c)
	}
	s.quiet(t, 200*time.Millisecond)

	// B's snapshot may come from its L1, which has not seen A's last
	// consume yet: the subject's changes of the last moments follow it.
	for _, id := range []string{"not-an-id", "1-0"} {
		r := openEvents(t, b, "/v1/subjects/"+subject+"/events", serviceKey, id)
		used := r.snapshot(t, subject)
		for {
			select {
			case ev := <-r.events:
				var c quota.Change
				if err := json.Unmarshal([]byte(ev.Data), &c); err != nil || c.Subject != subject {
					t.Fatalf("event %+v after the snapshot", ev)
				}
				used = c.Used
				continue
			case <-time.After(300 * time.Millisecond):
			}
			break
		}
		if used != 86 {
			t.Fatalf("after Last-Event-ID %q: used %d after the snapshot and what followed, want 86", id, used)
		}
	}
}

// TestEventsErrors: the events routes answer problems like every route:
// a bad subject is a 400, /v1/events needs an admin key, and tiers
// without Redis have no events (503).
func TestEventsErrors(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg)
	status, key := q.call(t, "POST", "/v1/keys", `{"scope":"service","name":"events"}`)
	if status != 201 {
		t.Fatalf("mint key: %d %v", status, key)
	}
	serviceKey := key["key"].(string)
	pgOnly := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_TIERS=postgres")
	for _, tc := range []struct {
		name   string
		q      *quotad
		path   string
		key    string
		status int
		field  string
	}{
		{"bad subject", q, "/v1/subjects/bob/events", serviceKey, 400, "subject"},
		{"subject with a bad character", q, "/v1/subjects/user:a%20b/events", serviceKey, 400, "subject"},
		{"no key", q, "/v1/subjects/user:1/events", "", 401, ""},
		{"service key on every subject", q, "/v1/events", serviceKey, 403, ""},
		{"postgres tiers", pgOnly, "/v1/subjects/user:1/events", adminKey, 503, ""},
		{"postgres tiers, every subject", pgOnly, "/v1/events", adminKey, 503, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, ct, b := tc.q.do(t, "GET", tc.path, tc.key, "", nil)
			if status != tc.status || ct != "application/problem+json" {
				t.Fatalf("%d %s %s, want %d problem+json", status, ct, b, tc.status)
			}
			var p struct{ Field string }
			if err := json.Unmarshal(b, &p); err != nil || p.Field != tc.field {
				t.Fatalf("problem %s, want field %q", b, tc.field)
			}
		})
	}
}

// TestEventsShutdown: open streams do not hold a SIGTERM up; they end and
// quotad exits 0 at once.
func TestEventsShutdown(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	s := openEvents(t, q, "/v1/subjects/user:bye/events", adminKey, "")
	s.snapshot(t, "user:bye")
	start := time.Now()
	q.stop(t)
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("shutdown took %v with a stream open", took)
	}
	select {
	case _, ok := <-s.events:
		if ok {
			t.Fatal("an event after shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end")
	}
}

// BenchmarkEventsFanout measures what one instance's streams cost: it
// opens QUOTAD_BENCH_STREAMS streams (1,000 unless set) of one subject on
// a quotad, then each iteration consumes once (on the same instance) and
// waits until every stream has the change. It reports the delivery
// latency (from the consume's start to the change's arrival: median, p99
// and last stream) and quotad's RSS before and with the streams open.
//
//	QUOTAD_BENCH_STREAMS=10000 go test -run '^$' -bench EventsFanout -benchtime 20x ./cmd/quotad
func BenchmarkEventsFanout(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("QUOTAD_BENCH_STREAMS")); err == nil && v > 0 {
		n = v
	}
	// Every stream is a connection: room for them and the consumes.
	q := startQuotad(b, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(b), fmt.Sprintf("QUOTAD_MAX_CONNS=%d", n+100))
	const subject = "user:fanout"
	consume(b, q, subject, 1)
	rssBefore := rss(b, q)

	arrivals := make(chan time.Time, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	hc := &http.Client{Transport: tr}
	var opened sync.WaitGroup
	var openErr atomic.Value
	sem := make(chan struct{}, 32)
	start := time.Now()
	for range n {
		opened.Add(1)
		sem <- struct{}{}
		go func() {
			ok := false
			defer func() {
				if !ok {
					opened.Done()
				}
			}()
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+q.addr+"/v1/subjects/"+subject+"/events", nil)
			req.Header.Set("Authorization", "Bearer "+adminKey)
			resp, err := hc.Do(req)
			<-sem
			if err != nil || resp.StatusCode != 200 {
				openErr.Store(fmt.Sprint(err, resp))
				return
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				switch {
				case strings.HasPrefix(line, "event: snapshot") && !ok:
					ok = true
					opened.Done()
				case strings.HasPrefix(line, "event: usage"):
					arrivals <- time.Now()
				}
			}
		}()
	}
	opened.Wait()
	if e := openErr.Load(); e != nil {
		b.Fatalf("opening streams: %v", e)
	}
	b.Logf("%d streams open in %v", n, time.Since(start).Round(time.Millisecond))
	// The lookback may bring the setup's consume to some streams: let it
	// pass.
	time.Sleep(2 * time.Second)
	for len(arrivals) > 0 {
		<-arrivals
	}

	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		consume(b, q, subject, 1)
		for range n {
			select {
			case at := <-arrivals:
				lat = append(lat, at.Sub(t0))
			case <-time.After(30 * time.Second):
				b.Fatalf("a change reached only some of %d streams", n)
			}
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(n), "streams")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(rssBefore)/(1<<20), "rss-before-MB")
	b.ReportMetric(float64(rss(b, q))/(1<<20), "rss-MB")
	cancel()
}

// rss returns the resident set size of q's process, in bytes.
func rss(tb testing.TB, q *quotad) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", q.cmd.Process.Pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}
