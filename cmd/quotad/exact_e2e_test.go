package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/internal/testenv"
)

// exact sends a JSON request with the admin key and decodes the answer
// with its numbers as written (json.Number), so that counts past 2^53 are
// compared digit for digit.
func (q *quotad) exact(tb testing.TB, method, path, body string) (int, map[string]any) {
	tb.Helper()
	var r io.Reader
	ct := ""
	if body != "" {
		r, ct = strings.NewReader(body), "application/json"
	}
	status, _, b := q.do(tb, method, path, adminKey, ct, r)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		tb.Fatalf("%s %s: answer %q is not a JSON object: %v", method, path, b, err)
	}
	return status, m
}

// wantInts fails unless each named field of m is the integer written in
// want, digit for digit.
func wantInts(tb testing.TB, what string, m map[string]any, want map[string]string) {
	tb.Helper()
	for field, w := range want {
		got, ok := m[field].(json.Number)
		if !ok || string(got) != w {
			tb.Errorf("%s: %s = %v, want %s (answer %v)", what, field, m[field], w, m)
		}
	}
}

// seedCounter stores a subject's lifetime credits usage in Postgres, as a
// flush would have, before Redis has a copy: the first request loads it.
func seedCounter(tb testing.TB, pg, subject string, used int64) {
	tb.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used)
		VALUES ($1, 'credits', 'epoch', NULL, $2)`, subject, used); err != nil {
		tb.Fatal(err)
	}
}

// TestExactCounts: counts past 2^53 (where a double stops being exact)
// and up to the largest limit are answered exactly, and enforced exactly,
// by check, consume (record, enforce, a repeat), reservations and the
// subject view.
func TestExactCounts(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_FLUSH_INTERVAL=100ms")
	setup := func(t *testing.T, subject string, limit, used int64) {
		seedCounter(t, pg, subject, used) // first: the PUT's answer loads the counter
		status, v := q.call(t, "PUT", "/v1/subjects/"+subject, fmt.Sprintf(`{"limits":{"credits":{"limit":%d,"period":"none"}}}`, limit))
		if status != 200 {
			t.Fatalf("set limit: %d %v", status, v)
		}
	}

	t.Run("past 2^53", func(t *testing.T) {
		const s = "user:exact-2p53"
		// 2^53 - 1 is the last count a double holds with its neighbours.
		setup(t, s, 9007199254740993+2, 9007199254740991)
		_, c := q.exact(t, "POST", "/v1/check", `{"subject":"`+s+`","amount":2}`)
		wantInts(t, "check", c, map[string]string{"used": "9007199254740991", "remaining": "4"})
		_, r := q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":2,"idempotency_key":"k"}`)
		wantInts(t, "record to 2^53+1", r, map[string]string{"used": "9007199254740993", "remaining": "2"})
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":2,"idempotency_key":"k"}`)
		wantInts(t, "repeat", r, map[string]string{"used": "9007199254740993"})
		if r["duplicate"] != true {
			t.Fatalf("repeat: %v", r)
		}
		// Exactly at the limit: 2^53+1 + 2 = limit.
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":2,"mode":"enforce"}`)
		wantInts(t, "enforce to the limit", r, map[string]string{"used": "9007199254740995", "remaining": "0"})
		if r["applied"] != true {
			t.Fatalf("enforce to exactly the limit was refused: %v", r)
		}
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":1,"mode":"enforce"}`)
		if r["applied"] != false {
			t.Fatalf("enforce past the limit was applied: %v", r)
		}
		wantInts(t, "refused", r, map[string]string{"used": "9007199254740995"})
		_, v := q.exact(t, "GET", "/v1/subjects/"+s, "")
		wantInts(t, "view", v["meters"].([]any)[0].(map[string]any), map[string]string{"used": "9007199254740995", "limit": "9007199254740995"})
	})

	t.Run("maximum", func(t *testing.T) {
		const s = "user:exact-max"
		const limit = "1000000000000000000" // MaxLimit
		// Near 10^18 a double's neighbours are 128 apart.
		setup(t, s, 1_000_000_000_000_000_000, 999_997_000_000_000_001)
		_, c := q.exact(t, "POST", "/v1/check", `{"subject":"`+s+`","amount":1000000000000}`)
		wantInts(t, "check", c, map[string]string{"used": "999997000000000001", "limit": limit, "remaining": "2999999999999"})
		if c["allowed"] != true {
			t.Fatalf("check: %v", c)
		}
		status, h := q.exact(t, "POST", "/v1/reservations", `{"subject":"`+s+`","amount":1000000000000}`)
		if status != 201 {
			t.Fatalf("reserve: %d %v", status, h)
		}
		wantInts(t, "reserve", h, map[string]string{"used": "999997000000000001", "reserved": "1000000000000", "remaining": "1999999999999"})
		_, r := q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":1000000000000,"mode":"enforce"}`)
		wantInts(t, "enforce", r, map[string]string{"used": "999998000000000001", "reserved": "1000000000000", "remaining": "999999999999"})
		// used + reserved + amount = 10^18 + 1: one past the limit.
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":1000000000000,"mode":"enforce"}`)
		if r["applied"] != false {
			t.Fatalf("enforce one past the limit was applied: %v", r)
		}
		status, h2 := q.exact(t, "POST", "/v1/reservations", `{"subject":"`+s+`","amount":1000000000000}`)
		if status != 200 || h2["granted"] != false {
			t.Fatalf("reserve one past the limit: %d %v", status, h2)
		}
		wantInts(t, "refused reserve", h2, map[string]string{"used": "999998000000000001", "reserved": "1000000000000"})
		_, c = q.exact(t, "POST", "/v1/check", `{"subject":"`+s+`","amount":999999999999}`)
		if c["allowed"] != true {
			t.Fatalf("check to exactly the limit: %v", c)
		}
		_, c = q.exact(t, "POST", "/v1/check", `{"subject":"`+s+`","amount":1000000000000}`)
		if c["allowed"] != false {
			t.Fatalf("check one past the limit: %v", c)
		}
		_, m := q.exact(t, "POST", "/v1/reservations/"+h["id"].(string)+"/commit", `{"amount":999999999999}`)
		wantInts(t, "commit", m, map[string]string{"used": "999999000000000000", "reserved": "0", "remaining": "1000000000000"})
		_, m = q.exact(t, "POST", "/v1/reservations/"+h["id"].(string)+"/commit", `{"amount":999999999999}`)
		wantInts(t, "repeated commit", m, map[string]string{"used": "999999000000000000"})
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":1000000000001}`)
		if r["status"] == nil {
			t.Fatalf("an amount past 10^12 was taken: %v", r)
		}
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":1000000000000}`)
		wantInts(t, "record to the limit", r, map[string]string{"used": "1000000000000000000", "remaining": "0"})
		_, r = q.exact(t, "POST", "/v1/consume", `{"subject":"`+s+`","amount":7}`)
		wantInts(t, "record past the limit", r, map[string]string{"used": "1000000000000000007", "remaining": "0"})
		if r["exceeded"] != true {
			t.Fatalf("record past the limit: %v", r)
		}
		_, v := q.exact(t, "GET", "/v1/subjects/"+s, "")
		wantInts(t, "view", v["meters"].([]any)[0].(map[string]any), map[string]string{"used": "1000000000000000007", "limit": limit, "overage_used": "7", "remaining": "0"})
		waitFlushedExact(t, pg, s, 1_000_000_000_000_000_007)
	})
}

// waitFlushedExact waits until Postgres's counter of a seeded subject is
// want: the flusher carried every count over exactly.
func waitFlushedExact(tb testing.TB, pg, subject string, want int64) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _, _ := pgTotals(tb, pg, subject)
		if c == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s in postgres: counter %d, want %d", subject, c, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
