package api

import (
	"bytes"
	"encoding/json"
	"reflect"
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
	})
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
}
