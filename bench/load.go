// Package bench is quotad's benchmark suite: load generation (closed and
// open loop, HDR latency histograms), the scenarios, scraping quotad's
// /metrics around each run, seeding, and the reports (table, markdown,
// JSON, SVG chart). cmd/quotabench is its command line; `make bench` runs
// the whole suite against a private stack.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/valyala/fasthttp"
)

// Histogram bounds: microseconds, 1µs .. 60s, 3 significant digits.
const (
	HistMin    = 1
	HistMax    = 60_000_000
	HistDigits = 3
)

// NewHistogram returns an empty latency histogram in microseconds.
func NewHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(HistMin, HistMax, HistDigits)
}

// LoadOptions describes one measured run.
type LoadOptions struct {
	URL         string // base URL of quotad, e.g. http://127.0.0.1:18080
	Key         string // bearer key
	Scenario    Scenario
	Gen         GenConfig
	Mode        string        // "closed" or "open"
	Concurrency int           // closed: workers; open: most requests in flight
	Rate        float64       // open: requests per second
	Duration    time.Duration // how long requests are started
	Seed        uint64        // worker i draws from seed+i
	// Progress, when set, is called about every 250ms with the responses
	// so far and the time since the start.
	Progress func(done int64, elapsed time.Duration)
}

// Validate reports a bad configuration.
func (o LoadOptions) Validate() error {
	if _, err := url.Parse(o.URL); err != nil || o.URL == "" {
		return fmt.Errorf("url: %q is not a URL", o.URL)
	}
	if o.Scenario.Next == nil {
		return fmt.Errorf("scenario: none")
	}
	if o.Concurrency < 1 {
		return fmt.Errorf("c: must be at least 1")
	}
	if o.Duration <= 0 {
		return fmt.Errorf("d: must be positive")
	}
	switch o.Mode {
	case "closed":
	case "open":
		if o.Rate <= 0 {
			return fmt.Errorf("rate: open loop needs -rate > 0")
		}
	default:
		return fmt.Errorf("mode: %q is not closed or open", o.Mode)
	}
	return o.Gen.Validate()
}

// LoadResult is what one run measured on the client side.
type LoadResult struct {
	Requests        int64            // responses received, whatever their status
	OK              int64            // 2xx responses
	Consumes        int64            // consumes counted: 2xx answers to consumes, a batch's items without an error
	Status          map[int]int64    // responses by status code
	TransportErrors map[string]int64 // requests without a response, by kind
	ErrorSamples    map[string]string
	Scheduled       int64 // open loop: requests due before the end
	Unsent          int64 // open loop: due before the end but not started by then
	Elapsed         time.Duration
	Hist            *hdrhistogram.Histogram // latency of every response, µs
	MaxMicros       int64                   // exact maximum latency, µs
}

