package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

// The fast path must agree with encoding/json wherever it answers.
func FuzzFastDecode(f *testing.F) {
	for _, s := range []string{
		`{"subject":"user:1","amount":5}`, `{"subject":"user:1","meter":"credits"}`, ` { } `, `{"amount":-0}`,
		`{"amount":01}`, `{"amount":1.0}`, `{"subject":"a\"b"}`, `{"subject":"é"}`, `{"amount":999999999999999999}`,
		`{"mode":"enforce","idempotency_key":"k","amount":3,"subject":"anon:x"}`, `{"subject":"user:1",}`, `{"x":1}`,
		`{"subject":"user:1","usage":{"model":"claude-3-5-sonnet","input_tokens":1000,"output_tokens":200}}`,
		`{"usage":{"model":"m","cache_write_tokens":1,"cache_read_tokens":2},"subject":"u:1"}`, `{"usage":{}}`,
		`{"usage":{"model":"m"},"usage":{"input_tokens":3}}`, `{"usage":null}`, `{"usage":{"x":1}}`, `{"usage":{"model":1}}`,
		`{"usage":{"input_tokens":"1"}}`, `{"usage":{"model":"m","input_tokens":-5}}`, `{"usage":{"usage":{}}}`, `{"amount":{}}`,
		`{"subject":"user:1","amount":500,"ttl_seconds":60,"idempotency_key":"k1"}`, `{"ttl_seconds":1.5}`, `{"ttl_seconds":"60"}`,
		`{"subject":"u:1","usage":{"model":"m","input_tokens":10},"ttl_seconds":3600}`,
		`{"events":[{"subject":"u:1","amount":2},{"subject":"u:2","usage":{"model":"m"},"idempotency_key":"k"}]}`, `{"events":[]}`,
		`{"events":[{},]}`, `{"events":[{}] }`, `{"events":null}`, `{"events":[{"amount":1}],"events":[]}`, `{"events":[[]]}`, `{"amount":3,"amount":4}`, `{"usage":{},"amount":1}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var fc quota.CheckRequest
		if fastCheck([]byte(body), &fc) {
			var sc quota.CheckRequest
			if err := decodeReader(strings.NewReader(body), &sc); err != nil {
				t.Fatalf("fast path took %q, encoding/json refuses it: %v", body, err)
			}
			if fc != sc {
				t.Fatalf("%q: fast %+v, encoding/json %+v", body, fc, sc)
			}
		}
		var fr quota.ConsumeRequest
		if fastConsume([]byte(body), &fr) {
			var sr quota.ConsumeRequest
			if err := decodeReader(strings.NewReader(body), &sr); err != nil {
				t.Fatalf("fast path took %q, encoding/json refuses it: %v", body, err)
			}
			if !reflect.DeepEqual(fr, sr) {
				t.Fatalf("%q: fast %+v (usage %+v), encoding/json %+v (usage %+v)", body, fr, fr.Usage, sr, sr.Usage)
			}
		}
		agrees(t, body, fastReserve)
		agrees(t, body, fastBatch)
		agrees(t, body, fastCommit)
	})
}

// agrees fails when fast takes body and encoding/json (strict) refuses it
// or reads it differently.
func agrees[Req any](t *testing.T, body string, fast func([]byte, *Req) bool) {
	var fr Req
	if !fast([]byte(body), &fr) {
		return
	}
	var sr Req
	if err := decodeReader(strings.NewReader(body), &sr); err != nil {
		t.Fatalf("fast path took %q as %T, encoding/json refuses it: %v", body, fr, err)
	}
	if !reflect.DeepEqual(fr, sr) {
		t.Fatalf("%q: fast %+v, encoding/json %+v", body, fr, sr)
	}
}

func TestAppendedAnswersMatchEncodingJSON(t *testing.T) {
	reset := quota.Time{Time: time.Date(2026, 12, 27, 10, 0, 0, 0, time.UTC)}
	checks := []quota.CheckResult{
		{Subject: "user:42", Meter: "credits", Allowed: true, Used: 7, Limit: 2500, Remaining: 2493, ResetsAt: reset, Plan: "free"},
		{Subject: `user:"odd\`, Meter: "m", Used: -1, Limit: 0},
	}
	for _, c := range checks {
		want, _ := json.Marshal(c)
		if got := appendCheck(nil, &c); !bytes.Equal(bytes.TrimSpace(got), want) {
			t.Errorf("check:\n got %s\nwant %s", got, want)
		}
	}
	consumes := []quota.ConsumeResponse{
		{Applied: true, Amount: 360, Used: 360, Limit: 2500, Remaining: 2140, ResetsAt: reset},
		{Duplicate: true, Exceeded: true, Amount: 1 << 40},
	}
	for _, c := range consumes {
		want, _ := json.Marshal(c)
		if got := appendConsume(nil, &c); !bytes.Equal(bytes.TrimSpace(got), want) {
			t.Errorf("consume:\n got %s\nwant %s", got, want)
		}
	}
	expires := quota.Time{Time: time.Date(2026, 12, 3, 13, 5, 0, 0, time.FixedZone("x", 3600))}
	reserves := []quota.ReserveResponse{
		{ID: "rsv_abc<&>", Granted: true, Subject: "user:42", Meter: "credits", Amount: 500, ExpiresAt: &expires, Used: 7, Reserved: 500, Limit: 2500, Remaining: 1993, ResetsAt: reset},
		{Subject: "anon:\u2028x", Meter: "m", Amount: 1 << 50, Used: 1<<53 + 1, Limit: 1 << 53},
		{Granted: true, Duplicate: true, ExpiresAt: &quota.Time{}},
	}
	for _, r := range reserves {
		sameJSON(t, "reserve", appendReserve(nil, &r), r)
	}
	p := &Problem{Type: "about:blank", Title: "Bad Request", Status: 400, Detail: "amount <must> be", Field: "events[1].amount"}
	batches := []batchAnswer{
		{Results: []batchItem{{ConsumeResponse: &consumes[0]}, {Error: p}, {ConsumeResponse: &consumes[1]}, {Error: &Problem{Type: "about:blank", Title: "Service Unavailable", Status: 503}}}},
		{Results: []batchItem{}},
	}
	for _, r := range batches {
		sameJSON(t, "batch", appendBatch(nil, &r), r)
	}
	commits := []quota.CommitResponse{
		{ConsumeResponse: consumes[0], ID: "rsv_x", Reservation: "committed"},
		{ConsumeResponse: consumes[1], ID: `rsv_"y"`, Reservation: "expired"},
	}
	for _, c := range commits {
		sameJSON(t, "commit", appendCommit(nil, &c), c)
	}
}

