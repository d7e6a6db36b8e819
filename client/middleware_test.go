package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/quota"
)

// The products of these tests name their caller in X-Subject and their
// estimate in X-Estimate; their handler does what ?do= says.

func subjectHeader(r *http.Request) (string, error) {
	s := r.Header.Get("X-Subject")
	if s == "" {
		return "", errors.New("who are you? send X-Subject")
	}
	return s, nil
}

func estimateHeader(r *http.Request) (client.Cost, error) {
	n, err := strconv.ParseInt(r.Header.Get("X-Estimate"), 10, 64)
	if err != nil {
		return client.Cost{}, fmt.Errorf("X-Estimate: %w", err)
	}
	return client.Cost{Amount: n}, nil
}

// product is a product server with the middleware in front of one
// handler, and a recorder of what the middleware let panics do.
type product struct {
	srv    *httptest.Server
	panics chan any
	// seen is what the handler saw of its reservation.
	mu   sync.Mutex
	seen []*client.Reservation
}

// handle is the product's handler: ?do=commit&amount=N commits N,
// ?do=usage commits priced token usage, ?do=nothing answers 200 without
// settling, ?do=fail answers 500, ?do=bad answers 400, ?do=panic panics,
// ?do=release releases, ?do=hold calls back into quotad while holding.
func (p *product) handle(admin *client.Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		res := client.ReservationFrom(r.Context())
		p.mu.Lock()
		p.seen = append(p.seen, res)
		p.mu.Unlock()
		switch r.URL.Query().Get("do") {
		case "commit":
			n, _ := strconv.ParseInt(r.URL.Query().Get("amount"), 10, 64)
			if _, err := res.Commit(r.Context(), quota.CommitRequest{Amount: n}); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		case "usage":
			u := quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000}
			if _, err := res.Commit(r.Context(), quota.CommitRequest{Usage: &u}); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		case "release":
			if err := res.Release(r.Context()); err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
		case "hold":
			v, err := admin.Subject(r.Context(), res.Subject())
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			fmt.Fprintf(w, "%d", v.Meters[0].Reserved)
			return
		case "fail":
			http.Error(w, "the model fell over", http.StatusInternalServerError)
			return
		case "bad":
			http.Error(w, "bad prompt", http.StatusBadRequest)
			return
		case "panic":
			panic("boom")
		}
		_, _ = io.WriteString(w, "ok")
	}
}

// reservations returns what the handler saw so far.
func (p *product) reservations() []*client.Reservation {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*client.Reservation(nil), p.seen...)
}

func newProduct(t *testing.T, c, admin *client.Client, cfg client.MiddlewareConfig) *product {
	p := &product{panics: make(chan any, 10)}
	metered := c.Middleware(cfg)(p.handle(admin))
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				p.panics <- v
				w.WriteHeader(http.StatusInternalServerError)
			}
		}()
		metered.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// call sends a request as subject with estimate and returns the status,
