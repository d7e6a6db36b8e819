package api_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/quota"
)

// The events handler's framing, over a feed that hands out what a test
// queues (the feed itself is tested on Redis in cache, and end to end in
// cmd/quotad).

type queueFeed struct {
	replayed bool
	err      error
	sub      *queueSub
}

func (f *queueFeed) Subscribe(ctx context.Context, subject, lastEventID string) (api.Subscription, error) {
	if f.err != nil {
		return nil, f.err
	}
	f.sub.replayed = f.replayed
	return f.sub, nil
}

type queueSub struct {
	mu       sync.Mutex
	events   []api.Event
	replayed bool
	ready    chan struct{}
	done     chan struct{}
	closed   chan struct{}
}

func newQueueSub() *queueSub {
	return &queueSub{ready: make(chan struct{}, 1), done: make(chan struct{}), closed: make(chan struct{})}
}

func (s *queueSub) push(evs ...api.Event) {
	s.mu.Lock()
	s.events = append(s.events, evs...)
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

func (s *queueSub) Replayed() bool         { return s.replayed }
func (s *queueSub) Ready() <-chan struct{} { return s.ready }
func (s *queueSub) Done() <-chan struct{}  { return s.done }
func (s *queueSub) Close()                 { close(s.closed) }

func (s *queueSub) Next() (api.Event, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) == 0 {
		return api.Event{}, false
	}
	ev := s.events[0]
	s.events = s.events[1:]
	return ev, true
}

func eventsServer(tb testing.TB, feed api.Feed) *httptest.Server {
	tb.Helper()
	svc := quota.NewService(quota.Stores{}, nil, quota.DefaultMargin())
	srv := httptest.NewServer(api.New(api.Config{Service: svc, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
		AdminKey: "k", Feed: feed, EventsHeartbeat: 20 * time.Millisecond,
		Ready: func(ctx context.Context) api.Readiness { return api.Readiness{Status: "ok"} }}))
	tb.Cleanup(srv.Close)
	return srv
}

// lines opens /v1/events and returns its lines as they come.
func lines(tb testing.TB, srv *httptest.Server) (*http.Response, <-chan string) {
	tb.Helper()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/events", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	out := make(chan string, 100)
	go func() {
		defer close(out)
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			out <- strings.TrimSuffix(line, "\n")
		}
	}()
	return resp, out
}

// expect reads lines, skipping blank ones and heartbeats unless asked
// for, and checks they are want in order; a want ending in "*" matches
// any line it begins.
func expect(tb testing.TB, in <-chan string, want ...string) {
	tb.Helper()
	var got []string
	for _, w := range want {
		for {
			select {
			case line, ok := <-in:
				if !ok {
					tb.Fatalf("stream ended; got %q, want %q", got, want)
				}
				got = append(got, line)
				if line == ": ping" && w != line || line == "" && w != "" {
					continue
				}
				if prefix, ok := strings.CutSuffix(w, "*"); ok && strings.HasPrefix(line, prefix) {
					break
				}
				if line != w {
					tb.Fatalf("line %q, want %q (so far %q)", line, w, got)
				}
			case <-time.After(2 * time.Second):
				tb.Fatalf("no line %q; got %q", w, got)
			}
			break
		}
	}
}

func TestEventsFraming(t *testing.T) {
	sub := newQueueSub()
	srv := eventsServer(t, &queueFeed{sub: sub})
	resp, in := lines(t, srv)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	expect(t, in, "event: hello", `data: {"subject":"*"}`)
	expect(t, in, ": ping") // heartbeats while quiet
	sub.push(api.Event{ID: "5-0", Type: "usage", Subject: "user:1", Data: []byte(`{"type":"usage","used":3}`)},
		api.Event{ID: "6-0", Missed: true})
	expect(t, in, "id: 5-0", "event: usage", `data: {"type":"usage","used":3}`, "id: 6-0", "event: gap", `data: {"detail":*`)
	sub.push(api.Event{ID: "7-0", Type: "reset", Data: []byte(`{}`)}, api.Event{Overflow: true})
	close(sub.done)
	expect(t, in, "id: 7-0", "event: reset", "data: {}", "event: overflow")
	for line := range in {
		if line != "" && !strings.HasPrefix(line, "data:") {
			t.Fatalf("line %q after overflow", line)
		}
	}
	select {
	case <-sub.closed:
	case <-time.After(time.Second):
		t.Fatal("subscription not closed")
	}
}

// TestEventsBurst: a burst longer than one write goes out whole and in
// order.
func TestEventsBurst(t *testing.T) {
	sub := newQueueSub()
	var want []string
	for i := range 1000 {
		id := fmt.Sprintf("%d-0", i+1)
		sub.push(api.Event{ID: id, Type: "usage", Data: []byte(`{}`)})
		want = append(want, "id: "+id, "event: usage", "data: {}")
	}
	srv := eventsServer(t, &queueFeed{sub: sub, replayed: true})
	_, in := lines(t, srv)
	expect(t, in, want...)
}

func TestEventsReplayHasNoHello(t *testing.T) {
	sub := newQueueSub()
	sub.push(api.Event{ID: "9-1", Type: "usage", Data: []byte(`{}`)})
	srv := eventsServer(t, &queueFeed{sub: sub, replayed: true})
	_, in := lines(t, srv)
	expect(t, in, "id: 9-1")
}

func TestEventsUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name string
		feed api.Feed
	}{
		{"no feed", nil},
		{"feed down", &queueFeed{err: fmt.Errorf("redis: %w", quota.ErrUnavailable)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := eventsServer(t, tc.feed)
			req, _ := http.NewRequest("GET", srv.URL+"/v1/events", nil)
			req.Header.Set("Authorization", "Bearer k")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("%d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
		})
	}
}
