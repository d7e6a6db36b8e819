package cache

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

func TestAppendConsumeEventMatchesJSON(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 123456789, time.UTC)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	ops := []quota.ConsumeOp{
		{Key: quota.CounterKey{Subject: "user:1", Meter: "credits", Start: start, End: start.AddDate(0, 1, 0)}, Amount: 5, EventID: "E1", At: at},
		{Key: quota.CounterKey{Subject: "anon:x", Meter: "tokens.output", Start: time.Unix(0, 0).UTC()}, Amount: 1, Enforce: true,
			IdempotencyKey: "k \"quoted\" \\ <tag> \x01 é \xff", RequestHash: "abc", EventID: "E2", At: at.In(time.FixedZone("x", 3600)),
			Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1000, OutputTokens: 20, CacheReadTokens: 7}},
	}
	for _, op := range ops {
		want := quota.Event{ID: op.EventID, Kind: quota.EventConsume, Subject: op.Key.Subject, Meter: op.Key.Meter,
			Start: op.Key.Start, End: op.Key.End, Amount: op.Amount, Enforce: op.Enforce, Usage: op.Usage,
			IdempotencyKey: op.IdempotencyKey, RequestHash: op.RequestHash, At: op.At}
		wantJSON, _ := json.Marshal(want)
		var fromStd, fromOurs quota.Event
		if err := json.Unmarshal(wantJSON, &fromStd); err != nil {
			t.Fatal(err)
		}
		got := appendConsumeEvent(nil, &op)
		if err := json.Unmarshal(got, &fromOurs); err != nil {
			t.Fatalf("%s: %v", got, err)
		}
		if !reflect.DeepEqual(fromStd, fromOurs) {
			t.Fatalf("decoded differently:\n ours %s\n std  %s", got, wantJSON)
		}
	}
}
