package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// These tests run the whole flow through the real binary: reservations
// (reserve, commit, release, expiry) and batch consumes, on two instances
// sharing one Redis and one Postgres.

// num reads an integer field of a decoded JSON answer.
func num(tb testing.TB, m map[string]any, field string) int64 {
	tb.Helper()
	v, ok := m[field].(float64)
	if !ok {
		tb.Fatalf("answer has no number %q: %v", field, m)
	}
	return int64(v)
}

// meterState reads a subject's credits meter through GET /v1/subjects.
func meterState(tb testing.TB, q *quotad, subject string) (used, reserved, remaining int64) {
	tb.Helper()
	status, v := q.call(tb, "GET", "/v1/subjects/"+subject, "")
	if status != 200 {
		tb.Fatalf("get %s: %d %v", subject, status, v)
	}
	for _, m := range v["meters"].([]any) {
		if m := m.(map[string]any); m["meter"] == "credits" {
			return num(tb, m, "used"), num(tb, m, "reserved"), num(tb, m, "remaining")
		}
	}
	tb.Fatalf("%s has no credits meter: %v", subject, v)
	return
}

// TestReservationsNeverOverAdmit: 200 concurrent reservations of 7 over two
// instances against a limit of 1,000 hold at most 1,000 (exactly 142 are
// granted: 994), and what they hold counts in check, consume and the
// subject view on either instance.
func TestReservationsNeverOverAdmit(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	const subject = "user:reserve-race"
	setLimit(t, a, subject, 1000)
	var mu sync.Mutex
	var granted, refused int
	var wg sync.WaitGroup
	for g := range 200 {
		wg.Go(func() {
			q := []*quotad{a, b}[g%2]
			status, v := q.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":7}`)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case status == 201 && v["granted"] == true && v["id"] != nil:
				granted++
			case status == 200 && v["granted"] == false && v["id"] == nil:
				refused++
			default:
				t.Errorf("reserve: %d %v", status, v)
			}
			if r := num(t, v, "reserved"); r > 1000 {
				t.Errorf("reserved %d past the limit", r)
			}
		})
	}
	wg.Wait()
	if granted != 142 || refused != 58 {
		t.Fatalf("granted %d, refused %d; want 142 and 58", granted, refused)
	}
	for _, q := range []*quotad{a, b} {
		if used, reserved, remaining := meterState(t, q, subject); used != 0 || reserved != 994 || remaining != 6 {
			t.Fatalf("subject view: used %d reserved %d remaining %d, want 0 994 6", used, reserved, remaining)
		}
		status, v := q.check(`{"subject":"` + subject + `","amount":7}`)
		if status != 200 || v["allowed"] != false || num(t, v, "reserved") != 994 {
			t.Fatalf("check of 7 with 994 held: %d %v", status, v)
		}
	}
	// Holds count against enforce consumes too; record consumes still apply.
	r, _, ok := a.consume(`{"subject":"` + subject + `","amount":7,"mode":"enforce"}`)
	if !ok || r.Applied {
		t.Fatalf("enforce consume of 7 with 994 of 1000 held: %+v", r)
	}
	r, _, ok = b.consume(`{"subject":"` + subject + `","amount":6,"mode":"enforce"}`)
	if !ok || !r.Applied || r.Used != 6 {
		t.Fatalf("enforce consume of 6 with 994 of 1000 held: %+v", r)
	}
}

