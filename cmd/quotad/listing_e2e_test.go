package main_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/internal/testenv"
)

// listPages pages through GET /v1/subjects with query (and limit), and
// returns the rows in the order given.
func (q *quotad) listPages(tb testing.TB, query string, limit int) []map[string]any {
	tb.Helper()
	var rows []map[string]any
	cursor := ""
	for pages := 0; ; pages++ {
		path := fmt.Sprintf("/v1/subjects?limit=%d&%s", limit, query)
		if cursor != "" {
			path += "&cursor=" + url.QueryEscape(cursor)
		}
		status, page := q.call(tb, "GET", path, "")
		if status != 200 {
			tb.Fatalf("GET %s: %d %v", path, status, page)
		}
		got := page["subjects"].([]any)
		if len(got) > limit {
			tb.Fatalf("GET %s: %d subjects, over the limit", path, len(got))
		}
		for _, r := range got {
			rows = append(rows, r.(map[string]any))
		}
		next, more := page["next_cursor"].(string)
		if !more {
			return rows
		}
		if pages > 1000 {
			tb.Fatal("the listing does not end")
		}
		cursor = next
	}
}

func ids(rows []map[string]any) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r["subject"].(string)
	}
	return out
}

// credits answers a listed row's credits meter.
func credits(tb testing.TB, row map[string]any) map[string]any {
	tb.Helper()
	for _, m := range row["meters"].([]any) {
		if m := m.(map[string]any); m["meter"] == "credits" {
			return m
		}
	}
	tb.Fatalf("%v has no credits meter", row)
	return nil
}