// headers and body.
func call(t *testing.T, base, do, subject string, estimate int64) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/work?"+do, nil)
	if err != nil {
		t.Fatal(err)
	}
	if subject != "" {
		req.Header.Set("X-Subject", subject)
	}
	req.Header.Set("X-Estimate", strconv.FormatInt(estimate, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// exhaustedBody is the 429's problem+json body.
type exhaustedBody struct {
	Type      string     `json:"type"`
	Title     string     `json:"title"`
	Status    int        `json:"status"`
	Detail    string     `json:"detail"`
	Subject   string     `json:"subject"`
	Meter     string     `json:"meter"`
	Requested int64      `json:"requested"`
	Used      int64      `json:"used"`
	Reserved  int64      `json:"reserved"`
	Limit     int64      `json:"limit"`
	Remaining int64      `json:"remaining"`
	ResetsAt  quota.Time `json:"resets_at"`
}

func TestMiddleware(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	ctx := context.Background()
	for _, checkOnly := range []bool{false, true} {
		mode := map[bool]string{false: "reserve", true: "check"}[checkOnly]
		cfg := client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader, CheckOnly: checkOnly}
		p := newProduct(t, c, c, cfg)
		subj := func(name string) string { return "anon:mw-" + mode + "-" + name } // 1,000 credits each

		t.Run(mode+"/out of credits is a 429 saying what is left", func(t *testing.T) {
			s := subj("spent")
			if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: s, Amount: 995}); err != nil {
				t.Fatal(err)
			}
			status, h, b := call(t, p.srv.URL, "do=commit&amount=10", s, 10)
			if status != http.StatusTooManyRequests || h.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("status %d, %s: %s; want 429 problem+json", status, h.Get("Content-Type"), b)
			}
			var body exhaustedBody
			if err := json.Unmarshal(b, &body); err != nil {
				t.Fatal(err)
			}
			if body.Status != 429 || body.Title != "Too Many Requests" || body.Subject != s || body.Meter != "credits" ||
				body.Remaining != 5 || body.Used != 995 || body.Limit != 1000 || body.Requested != 10 || body.ResetsAt.IsZero() ||
				!strings.Contains(body.Detail, "5 credits left of 1000") {
				t.Errorf("429 body = %s", b)
			}
			ra, err := strconv.Atoi(h.Get("Retry-After"))
			want := time.Until(body.ResetsAt.Time).Seconds()
			if err != nil || float64(ra) < want-5 || float64(ra) > want+5 {
				t.Errorf("Retry-After %q; want ~%.0f s (until resets_at)", h.Get("Retry-After"), want)
			}
			if n := len(p.reservations()); n != 0 {
				t.Errorf("the handler ran %d times", n)
			}
			if m := meter(t, c, s); m.Used != 995 || m.Reserved != 0 {
				t.Errorf("after the 429: %+v", m)
			}
		})

		t.Run(mode+"/commit above the estimate is recorded in full", func(t *testing.T) {
			s := subj("above")
			if status, _, b := call(t, p.srv.URL, "do=commit&amount=700", s, 10); status != 200 {
				t.Fatalf("status %d: %s", status, b)
			}
			if m := meter(t, c, s); m.Used != 700 || m.Reserved != 0 {
				t.Errorf("after the request: %+v; want used 700, reserved 0", m)
			}
		})

		t.Run(mode+"/priced usage", func(t *testing.T) {
			s := subj("usage")
			if status, _, b := call(t, p.srv.URL, "do=usage", s, 100); status != 200 {
				t.Fatalf("status %d: %s", status, b)
			}
			if m := meter(t, c, s); m.Used != 360 || m.Reserved != 0 {
				t.Errorf("after the request: %+v; want used 360 (1M sonnet input tokens), reserved 0", m)
			}
		})

		for _, tt := range []struct {
			name, do string
			status   int
			used     int64
			panicked bool
		}{
			{"handler 5xx releases", "do=fail", 500, 0, false},
			{"handler 4xx releases", "do=bad", 400, 0, false},
			{"panic releases and goes on", "do=panic", 500, 0, true},
			{"handler release", "do=release", 200, 0, false},
			{"success without a commit commits the estimate", "do=nothing", 200, 40, false},
		} {
			t.Run(mode+"/"+tt.name, func(t *testing.T) {
				s := subj(strings.TrimPrefix(tt.do, "do="))
				if status, _, b := call(t, p.srv.URL, tt.do, s, 40); status != tt.status {
					t.Fatalf("status %d: %s; want %d", status, b, tt.status)
				}
				if tt.panicked {
					select {
					case v := <-p.panics:
						if v != "boom" {
							t.Errorf("panic %v; want the handler's", v)
						}
					default:
						t.Error("the handler's panic did not reach the server")
					}
				}
				if m := meter(t, c, s); m.Used != tt.used || m.Reserved != 0 {
					t.Errorf("after the request: used %d, reserved %d; want used %d, reserved 0", m.Used, m.Reserved, tt.used)
				}
			})
		}

		t.Run(mode+"/no subject is a 401", func(t *testing.T) {
			status, h, b := call(t, p.srv.URL, "do=nothing", "", 1)
			if status != 401 || h.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(b), "X-Subject") {
				t.Errorf("status %d %s: %s", status, h.Get("Content-Type"), b)
			}
		})

		t.Run(mode+"/a subject quotad refuses is a 400 naming it", func(t *testing.T) {
			status, _, b := call(t, p.srv.URL, "do=nothing", "bob", 1)
			if status != 400 || !strings.Contains(string(b), `"field":"subject"`) {
				t.Errorf("status %d: %s; want 400 on subject", status, b)
			}
		})
	}

	t.Run("the hold counts while the handler runs", func(t *testing.T) {
		p := newProduct(t, c, c, client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader})
		status, _, b := call(t, p.srv.URL, "do=hold", "user:mw-hold", 250)
		if status != 200 || string(b) != "250" {
			t.Errorf("status %d, reserved during the handler %s; want 250", status, b)
		}
		if m := meter(t, c, "user:mw-hold"); m.Used != 250 || m.Reserved != 0 {
			t.Errorf("after: %+v; want the estimate committed", m)
		}
		if res := p.reservations()[0]; res.ID() == "" || res.Held() != 250 || res.ExpiresAt().IsZero() {
			t.Errorf("reservation: id %q, held %d, expires %v", res.ID(), res.Held(), res.ExpiresAt())
		}
	})

	t.Run("ReleaseUnsettled", func(t *testing.T) {
		p := newProduct(t, c, c, client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader, ReleaseUnsettled: true})
		if status, _, _ := call(t, p.srv.URL, "do=nothing", "user:mw-unsettled", 40); status != 200 {
			t.Fatal(status)
		}
		if m := meter(t, c, "user:mw-unsettled"); m.Used != 0 || m.Reserved != 0 {
			t.Errorf("after: %+v; want nothing used or held", m)
		}
	})

	// Many requests of one subject at once: holds make the admitted ones
	// fit the limit exactly, however they interleave.
	t.Run("concurrent requests never overspend", func(t *testing.T) {
		p := newProduct(t, c, c, client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader})
		var ok, refused atomic.Int64
		var wg sync.WaitGroup
		for range 30 {
			wg.Go(func() {
				switch status, _, b := call(t, p.srv.URL, "do=nothing", "anon:mw-race", 100); status {
				case 200:
					ok.Add(1)
				case 429:
					refused.Add(1)
				default:
					t.Errorf("status %d: %s", status, b)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 10 || refused.Load() != 20 {
			t.Errorf("%d admitted, %d refused; want 10 and 20 (1,000 credits, 100 each)", ok.Load(), refused.Load())
		}
		if m := meter(t, c, "anon:mw-race"); m.Used != 1000 || m.Reserved != 0 {
			t.Errorf("after: %+v; want used 1000", m)
		}
	})
}

func TestEchoMiddleware(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	e := echo.New()
	e.Use(c.EchoMiddleware(client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader}))
	e.POST("/work", func(ec echo.Context) error {
		res := client.ReservationFrom(ec.Request().Context())
		switch ec.QueryParam("do") {
		case "error":
			return echo.NewHTTPError(http.StatusBadGateway, "the model fell over")
		case "usage":
			u := quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000}
			if _, err := res.Commit(ec.Request().Context(), quota.CommitRequest{Usage: &u}); err != nil {
				return err
			}
		case "panic":
			panic("boom")
		}
		return ec.String(http.StatusOK, "ok")
	})
	var panics atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if recover() != nil {
				panics.Add(1)
				w.WriteHeader(http.StatusInternalServerError)
			}
		}()
		e.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	for _, tt := range []struct {
		name, do, subject string
		status            int
		used              int64
	}{
		{"a returned error releases", "do=error", "user:echo-error", 502, 0},
		{"a panic releases and goes on", "do=panic", "user:echo-panic", 500, 0},
		{"commit of priced usage", "do=usage", "user:echo-usage", 200, 360},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if status, _, b := call(t, srv.URL, tt.do, tt.subject, 50); status != tt.status {
				t.Fatalf("status %d: %s; want %d", status, b, tt.status)
			}
			if m := meter(t, c, tt.subject); m.Used != tt.used || m.Reserved != 0 {
				t.Errorf("after: used %d, reserved %d; want used %d, reserved 0", m.Used, m.Reserved, tt.used)
			}
		})
	}
	if panics.Load() != 1 {
		t.Errorf("%d panics reached the server; want 1", panics.Load())
	}

	t.Run("out of credits", func(t *testing.T) {
		if _, err := c.Consume(context.Background(), quota.ConsumeRequest{Subject: "anon:echo-spent", Amount: 1000}); err != nil {
			t.Fatal(err)
		}
		status, h, b := call(t, srv.URL, "do=usage", "anon:echo-spent", 1)
		if status != 429 || h.Get("Content-Type") != "application/problem+json" || h.Get("Retry-After") == "" || !strings.Contains(string(b), `"remaining":0`) {
			t.Errorf("status %d %s, Retry-After %q: %s", status, h.Get("Content-Type"), h.Get("Retry-After"), b)
		}
	})
}