// TestReservationLifecycle: a commit above the estimate is recorded in
// full and reaches the ledger with its reservation; commit and release
// answer their first result when repeated and 409 across each other; an
// unknown or forged id is a 404; the held amount is committed when the
// commit has no body.
func TestReservationLifecycle(t *testing.T) {
	pg := testenv.PostgresURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg)
	const subject = "user:lifecycle"
	status, res := a.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":10,"ttl_seconds":60}`)
	if status != 201 || res["granted"] != true || num(t, res, "reserved") != 10 || num(t, res, "amount") != 10 {
		t.Fatalf("reserve: %d %v", status, res)
	}
	expires, err := time.Parse(time.RFC3339, res["expires_at"].(string))
	if err != nil || expires.Before(time.Now().Add(50*time.Second)) || expires.After(time.Now().Add(70*time.Second)) {
		t.Fatalf("expires_at %v (%v), want about a minute from now", res["expires_at"], err)
	}
	id := res["id"].(string)

	status, c1 := a.call(t, "POST", "/v1/reservations/"+id+"/commit", `{"amount":50}`)
	if status != 200 || c1["reservation"] != "committed" || c1["applied"] != true || c1["duplicate"] != false ||
		num(t, c1, "amount") != 50 || num(t, c1, "used") != 50 || num(t, c1, "reserved") != 0 {
		t.Fatalf("commit of 50 over an estimate of 10: %d %v", status, c1)
	}
	status, c2 := a.call(t, "POST", "/v1/reservations/"+id+"/commit", `{"amount":50}`)
	if status != 200 || c2["duplicate"] != true || num(t, c2, "used") != 50 || num(t, c2, "amount") != 50 {
		t.Fatalf("second commit: %d %v", status, c2)
	}
	status, p := a.call(t, "DELETE", "/v1/reservations/"+id, "")
	if status != 409 || !strings.Contains(fmt.Sprint(p["detail"]), "committed") {
		t.Fatalf("release after commit: %d %v", status, p)
	}

	// Release, twice, then a commit: 409 saying it was released.
	_, res = a.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":30}`)
	id2 := res["id"].(string)
	if used, reserved, _ := meterState(t, a, subject); used != 50 || reserved != 30 {
		t.Fatalf("after a second reservation: used %d reserved %d, want 50 30", used, reserved)
	}
	for i := range 2 {
		status, r := a.call(t, "DELETE", "/v1/reservations/"+id2, "")
		if status != 200 || r["reservation"] != "released" || r["duplicate"] != (i == 1) || num(t, r, "reserved") != 0 || num(t, r, "used") != 50 {
			t.Fatalf("release %d: %d %v", i+1, status, r)
		}
	}
	status, p = a.call(t, "POST", "/v1/reservations/"+id2+"/commit", "")
	if status != 409 || !strings.Contains(fmt.Sprint(p["detail"]), "released") {
		t.Fatalf("commit after release: %d %v", status, p)
	}

	// No body: the held amount, priced from usage at reservation time.
	_, res = a.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","usage":{"model":"claude-3-5-sonnet","input_tokens":1000000,"output_tokens":0}}`)
	if num(t, res, "amount") != 360 {
		t.Fatalf("reservation priced from usage: %v", res)
	}
	status, c3 := a.call(t, "POST", "/v1/reservations/"+res["id"].(string)+"/commit", "")
	if status != 200 || num(t, c3, "amount") != 360 || num(t, c3, "used") != 410 {
		t.Fatalf("commit without a body: %d %v", status, c3)
	}

	forged := id[:len(id)-4] + "AAAA"
	for _, bad := range []string{"nope", forged, "rsv_" + strings.Repeat("A", 40)} {
		if status, p := a.call(t, "POST", "/v1/reservations/"+bad+"/commit", ""); status != 404 {
			t.Fatalf("commit of %q: %d %v", bad, status, p)
		}
		if status, p := a.call(t, "DELETE", "/v1/reservations/"+bad, ""); status != 404 {
			t.Fatalf("release of %q: %d %v", bad, status, p)
		}
	}
	for _, body := range []string{
		`{"subject":"` + subject + `","amount":1,"ttl_seconds":3601}`,
		`{"subject":"` + subject + `","amount":0}`,
		`{"subject":"` + subject + `","amount":5,"usage":{"model":"gpt-4o","input_tokens":1}}`,
		`{"subject":"bob","amount":5}`,
	} {
		if status, p := a.call(t, "POST", "/v1/reservations", body); status != 400 || p["field"] == nil {
			t.Fatalf("reserve %s: %d %v, want 400 naming a field", body, status, p)
		}
	}
	if _, reserved, _ := meterState(t, a, subject); reserved != 0 {
		t.Fatalf("bad requests left %d reserved", reserved)
	}

	// Postgres: 50 + 360 in the ledger, each row naming its reservation.
	waitFlushed(t, pg, subject, 410)
	conn, err := pgx.Connect(context.Background(), pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rsv string
	if err := conn.QueryRow(context.Background(), `SELECT reservation_id FROM usage_ledger WHERE subject = $1 AND amount = 50`, subject).Scan(&rsv); err != nil || rsv != id {
		t.Fatalf("ledger row of the commit: reservation %q (%v), want %q", rsv, err, id)
	}
}

// TestReservationExpiryAndRestart: a hold frees itself at its expiry on
// another instance, which the reserving instance is never asked about; a
// reservation made before its instance restarts commits afterwards, on
// either instance; an expired reservation still commits (the work
// happened) and says so; an idempotent reserve answers its first result.
func TestReservationExpiryAndRestart(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	const subject = "user:expiry"
	setLimit(t, a, subject, 100)
	status, res := a.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":90,"ttl_seconds":1,"idempotency_key":"k1"}`)
	if status != 201 {
		t.Fatalf("reserve: %d %v", status, res)
	}
	short := res["id"].(string)
	status, dup := b.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":90,"ttl_seconds":1,"idempotency_key":"k1"}`)
	if status != 201 || dup["duplicate"] != true || dup["id"] != short || num(t, dup, "reserved") != 90 {
		t.Fatalf("idempotent reserve on the other instance: %d %v", status, dup)
	}
	if status, v := b.check(`{"subject":"` + subject + `","amount":20}`); status != 200 || v["allowed"] != false {
		t.Fatalf("check while 90 of 100 held: %d %v", status, v)
	}
	time.Sleep(1100 * time.Millisecond)
	if status, v := b.check(`{"subject":"` + subject + `","amount":20}`); status != 200 || v["allowed"] != true || num(t, v, "reserved") != 0 {
		t.Fatalf("check after the hold expired: %d %v", status, v)
	}
	status, res = b.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":95}`)
	if status != 201 || num(t, res, "reserved") != 95 {
		t.Fatalf("reserve after expiry: %d %v", status, res)
	}
	long := res["id"].(string)

	a.stop(t)
	a.restart(t)
	status, c := a.call(t, "POST", "/v1/reservations/"+long+"/commit", `{"amount":40}`)
	if status != 200 || c["reservation"] != "committed" || num(t, c, "used") != 40 || num(t, c, "reserved") != 0 {
		t.Fatalf("commit after a restart: %d %v", status, c)
	}
	status, c = b.call(t, "POST", "/v1/reservations/"+short+"/commit", `{"amount":5}`)
	if status != 200 || c["reservation"] != "expired" || num(t, c, "used") != 45 {
		t.Fatalf("commit of an expired reservation: %d %v", status, c)
	}
	waitFlushed(t, pg, subject, 45)
}