// RPS is responses per second.
func (r *LoadResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Errors is the number of non-2xx responses plus transport errors.
func (r *LoadResult) Errors() int64 {
	n := r.Requests - r.OK
	for _, c := range r.TransportErrors {
		n += c
	}
	return n
}

// NewClient is a net/http client for the bench's side calls (scraping
// /metrics, seeding): keep-alive, at most concurrency connections, no
// compression.
func NewClient(concurrency int, timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        concurrency,
		MaxIdleConnsPerHost: concurrency,
		MaxConnsPerHost:     concurrency,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// LoadClient sends the measured requests: fasthttp's HostClient, keep-alive,
// at most concurrency connections to one quotad. It costs the client's core
// a fraction of what net/http's client does (no allocations per request),
// which matters: with net/http the client's core, not quotad, was what
// limited the floor scenario (58k req/s with the client's core at 97%,
// where wrk reached 70k against the same server).
type LoadClient struct {
	hc   *fasthttp.HostClient
	base string // scheme, host and path prefix, no trailing slash
}

// NewLoadClient returns a load client for the quotad at base (http://host:port).
func NewLoadClient(base string, concurrency int, timeout time.Duration) (*LoadClient, error) {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("url: %q is not an http://host:port URL", base)
	}
	return &LoadClient{base: trimSlash(base), hc: &fasthttp.HostClient{
		Addr:                          u.Host,
		MaxConns:                      concurrency,
		MaxConnWaitTimeout:            timeout,
		ReadTimeout:                   timeout,
		WriteTimeout:                  timeout,
		MaxIdleConnDuration:           time.Minute,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
	}}, nil
}

// worker is the per-goroutine state: nothing here is shared on the hot
// path except done, which only the progress reader loads.
type worker struct {
	done     atomic.Int64 // responses so far, for the live rate
	_        [56]byte     // keep done on its own cache line
	hist     *hdrhistogram.Histogram
	max      int64
	status   [600]int64
	other    map[int]int64 // status codes outside [0, 600)
	terr     map[string]int64
	tsample  map[string]string
	consumes int64
	sent     int64
	gen      *Gen
	body     []byte            // the generator's buffer, reused: SetBody copies it
	uris     map[string]string // request URI by path
	req      *fasthttp.Request
	resp     *fasthttp.Response
}

func (w *worker) record(lat time.Duration, status int, consumes int64) {
	us := lat.Microseconds()
	if us < HistMin {
		us = HistMin
	}
	if us > w.max {
		w.max = us
	}
	if us > HistMax {
		us = HistMax
	}
	_ = w.hist.RecordValue(us) // in range by construction
	if status >= 0 && status < len(w.status) {
		w.status[status]++
	} else {
		if w.other == nil {
			w.other = map[int]int64{}
		}
		w.other[status]++
	}
	if status/100 == 2 {
		w.consumes += consumes
	}
	w.done.Add(1)
}

func (w *worker) transportError(err error) {
	kind := ErrorKind(err)
	if w.terr == nil {
		w.terr, w.tsample = map[string]int64{}, map[string]string{}
	}
	w.terr[kind]++
	if _, ok := w.tsample[kind]; !ok {
		w.tsample[kind] = err.Error()
	}
}

// ErrorKind classifies a transport error for the report.
func ErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, fasthttp.ErrTimeout), errors.Is(err, fasthttp.ErrDialTimeout), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, fasthttp.ErrConnectionClosed):
		return "conn-reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn-refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "conn-reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no-local-port"
	}
	return "other"
}

// send does one request of the scenario and reads the whole answer.
// status is 0 on a transport error.
func (w *worker) send(c *LoadClient, r Request) (int, error) {
	uri, ok := w.uris[r.Path]
	if !ok {
		uri = c.base + r.Path
		if len(w.uris) < maxURIs { // paths with ids are new each time
			w.uris[r.Path] = uri
		}
	}
	w.req.SetRequestURI(uri)
	w.req.SetBody(r.Body)
	if err := c.hc.Do(w.req, w.resp); err != nil {
		return 0, err
	}
	return w.resp.StatusCode(), nil
}

// maxURIs bounds a worker's cache of request URIs.
const maxURIs = 64

// exchange sends r and the follow-ups its answers ask for (Request.Then),
// recording each answer; r's latency counts from since, a follow-up's
// from when it was sent.
func (w *worker) exchange(c *LoadClient, r Request, since time.Time) error {
	for {
		status, err := w.send(c, r)
		if err != nil {
			return err
		}
		w.record(time.Since(since), status, r.consumes(w.resp.Body()))
		if r.Then == nil || status/100 != 2 {
			return nil
		}
		next, ok := r.Then(w.resp.Body(), w.body[:0])
		if !ok {
			return nil
		}
		w.body = next.Body
		w.sent++
		r, since = next, time.Now()
	}
}

// bodyCap is the initial capacity of a worker's request body buffer.
const bodyCap = 160