// sameJSON fails unless got is one JSON value, with the fields in
// encoding/json's order, that decodes to what v encodes to (strings may
// escape differently: encoding/json escapes <, > and & for HTML).
func sameJSON(t *testing.T, what string, got []byte, v any) {
	t.Helper()
	want, _ := json.Marshal(v)
	var g, w any
	dec := json.NewDecoder(bytes.NewReader(got))
	dec.UseNumber()
	if err := dec.Decode(&g); err != nil || dec.More() {
		t.Fatalf("%s: %s is not one JSON value: %v", what, got, err)
	}
	dec = json.NewDecoder(bytes.NewReader(want))
	dec.UseNumber()
	_ = dec.Decode(&w)
	if !reflect.DeepEqual(g, w) || !sameKeys(got, want) {
		t.Errorf("%s:\n got %s\nwant %s", what, got, want)
	}
}

// sameKeys says whether a and b name the same top-level keys in the same
// order.
func sameKeys(a, b []byte) bool {
	ka, _, okA := members(bytes.TrimSpace(a))
	kb, _, okB := members(b)
	return okA && okB && slices.Equal(ka, kb)
}

// BenchmarkReservationJSON: a reservation and its commit, read and
// answered by hand (fast) and by encoding/json (the strict path every
// body fell to before, and still falls to when the scanner gives up).
func BenchmarkReservationJSON(b *testing.B) {
	reserve := []byte(`{"subject":"user:hot-42","amount":5,"idempotency_key":"bench-0123456789abcdef"}`)
	commit := []byte(`{"amount":4}`)
	expires := quota.Time{Time: time.Date(2026, 12, 3, 13, 5, 0, 0, time.UTC)}
	granted := quota.ReserveResponse{ID: "rsv_dXNlcjpob3QtNDIfY3JlZGl0cx8xNzY0NTQ3MjAwHzE3NjcyMjU2MDAfNR8xNzY0NzY3MTAwMDAwHzAxMjM0NTY3ODlhYmNkZWY", Granted: true,
		Subject: "user:hot-42", Meter: "credits", Amount: 5, ExpiresAt: &expires, Used: 7, Reserved: 5, Limit: 1000000000, Remaining: 999999988, ResetsAt: expires}
	committed := quota.CommitResponse{ConsumeResponse: quota.ConsumeResponse{Applied: true, Amount: 4, Used: 11, Limit: 1000000000, Remaining: 999999989, ResetsAt: expires},
		ID: granted.ID, Reservation: "committed"}
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 1024)
		for b.Loop() {
			var r quota.ReserveRequest
			var c quota.CommitRequest
			if !fastReserve(reserve, &r) || !fastCommit(commit, &c) {
				b.Fatal("the fast path gave up")
			}
			buf = appendReserve(buf[:0], &granted)
			buf = appendCommit(buf[:0], &committed)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r quota.ReserveRequest
			var c quota.CommitRequest
			if decodeBytes(reserve, &r) != nil || decodeBytes(commit, &c) != nil {
				b.Fatal("refused")
			}
			var out bytes.Buffer
			enc := json.NewEncoder(&out)
			_ = enc.Encode(granted)
			_ = enc.Encode(committed)
		}
	})
}

// BenchmarkBatchJSON: a batch of 100 keyed consumes, read and answered by
// hand (fast) and by encoding/json.
func BenchmarkBatchJSON(b *testing.B) {
	var body bytes.Buffer
	body.WriteString(`{"events":[`)
	var out batchAnswer
	resets := quota.Time{Time: time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)}
	for i := range 100 {
		if i > 0 {
			body.WriteByte(',')
		}
		fmt.Fprintf(&body, `{"subject":"user:hot-%d","amount":1,"idempotency_key":"bench-%016x"}`, i, i)
		out.Results = append(out.Results, batchItem{ConsumeResponse: &quota.ConsumeResponse{Applied: true, Amount: 1, Used: int64(1000 + i), Limit: 1000000000, Remaining: 999999000, ResetsAt: resets}})
	}
	body.WriteString(`]}`)
	in := body.Bytes()
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		buf := make([]byte, 0, 32<<10)
		for b.Loop() {
			var req batchRequest
			if !fastBatch(in, &req) {
				b.Fatal("the fast path gave up")
			}
			buf = appendBatch(buf[:0], &out)
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var req batchRequest
			if err := decodeBytes(in, &req); err != nil {
				b.Fatal(err)
			}
			var w bytes.Buffer
			_ = json.NewEncoder(&w).Encode(out)
		}
	})
}
