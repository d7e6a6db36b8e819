package client_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/client"
)

// TestEventsWire checks the client's reading of the Server-Sent Events
// wire format itself (comments, multi-line data, ids, retry advice, a
// reconnect's Last-Event-ID) against a scripted stream. It claims nothing
// about quotad's stream: TestEvents does, against quotad.
func TestEventsWire(t *testing.T) {
	var mu sync.Mutex
	var lastIDs []string
	conns := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns++
		n := conns
		lastIDs = append(lastIDs, r.Header.Get("Last-Event-ID"))
		mu.Unlock()
		if r.URL.Path != "/v1/subjects/user:1/events" || r.Header.Get("Accept") != "text/event-stream" || r.Header.Get("Authorization") != "Bearer k" {
			http.Error(w, "bad request "+r.URL.Path, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		switch n {
		case 1:
			fmt.Fprint(w, ": heartbeat\n\nretry: 10\n\n")
			fmt.Fprint(w, "id: 1-0\nevent: usage\ndata: {\"subject\":\"user:1\",\n")
			fmt.Fprint(w, "data: \"used\":5,\"remaining\":95}\n\n")
			fmt.Fprint(w, "id: 2-0\r\nevent: reset\r\ndata: {\"type\":\"reset\",\"subject\":\"user:1\",\"remaining\":100}\r\n\r\n")
			fmt.Fprint(w, "id: 3-0\nevent: usage\ndata: {\"subject\":\"us") // cut mid-event: dropped
		case 2:
			fmt.Fprint(w, "event: future-kind\ndata: not json\n\n")
			fmt.Fprint(w, "event: snapshot\ndata: {\"subject\":\"user:1\",\"plan\":\"free\",\"meters\":[{\"meter\":\"credits\",\"used\":6,\"limit\":100,\"remaining\":94},{\"meter\":\"requests\",\"used\":1,\"limit\":10,\"remaining\":9}]}\n\n")
			fmt.Fprint(w, "event: overflow\ndata: {\"detail\":\"x\"}\n\n")
			fmt.Fprint(w, "id: 4-0\nevent: usage\ndata: {\"subject\":\"user:1\",\"used\":7,\"remaining\":93}\n\n")
			w.(http.Flusher).Flush()
			<-r.Context().Done() // stay open until the client closes
		default:
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"type":"about:blank","title":"Forbidden","status":403,"detail":"no"}`)
		}
	}))
	defer srv.Close()

	c := client.New(srv.URL, "k", fast)
	ev := c.Events(context.Background(), "user:1")
	var got []string
	for range 5 {
		if !ev.Next() {
			t.Fatalf("Next = false after %v: %v", got, ev.Err())
		}
		ch := ev.Change()
		got = append(got, fmt.Sprintf("%s %s %d %d %s", ch.Type, ch.Meter, ch.Used, ch.Remaining, ev.LastEventID()))
	}
	want := []string{"usage  5 95 1-0", "reset  0 100 2-0", "snapshot credits 6 94 2-0", "snapshot requests 1 9 2-0", "usage  7 93 4-0"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("changes %q; want %q", got, want)
	}
	mu.Lock()
	if fmt.Sprint(lastIDs) != fmt.Sprint([]string{"", "2-0"}) {
		t.Errorf("Last-Event-ID of the connections %q; want none, then 2-0", lastIDs)
	}
	mu.Unlock()

	// Close from another goroutine ends a blocked Next, without error.
	time.AfterFunc(50*time.Millisecond, func() { ev.Close() })
	if ev.Next() || ev.Err() != nil {
		t.Errorf("Next after Close: err %v; want false and no error", ev.Err())
	}

	// A refusal ends the subscription with the problem.
	ev = c.Events(context.Background(), "user:1", client.EventsAfter("4-0"))
	if ev.Next() || !client.IsForbidden(ev.Err()) {
		t.Errorf("refused subscription: err %v; want 403", ev.Err())
	}
}
