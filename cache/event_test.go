package cache

import (
	"reflect"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

func TestEventRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	events := []quota.Event{
		{ID: "E1", Kind: quota.EventConsume, Subject: "user:1", Meter: "credits", Start: start, End: start.AddDate(0, 1, 0), Amount: 5, At: at},
		{ID: "E2", Kind: quota.EventConsume, Subject: "anon:x", Meter: "tokens.output", Start: time.Unix(0, 0).UTC(), Amount: 1 << 40, Enforce: true,
			IdempotencyKey: `k "quoted" \ <tag> é`, RequestHash: "abc", At: at,
			Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1000, OutputTokens: 20, CacheReadTokens: 7}},
		{ID: "E3", Kind: quota.EventReset, Subject: "user:2", Meter: "m", Start: start, End: start.Add(time.Hour), At: at},
		{ID: "E4", Kind: quota.EventProvision, Subject: "user:3", At: at, Settings: &quota.Subject{ID: "user:3", Plan: "free", CycleAnchor: at}},
	}
	for _, e := range events {
		got, err := decodeEvent(string(appendEvent(nil, &e)))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, e) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, e)
		}
	}
	for _, bad := range []string{"", "2\x1fx", "1\x1fonly-two", string(appendEvent(nil, &events[0])) + "\x1fextra"} {
		if _, err := decodeEvent(bad); err == nil {
			t.Fatalf("decodeEvent(%q) accepted it", bad)
		}
	}
}

func TestRecords(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	a := quota.Event{ID: "A", Kind: quota.EventConsume, Subject: "user:1", Meter: "credits", Amount: 5, At: at}
	b := quota.Event{ID: "B", Kind: quota.EventReset, Subject: "user:2", Meter: "credits", At: at}
	raw := string(appendEvent(nil, &a)) + "\x1f42\x1e" + string(appendEvent(nil, &b)) + "\x1f0"
	got, err := appendRecords(nil, raw)
	if err != nil {
		t.Fatal(err)
	}
	a.Used = 42
	if !reflect.DeepEqual(got, []quota.Event{a, b}) {
		t.Fatalf("records:\n got %+v\nwant %+v", got, []quota.Event{a, b})
	}
	for _, bad := range []string{"", string(appendEvent(nil, &a)), raw + "\x1e", string(appendEvent(nil, &a)) + "\x1fx"} {
		if kept, err := appendRecords([]quota.Event{b}, bad); err == nil || len(kept) != 1 {
			t.Fatalf("appendRecords(%q): %v, %d events; want an error and the one event it was given", bad, err, len(kept))
		}
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(string(appendEvent(nil, &quota.Event{ID: "E", Kind: quota.EventConsume, Subject: "user:1", Amount: 3, At: time.Unix(5, 0)})))
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = decodeEvent(s) // must not panic
		_, _ = appendRecords(nil, s)
	})
}
