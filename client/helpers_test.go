package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/quota"
)

func TestMain(m *testing.M) { quotadtest.Main(m) }

// fast is a retry policy quick enough for tests.
var fast = client.WithRetry(4, 10*time.Millisecond, 50*time.Millisecond)

// adminClient returns a client of q with the admin key.
func adminClient(q *quotadtest.Server, opts ...client.Option) *client.Client {
	return client.New(q.URL, quotadtest.AdminKey, append([]client.Option{fast}, opts...)...)
}

// deadURL returns the URL of a port nothing listens on.
func deadURL(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(tb))
}

// fault is what the proxy does to one request.
type fault int

const (
	pass      fault = iota
	dropAns         // forward to quotad, then cut the connection instead of answering
	slowAns         // forward to quotad, then answer only after the client gave up
	fake503         // answer 503 problem+json without forwarding
	cutEvent        // for a stream: forward, then cut it after the first event with an id
	fake503RA       // answer 503 problem+json with Retry-After: 1, without forwarding
	shedFirst       // for a batch: forward all but the first event, answer it 503 as an overloaded quotad does
)

// proxy stands between a client and the real quotad and breaks chosen
// answers, so that tests can lose answers after quotad applied their
// requests: the case retries with idempotency keys exist for.
type proxy struct {
	tb     testing.TB
	target string
	srv    *httptest.Server
	slow   time.Duration

	mu     sync.Mutex
	faults map[string][]fault // path -> faults of the next requests, in order
	seen   map[string][]seen  // path -> requests seen
}

type seen struct {
	body   []byte
	header http.Header
}

func newProxy(tb testing.TB, target string) *proxy {
	p := &proxy{tb: tb, target: target, faults: map[string][]fault{}, seen: map[string][]seen{}}
	p.srv = httptest.NewServer(p)
	tb.Cleanup(p.srv.Close)
	return p
}

// fail makes the next requests to path meet faults, one each.
func (p *proxy) fail(path string, faults ...fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[path] = append(p.faults[path], faults...)
}

// requests returns the requests seen for path.
func (p *proxy) requests(path string) []seen {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]seen(nil), p.seen[path]...)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	p.seen[r.URL.Path] = append(p.seen[r.URL.Path], seen{body: body, header: r.Header.Clone()})
	f := pass
	if fs := p.faults[r.URL.Path]; len(fs) > 0 {
		f, p.faults[r.URL.Path] = fs[0], fs[1:]
	}
	p.mu.Unlock()
	if f == shedFirst {
		p.shedFirst(w, r, body)
		return
	}
	if f == fake503RA {
		w.Header().Set("Retry-After", "1")
	}
	if f == fake503 || f == fake503RA {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"the quota stores are unavailable; retry later"}`))
		return
	}
	// A request goes on to quotad when its client gives up (the point of
	// slowAns), except a stream, which ends with its client.
	ctx := context.WithoutCancel(r.Context())
	if r.Header.Get("Accept") == "text/event-stream" {
		ctx = r.Context()
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		p.tb.Errorf("proxy: %v", err)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			p.tb.Errorf("proxy: %v", err)
		}
		return
	}
	defer resp.Body.Close()
	switch f {
	case dropAns:
		// quotad has applied the request; the client never hears of
		// it: the server closes the connection without an answer.
		panic(http.ErrAbortHandler)
	case slowAns:
		time.Sleep(p.slow)
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	if f == cutEvent {
		// Copy up to the end of the first event, then cut.
		buf := make([]byte, 1)
		var last []byte
		for {
			if _, err := resp.Body.Read(buf); err != nil {
				return
			}
			_, _ = w.Write(buf)
			last = append(last, buf[0])
			if !bytes.HasSuffix(last, []byte("\n\n")) {
				continue
			}
			_ = rc.Flush() // each event as it comes, as quotad sends them
			if bytes.Contains(last, []byte("id:")) {
				panic(http.ErrAbortHandler) // cut the stream mid-way
			}
			last = last[:0]
		}
	}
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
			_ = rc.Flush() // streams (events) pass through as they come
		}
		if err != nil {
			return
		}
	}
}

// idempotencyKey returns the idempotency_key of a JSON request body.
func idempotencyKey(tb testing.TB, body []byte) string {
	tb.Helper()
	var v struct {
		Key string `json:"idempotency_key"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		tb.Fatalf("request body %q: %v", body, err)
	}
	return v.Key
}

// meter returns the status of subject's credits meter.
func meter(tb testing.TB, c *client.Client, subject string) quota.MeterStatus {
	tb.Helper()
	v, err := c.Subject(context.Background(), subject)
	if err != nil {
		tb.Fatalf("subject %s: %v", subject, err)
	}
	for _, m := range v.Meters {
		if m.Meter == quota.DefaultMeter {
			return m
		}
	}
	tb.Fatalf("subject %s has no credits meter: %+v", subject, v)
	return quota.MeterStatus{}
}

// shedFirst forwards a batch without its first event and answers that one
// as quotad answers an event it shed: 503, nothing counted.
func (p *proxy) shedFirst(w http.ResponseWriter, r *http.Request, body []byte) {
	var batch struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &batch); err != nil || len(batch.Events) == 0 {
		p.tb.Errorf("proxy: batch %q: %v", body, err)
		return
	}
	rest, _ := json.Marshal(map[string]any{"events": batch.Events[1:]})
	req, _ := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(rest))
	req.Header = r.Header.Clone()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.tb.Errorf("proxy: %v", err)
		return
	}
	defer resp.Body.Close()
	var ans struct {
		Results []json.RawMessage `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		p.tb.Errorf("proxy: batch answer: %v", err)
		return
	}
	shed := json.RawMessage(`{"error":{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"usage arrives faster than quotad writes it to Postgres; nothing was counted, retry after Retry-After seconds"}}`)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Retry-After", "1")
	_ = json.NewEncoder(w).Encode(map[string]any{"results": append([]json.RawMessage{shed}, ans.Results...)})
}