// TestMiddlewareFailMode puts the middleware in front of a quotad that
// cannot be reached.
func TestMiddlewareFailMode(t *testing.T) {
	url := deadURL(t)
	t.Run("closed answers 503", func(t *testing.T) {
		c := client.New(url, "k", fast)
		p := newProduct(t, c, nil, client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader})
		status, h, b := call(t, p.srv.URL, "do=nothing", "user:1", 5)
		if status != 503 || h.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(b), `"status":503`) {
			t.Errorf("status %d %s: %s", status, h.Get("Content-Type"), b)
		}
		if len(p.reservations()) != 0 {
			t.Error("the handler ran")
		}
	})
	t.Run("open lets the request through", func(t *testing.T) {
		var opened atomic.Int64
		c := client.New(url, "k", fast, client.WithFailMode(client.FailOpen),
			client.OnFailOpen(func(string, string, error) { opened.Add(1) }))
		p := newProduct(t, c, nil, client.MiddlewareConfig{Subject: subjectHeader, Estimate: estimateHeader, ReleaseUnsettled: true})
		if status, _, b := call(t, p.srv.URL, "do=nothing", "user:1", 5); status != 200 {
			t.Errorf("status %d: %s", status, b)
		}
		if seen := p.reservations(); opened.Load() != 1 || len(seen) != 1 || seen[0].ID() != "" {
			t.Errorf("fail-open answers %d, reservations %v; want 1 with no id", opened.Load(), seen)
		}
	})
}