// TestSubjectListing: paging through GET /v1/subjects returns every
// subject once, in the order asked (by id, by usage, by share of the
// limit), with each row's live numbers; a prefix narrows it; bad input is
// a 400.
func TestSubjectListing(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_FLUSH_INTERVAL=100ms", "QUOTAD_LISTING_REFRESH=100ms")

	// 23 users with distinct usage (user:l05 and user:l06 tie), 4
	// anonymous visitors; user:l20 is on pro (share small for its usage),
	// user:l21 was reset (nothing used), user:l22 exists with no usage.
	used := map[string]int64{}
	for i := range 23 {
		id := fmt.Sprintf("user:l%02d", i)
		amount := int64(10 + 7*i)
		if i == 6 {
			amount = used["user:l05"]
		}
		used[id] = amount
	}
	for i := range 4 {
		used[fmt.Sprintf("anon:v%d", i)] = int64(100 + i)
	}
	if status, v := q.call(t, "PUT", "/v1/subjects/user:l20", `{"plan":"pro"}`); status != 200 {
		t.Fatalf("put plan: %d %v", status, v)
	}
	if status, v := q.call(t, "PUT", "/v1/subjects/user:l22", `{}`); status != 200 {
		t.Fatalf("put subject: %d %v", status, v)
	}
	for id, amount := range used {
		if id == "user:l22" {
			continue
		}
		if _, status, ok := q.consume(fmt.Sprintf(`{"subject":%q,"amount":%d}`, id, amount)); !ok {
			t.Fatalf("consume %s: %d", id, status)
		}
	}
	used["user:l22"] = 0
	for id, amount := range used {
		waitFlushed(t, pg, id, amount)
	}
	if status, v := q.call(t, "POST", "/v1/subjects/user:l21/reset", ""); status != 200 {
		t.Fatalf("reset: %d %v", status, v)
	}
	used["user:l21"] = 0
	waitCounter(t, pg, "user:l21", 0)
	// The orders by usage read the rollup of the flushed counters.
	for id, amount := range used {
		waitRolledUp(t, pg, id, amount)
	}
	all := make([]string, 0, len(used))
	for id := range used {
		all = append(all, id)
	}
	slices.Sort(all)

	t.Run("by id", func(t *testing.T) {
		rows := q.listPages(t, "order=id", 4)
		if got := ids(rows); !slices.Equal(got, all) {
			t.Fatalf("by id:\n got %v\nwant %v", got, all)
		}
		for _, r := range rows {
			m := credits(t, r)
			if int64(m["used"].(float64)) != used[r["subject"].(string)] {
				t.Errorf("%s: used %v, want %d", r["subject"], m["used"], used[r["subject"].(string)])
			}
		}
		if got := ids(q.listPages(t, "", 50)); !slices.Equal(got, all) {
			t.Fatalf("default order: %v", got)
		}
	})

	t.Run("prefix", func(t *testing.T) {
		got := ids(q.listPages(t, "prefix=user:l1", 3))
		want := []string{"user:l10", "user:l11", "user:l12", "user:l13", "user:l14", "user:l15", "user:l16", "user:l17", "user:l18", "user:l19"}
		if !slices.Equal(got, want) {
			t.Fatalf("prefix user:l1: %v", got)
		}
		if got := ids(q.listPages(t, "prefix=anon:&order=used", 3)); !slices.Equal(got, []string{"anon:v3", "anon:v2", "anon:v1", "anon:v0"}) {
			t.Fatalf("prefix anon: by used: %v", got)
		}
		if got := q.listPages(t, "prefix=org:", 3); len(got) != 0 {
			t.Fatalf("prefix org: %v", got)
		}
	})

	// Most used first, ties by id from the last; then those with nothing
	// used, by id.
	byKey := func(key func(id string) float64) []string {
		want := slices.Clone(all)
		slices.SortFunc(want, func(a, b string) int {
			ka, kb := key(a), key(b)
			switch {
			case ka > 0 && kb > 0 && ka != kb:
				if ka > kb {
					return -1
				}
				return 1
			case ka > 0 && kb > 0:
				return strings.Compare(b, a)
			case ka > 0:
				return -1
			case kb > 0:
				return 1
			}
			return strings.Compare(a, b)
		})
		return want
	}
	t.Run("by used", func(t *testing.T) {
		want := byKey(func(id string) float64 { return float64(used[id]) })
		for _, limit := range []int{1, 4, 200} {
			if got := ids(q.listPages(t, "order=used", limit)); !slices.Equal(got, want) {
				t.Fatalf("by used, %d a page:\n got %v\nwant %v", limit, got, want)
			}
		}
	})
	t.Run("by share", func(t *testing.T) {
		limit := func(id string) float64 {
			switch {
			case id == "user:l20":
				return 10_000
			case strings.HasPrefix(id, "anon:"):
				return 1_000
			}
			return 2_500
		}
		want := byKey(func(id string) float64 { return float64(used[id]) / limit(id) })
		rows := q.listPages(t, "order=share&meter=credits", 5)
		if got := ids(rows); !slices.Equal(got, want) {
			t.Fatalf("by share:\n got %v\nwant %v", got, want)
		}
		for _, r := range rows {
			m := credits(t, r)
			if share := m["share"].(float64); share != m["used"].(float64)/m["limit"].(float64) {
				t.Errorf("%s: share %v of %v", r["subject"], share, m)
			}
		}
	})

	t.Run("live numbers", func(t *testing.T) {
		// A consume Postgres does not have yet shows in the row at once.
		if _, status, ok := q.consume(`{"subject":"user:l00","amount":5}`); !ok {
			t.Fatalf("consume: %d", status)
		}
		rows := q.listPages(t, "prefix=user:l00", 10)
		if len(rows) != 1 || credits(t, rows[0])["used"] != float64(used["user:l00"]+5) {
			t.Fatalf("after a consume: %v", rows)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		_, first := q.call(t, "GET", "/v1/subjects?limit=2&order=id", "")
		idCursor := url.QueryEscape(first["next_cursor"].(string))
		for _, tc := range []struct {
			name, query, field string
		}{
			{"garbage cursor", "cursor=nope", "cursor"},
			{"cursor not base64", "cursor=" + url.QueryEscape("a b"), "cursor"},
			{"cursor of another order", "order=used&cursor=" + idCursor, "cursor"},
			{"cursor of another prefix", "prefix=user:&cursor=" + idCursor, "cursor"},
			{"cursor of a bad subject", "cursor=" + encodeJSONCursor(`{"o":"id","m":"credits","p":"","s":"bob"}`), "cursor"},
			{"cursor with a NUL", "cursor=" + encodeJSONCursor(`{"o":"id","m":"credits","p":"","s":"user:\u0000"}`), "cursor"},
			{"limit 0", "limit=0", "limit"},
			{"limit too big", "limit=201", "limit"},
			{"limit not a number", "limit=ten", "limit"},
			{"empty limit", "limit=", "limit"},
			{"unknown order", "order=name", "order"},
			{"empty order", "order=", "order"},
			{"bad meter", "order=used&meter=Nope!", "meter"},
			{"bad prefix", "prefix=user:%00", "prefix"},
			{"long prefix", "prefix=" + strings.Repeat("a", 134), "prefix"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, p := q.call(t, "GET", "/v1/subjects?"+tc.query, "")
				if status != 400 || p["field"] != tc.field {
					t.Fatalf("%s: %d %v, want 400 naming %s", tc.query, status, p, tc.field)
				}
			})
		}
		status, key := q.call(t, "POST", "/v1/keys", `{"scope":"service"}`)
		if status != 201 {
			t.Fatalf("mint: %d %v", status, key)
		}
		if status, _, _ := q.do(t, "GET", "/v1/subjects", key["key"].(string), "", nil); status != 403 {
			t.Fatalf("a service key lists subjects: %d", status)
		}
	})
}

