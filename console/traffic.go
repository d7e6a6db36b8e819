package console

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quotad/quotad/internal/periodic"
)

// traffic keeps this instance's request and refusal counts, sampled from
// its /metrics every sampleEvery while anyone is signed in (with their
// key), for the overview's chart of the last minutes.
type traffic struct {
	now     func() time.Time
	mu      sync.Mutex
	samples []sample // oldest first, at most keepSamples
}

type sample struct {
	at                time.Time
	requests, refused float64 // counters since start
}

const (
	sampleEvery = 5 * time.Second
	keepSamples = 10 * 60 / 5 // ten minutes
)

func newTraffic(now func() time.Time) *traffic { return &traffic{now: now} }

// Run samples the traffic until ctx ends.
func (c *Console) Run(ctx context.Context) {
	periodic.Run(ctx, sampleEvery, func() {
		if key := c.sessions.anyKey(); key != "" {
			c.sample(ctx, key)
		}
	})
}

func (c *Console) sample(ctx context.Context, key string) {
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/metrics", nil)
	r.RemoteAddr = "127.0.0.1:0"
	req := r.Clone(detached{ctx})
	c.prepare(req, r, key)
	req.Header.Set("Accept", "text/plain")
	w := &recorder{header: make(http.Header), status: http.StatusOK}
	c.api.ServeHTTP(w, req)
	if w.status != http.StatusOK {
		return
	}
	reqs, refused := countRequests(w.body.Bytes())
	c.traffic.add(sample{at: c.now(), requests: reqs, refused: refused})
}

// countRequests sums quotad_http_requests_total over the API's routes
// (not the console's own pages, nor /metrics), and apart the answers that
// refused or failed (4xx, 5xx).
func countRequests(text []byte) (total, refused float64) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "quotad_http_requests_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels, val := line[len("quotad_http_requests_total{"):end], strings.TrimSpace(line[end+1:])
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		route := label(labels, "route")
		if strings.HasPrefix(route, "/console") || route == "/metrics" {
			continue
		}
		total += v
		if code := label(labels, "code"); len(code) == 3 && (code[0] == '4' || code[0] == '5') {
			refused += v
		}
	}
	return total, refused
}

// label reads name="value" from a Prometheus label list.
func label(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}

// stale reports whether the last sample is older than sampleEvery.
func (t *traffic) stale(now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.samples) == 0 || now.Sub(t.samples[len(t.samples)-1].at) >= sampleEvery
}

func (t *traffic) add(s sample) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.samples = append(t.samples, s)
	if len(t.samples) > keepSamples {
		t.samples = append(t.samples[:0], t.samples[len(t.samples)-keepSamples:]...)
	}
}

// rate is one interval's requests and refusals per second.
type rate struct {
	at                time.Time
	requests, refused float64
}

// rates returns the per-second rates between consecutive samples.
func (t *traffic) rates() []rate {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []rate
	for i := 1; i < len(t.samples); i++ {
		a, b := t.samples[i-1], t.samples[i]
		secs := b.at.Sub(a.at).Seconds()
		if secs <= 0 || b.requests < a.requests { // a restart's counters begin again
			continue
		}
		out = append(out, rate{at: b.at, requests: (b.requests - a.requests) / secs, refused: max(b.refused-a.refused, 0) / secs})
	}
	return out
}