// CloseIdleConnections closes the client's kept-alive connections.
func (c *LoadClient) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Run drives one measured run and returns what the client saw. Requests in
// flight at the end finish and are counted; none is cancelled. A nil client
// gets a new one for o.URL sized for o.Concurrency.
func Run(ctx context.Context, c *LoadClient, o LoadOptions) (*LoadResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if c == nil {
		var err error
		if c, err = NewLoadClient(o.URL, o.Concurrency, 30*time.Second); err != nil {
			return nil, err
		}
	}
	workers := make([]*worker, o.Concurrency)
	for i := range workers {
		w := &worker{
			hist: NewHistogram(),
			gen:  NewGen(o.Gen, o.Seed+uint64(i)),
			body: make([]byte, 0, bodyCap),
			uris: map[string]string{},
			req:  fasthttp.AcquireRequest(),
			resp: fasthttp.AcquireResponse(),
		}
		w.req.Header.SetMethod(fasthttp.MethodPost)
		w.req.Header.SetContentType("application/json")
		w.req.Header.Set("Authorization", "Bearer "+o.Key)
		workers[i] = w
	}
	defer func() {
		for _, w := range workers {
			fasthttp.ReleaseRequest(w.req)
			fasthttp.ReleaseResponse(w.resp)
		}
	}()

	start := time.Now()
	end := start.Add(o.Duration)
	var wg sync.WaitGroup
	var next atomic.Int64 // open loop: the next request's index
	interval := time.Duration(0)
	var scheduled int64
	if o.Mode == "open" {
		interval = time.Duration(float64(time.Second) / o.Rate)
		if interval <= 0 {
			interval = 1
		}
		scheduled = int64((o.Duration + interval - 1) / interval)
	}
	for _, w := range workers {
		wg.Go(func() {
			if o.Mode == "open" {
				w.open(ctx, c, o.Scenario, start, end, interval, scheduled, &next)
			} else {
				w.closed(ctx, c, o.Scenario, end)
			}
		})
	}

	stopProgress := make(chan struct{})
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		if o.Progress == nil {
			return
		}
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				var n int64
				for _, w := range workers {
					n += w.done.Load()
				}
				o.Progress(n, time.Since(start))
			}
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	close(stopProgress)
	<-progressDone
	if o.Progress != nil {
		var n int64
		for _, w := range workers {
			n += w.done.Load()
		}
		o.Progress(n, elapsed)
	}

	res := &LoadResult{
		Status:          map[int]int64{},
		TransportErrors: map[string]int64{},
		ErrorSamples:    map[string]string{},
		Elapsed:         elapsed,
		Hist:            NewHistogram(),
		Scheduled:       scheduled,
	}
	var sent int64
	for _, w := range workers {
		res.Hist.Merge(w.hist)
		res.MaxMicros = max(res.MaxMicros, w.max)
		for code, n := range w.status {
			if n > 0 {
				res.Status[code] += n
			}
		}
		for code, n := range w.other {
			res.Status[code] += n
		}
		for k, n := range w.terr {
			res.TransportErrors[k] += n
			if _, ok := res.ErrorSamples[k]; !ok {
				res.ErrorSamples[k] = w.tsample[k]
			}
		}
		res.Consumes += w.consumes
		sent += w.sent
	}
	for code, n := range res.Status {
		res.Requests += n
		if code/100 == 2 {
			res.OK += n
		}
	}
	if o.Mode == "open" {
		res.Unsent = max(0, scheduled-sent)
	}
	if res.Requests == 0 && len(res.TransportErrors) > 0 {
		for k, s := range res.ErrorSamples {
			return res, fmt.Errorf("no response from %s (%s: %s)", o.URL, k, s)
		}
	}
	return res, ctx.Err()
}

// closed: send, wait for the answer, repeat, until end.
func (w *worker) closed(ctx context.Context, c *LoadClient, sc Scenario, end time.Time) {
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) {
			return
		}
		r := sc.Next(w.gen, w.body[:0])
		w.body = r.Body
		w.sent++
		if err := w.exchange(c, r, time.Now()); err != nil {
			w.transportError(err)
			// A dead server answers at once: do not spin.
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// open: request i is due at start + i×interval. A free worker takes the
// next due request, waits for its time if it is early, and measures from
// the due time: a request that found every worker busy counts its wait
// (no coordinated omission). Requests still unsent at the end are Unsent.
func (w *worker) open(ctx context.Context, c *LoadClient, sc Scenario,
	start, end time.Time, interval time.Duration, scheduled int64, next *atomic.Int64) {
	for ctx.Err() == nil {
		if !time.Now().Before(end) {
			return
		}
		i := next.Add(1) - 1
		if i >= scheduled {
			return
		}
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			sleepCtx(ctx, d)
		}
		r := sc.Next(w.gen, w.body[:0])
		w.body = r.Body
		w.sent++
		if err := w.exchange(c, r, due); err != nil {
			w.transportError(err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func trimSlash(s string) string {
	for len(s) > 0 && s[len(s)-1] == '/' {
		s = s[:len(s)-1]
	}
	return s
}