func encodeJSONCursor(s string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

// waitCounter waits until subject's credits counters in Postgres sum to
// want.
func waitCounter(tb testing.TB, pg, subject string, want int64) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _, _ := pgTotals(tb, pg, subject)
		if c == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: counters %d in postgres, want %d", subject, c, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitRolledUp waits until the listing's rollup (subject_usage) holds want
// credits for subject (none: 0).
func waitRolledUp(tb testing.TB, pg, subject string, want int64) {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), pg)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int64
		err := conn.QueryRow(context.Background(),
			`SELECT coalesce(sum(used), 0) FROM subject_usage WHERE subject = $1 AND meter = 'credits'`, subject).Scan(&got)
		if err != nil {
			tb.Fatal(err)
		}
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: subject_usage %d, want %d", subject, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSubjectHistory: a subject's usage per day adds up to the consumes
// made, with the days without usage as 0; its ledger pages back through
// every event once, latest first; a subject never seen has neither and
// gets nothing stored.
func TestSubjectHistory(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_FLUSH_INTERVAL=100ms")
	const subject = "user:hist"
	var total int64
	var keys []string
	for i := range 11 {
		key := fmt.Sprintf("msg-%d", i)
		body := fmt.Sprintf(`{"subject":%q,"amount":%d,"idempotency_key":%q}`, subject, 3+i, key)
		if _, status, ok := q.consume(body); !ok {
			t.Fatalf("consume: %d", status)
		}
		total += int64(3 + i)
		keys = append(keys, key)
	}
	status, rsv := q.call(t, "POST", "/v1/reservations", `{"subject":"user:hist","amount":20}`)
	if status != 201 {
		t.Fatalf("reserve: %d %v", status, rsv)
	}
	if status, v := q.call(t, "POST", "/v1/reservations/"+rsv["id"].(string)+"/commit", `{"amount":17}`); status != 200 {
		t.Fatalf("commit: %d %v", status, v)
	}
	total += 17
	if _, status, ok := q.consume(`{"subject":"user:hist","meter":"credits","amount":2,"mode":"enforce"}`); !ok {
		t.Fatalf("consume: %d", status)
	}
	total += 2
	waitFlushed(t, pg, subject, total)

	// Usage of a day before, as the flusher would have written it, to
	// see it in its own day.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	threeDaysAgo := today.AddDate(0, 0, -3).Add(23*time.Hour + 59*time.Minute)
	if _, err := conn.Exec(ctx, `INSERT INTO usage_ledger (event_id, kind, subject, meter, period_start, amount, created_at)
		VALUES ('00000000000PASTEVENT000001', 'consume', 'user:past', 'credits', $1, 40, $2)`, today.AddDate(0, -1, 0), threeDaysAgo); err != nil {
		t.Fatal(err)
	}

	t.Run("usage", func(t *testing.T) {
		for _, days := range []int{30, 90} {
			status, s := q.call(t, "GET", fmt.Sprintf("/v1/subjects/user:hist/usage?days=%d", days), "")
			if status != 200 {
				t.Fatalf("usage: %d %v", status, s)
			}
			series := s["days"].([]any)
			if len(series) != days || s["meter"] != "credits" || s["total"] != float64(total) {
				t.Fatalf("usage over %d days: %v", days, s)
			}
			var sum float64
			for i, d := range series {
				d := d.(map[string]any)
				sum += d["used"].(float64)
				if want := today.AddDate(0, 0, i-days+1).Format(time.DateOnly); d["day"] != want {
					t.Fatalf("day %d is %v, want %s", i, d["day"], want)
				}
				if i < days-1 && d["used"] != 0.0 {
					t.Fatalf("usage on %v: %v", d["day"], d["used"])
				}
			}
			if sum != float64(total) {
				t.Fatalf("the days sum to %v, want %d", sum, total)
			}
		}
		_, s := q.call(t, "GET", "/v1/subjects/user:past/usage?meter=credits&days=7", "")
		series := s["days"].([]any)
		for i, d := range series {
			want := 0.0
			if i == 3 { // three days before today, the last of seven
				want = 40
			}
			if d.(map[string]any)["used"] != want {
				t.Fatalf("user:past, 7 days: %v", series)
			}
		}
		_, s = q.call(t, "GET", "/v1/subjects/user:hist/usage?meter=tokens", "")
		if len(s["days"].([]any)) != 30 || s["total"] != 0.0 {
			t.Fatalf("another meter: %v", s)
		}
	})

	t.Run("ledger", func(t *testing.T) {
		var events []map[string]any
		cursor := ""
		for pages := 0; ; pages++ {
			path := "/v1/subjects/user:hist/ledger?limit=4"
			if cursor != "" {
				path += "&cursor=" + cursor
			}
			status, page := q.call(t, "GET", path, "")
			if status != 200 || page["subject"] != subject {
				t.Fatalf("ledger: %d %v", status, page)
			}
			for _, e := range page["events"].([]any) {
				events = append(events, e.(map[string]any))
			}
			next, more := page["next_cursor"].(string)
			if !more {
				break
			}
			if pages > 100 {
				t.Fatal("the ledger does not end")
			}
			cursor = next
		}
		if len(events) != 13 {
			t.Fatalf("%d events, want 13: %v", len(events), events)
		}
		var sum float64
		seen := map[string]bool{}
		var gotKeys []string
		for i, e := range events {
			if seen[e["event_id"].(string)] {
				t.Fatalf("event %v twice", e["event_id"])
			}
			seen[e["event_id"].(string)] = true
			sum += e["amount"].(float64)
			if k, ok := e["idempotency_key"].(string); ok {
				gotKeys = append(gotKeys, k)
			}
			if i > 0 {
				prev, _ := time.Parse(time.RFC3339Nano, events[i-1]["at"].(string))
				at, _ := time.Parse(time.RFC3339Nano, e["at"].(string))
				if at.After(prev) {
					t.Fatalf("event %d (%v) is later than the one before (%v)", i, at, prev)
				}
			}
		}
		if sum != float64(total) {
			t.Fatalf("the ledger sums to %v, want %d", sum, total)
		}
		slices.Sort(gotKeys)
		slices.Sort(keys)
		if !slices.Equal(gotKeys, keys) {
			t.Fatalf("idempotency keys %v, want %v", gotKeys, keys)
		}
		if !slices.ContainsFunc(events, func(e map[string]any) bool { return e["reservation_id"] == rsv["id"] && e["amount"] == 17.0 }) {
			t.Fatalf("no event commits %v: %v", rsv["id"], events)
		}
		if events[0]["amount"] != 2.0 || events[0]["mode"] != "enforce" {
			t.Fatalf("latest event %v, want the enforce consume of 2", events[0])
		}
		_, page := q.call(t, "GET", "/v1/subjects/user:hist/ledger?meter=tokens", "")
		if len(page["events"].([]any)) != 0 {
			t.Fatalf("another meter's ledger: %v", page)
		}
	})

	t.Run("never seen", func(t *testing.T) {
		status, s := q.call(t, "GET", "/v1/subjects/anon:nobody/usage", "")
		if status != 200 || s["total"] != 0.0 || len(s["days"].([]any)) != 30 {
			t.Fatalf("usage of a subject never seen: %d %v", status, s)
		}
		status, page := q.call(t, "GET", "/v1/subjects/anon:nobody/ledger", "")
		if status != 200 || len(page["events"].([]any)) != 0 {
			t.Fatalf("ledger of a subject never seen: %d %v", status, page)
		}
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM subjects WHERE subject = 'anon:nobody'`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("a read stored the subject: %d %v", n, err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		_, first := q.call(t, "GET", "/v1/subjects/user:hist/ledger?limit=2", "")
		cursor := first["next_cursor"].(string)
		for _, tc := range []struct {
			name, path, field string
		}{
			{"bad subject", "/v1/subjects/bob/usage", "subject"},
			{"bad subject ledger", "/v1/subjects/bob/ledger", "subject"},
			{"days 0", "/v1/subjects/user:hist/usage?days=0", "days"},
			{"days 91", "/v1/subjects/user:hist/usage?days=91", "days"},
			{"bad meter", "/v1/subjects/user:hist/usage?meter=A!", "meter"},
			{"garbage cursor", "/v1/subjects/user:hist/ledger?cursor=zzz", "cursor"},
			{"cursor of another subject", "/v1/subjects/user:other/ledger?cursor=" + cursor, "cursor"},
			{"cursor of another meter", "/v1/subjects/user:hist/ledger?meter=credits&cursor=" + cursor, "cursor"},
			{"limit 0", "/v1/subjects/user:hist/ledger?limit=0", "limit"},
			{"limit 1000", "/v1/subjects/user:hist/ledger?limit=1000", "limit"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				status, p := q.call(t, "GET", tc.path, "")
				if status != 400 || p["field"] != tc.field {
					t.Fatalf("%s: %d %v, want 400 naming %s", tc.path, status, p, tc.field)
				}
			})
		}
	})
}
