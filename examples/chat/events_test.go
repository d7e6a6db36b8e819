package chat_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestCreditsFallLive follows /me/events, the page's live credits, while
// the user chats.
func TestCreditsFallLive(t *testing.T) {
	base, _ := setup(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/me/events", nil)
	req.Header.Set("X-User", "dana")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	type event struct {
		name string
		data struct {
			Remaining int64  `json:"remaining"`
			Action    string `json:"action"`
		}
	}
	events := make(chan event)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		var e event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &e.data)
			case line == "":
				select {
				case events <- e:
				case <-ctx.Done():
					return
				}
				e = event{}
			}
		}
	}()
	next := func() event {
		t.Helper()
		select {
		case e, ok := <-events:
			if !ok {
				t.Fatal("the stream ended")
			}
			return e
		case <-ctx.Done():
			t.Fatal("no event in time")
		}
		return event{}
	}
	// The first event is the current credits, sent once the subscription
	// is live: every change from now on comes through.
	if e := next(); e.name != "credits" || e.data.Remaining != 2500 {
		t.Fatalf("first event %+v; want the current credits, 2500", e)
	}
	for i, remaining := 0, int64(2500); i < 2; i++ {
		_, a := send(t, http.DefaultClient, base, "tell me more", "X-User: dana")
		for {
			e := next()
			if e.name == "usage" {
				if e.data.Remaining != a.Remaining || e.data.Remaining >= remaining {
					t.Errorf("usage event: remaining %d; want %d (the chat's answer), below %d", e.data.Remaining, a.Remaining, remaining)
				}
				remaining = e.data.Remaining
				break
			}
		}
	}
}