// TestBatchMatchesSingle: a batch answers item by item what the single
// endpoint answers for the same requests in the same order, including
// repeated idempotency keys, enforce refusals, a key reused for another
// request (409) and bad items (400), which fail alone.
func TestBatchMatchesSingle(t *testing.T) {
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	items := func(s string) []string {
		other := s + "-other"
		return []string{
			`{"subject":"` + s + `","amount":40,"idempotency_key":"a"}`,
			`{"subject":"` + other + `","amount":3}`,
			`{"subject":"` + s + `","amount":40,"idempotency_key":"a"}`,
			`{"subject":"` + s + `","amount":50,"mode":"enforce"}`,
			`{"subject":"` + s + `","amount":60,"mode":"enforce"}`,
			`{"subject":"` + s + `","amount":41,"idempotency_key":"a"}`,
			`{"subject":"` + s + `","amount":0}`,
			`{"subject":"nobody","amount":1}`,
			`{"subject":"` + s + `","usage":{"model":"gpt-4o-mini","input_tokens":1000,"output_tokens":10}}`,
			`{"subject":"` + other + `","amount":200,"mode":"enforce"}`,
		}
	}
	setLimit(t, a, "user:batch", 100)
	setLimit(t, a, "user:single", 100)
	setLimit(t, a, "user:batch-other", 100)
	setLimit(t, a, "user:single-other", 100)

	var single []any
	for _, body := range items("user:single") {
		status, _, b := a.do(t, "POST", "/v1/consume", adminKey, "application/json", strings.NewReader(body))
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if status != 200 {
			m = map[string]any{"error": m}
		}
		single = append(single, m)
	}
	status, batch := a.call(t, "POST", "/v1/consume/batch", `{"events":[`+strings.Join(items("user:batch"), ",")+`]}`)
	if status != 200 {
		t.Fatalf("batch: %d %v", status, batch)
	}
	results := batch["results"].([]any)
	if len(results) != len(single) {
		t.Fatalf("batch answered %d results for %d items", len(results), len(single))
	}
	for i := range results {
		got, want := results[i].(map[string]any), single[i].(map[string]any)
		if e, ok := got["error"].(map[string]any); ok {
			e["detail"] = strings.ReplaceAll(fmt.Sprint(e["detail"]), "user:batch", "user:single")
		}
		delete(got, "resets_at")
		delete(want, "resets_at")
		if !reflect.DeepEqual(got, want) {
			t.Errorf("item %d: batch %v, single %v", i, got, want)
		}
	}
	if used := a.used(t, "user:batch"); used != 40+50+1 {
		t.Fatalf("batch subject used %d, want 91", used)
	}
	for _, body := range []string{`{"events":[]}`, `{"events":[` + strings.Repeat(`{"subject":"user:x","amount":1},`, 1000) + `{"subject":"user:x","amount":1}]}`} {
		if status, p := a.call(t, "POST", "/v1/consume/batch", body); status != 400 || p["field"] != "events" {
			t.Fatalf("batch of %d bytes: %d %v", len(body), status, p)
		}
	}
}

// TestCommitOfALostReservation: when Redis lost a reservation (its data
// was flushed), a commit within a day of its expiry still records the
// work, once; a release of it is a 404 (there is nothing to free).
func TestCommitOfALostReservation(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	const subject = "user:lost-hold"
	_, res := a.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":25}`)
	id := res["id"].(string)
	rdb := redis.NewClient(mustParse(t, rd))
	defer rdb.Close()
	keys, err := rdb.Keys(context.Background(), "q:{"+subject+"}:[rh]:*").Result()
	if err != nil || len(keys) != 2 {
		t.Fatalf("reservation keys %v (%v), want a record and a holds set", keys, err)
	}
	if err := rdb.Del(context.Background(), keys...).Err(); err != nil {
		t.Fatal(err)
	}
	if status, p := a.call(t, "DELETE", "/v1/reservations/"+id, ""); status != 404 {
		t.Fatalf("release of a lost reservation: %d %v", status, p)
	}
	for i := range 2 {
		status, c := a.call(t, "POST", "/v1/reservations/"+id+"/commit", `{"amount":30}`)
		if status != 200 || num(t, c, "used") != 30 || c["duplicate"] != (i == 1) {
			t.Fatalf("commit %d of a lost reservation: %d %v", i+1, status, c)
		}
	}
	waitFlushed(t, pg, subject, 30)
}
