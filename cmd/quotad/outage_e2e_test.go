package main_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// settle waits until a loadResult's workers have stopped and sums what
// was acknowledged per subject; it fails on any unacknowledged request.
func settle(tb testing.TB, lr *loadResult, failOK bool) (map[string]int64, int) {
	tb.Helper()
	<-lr.done
	lr.mu.Lock()
	defer lr.mu.Unlock()
	sums := map[string]int64{}
	failed := 0
	for i, body := range lr.bodies {
		if !lr.acked[i] {
			failed++
			continue
		}
		if body != "check" {
			sums[subjectOf(body)] += lr.amount[i]
		}
	}
	if failed > 0 && !failOK {
		tb.Fatalf("%d of %d requests were not answered 200", failed, len(lr.bodies))
	}
	return sums, len(lr.bodies)
}

func readyz(tb testing.TB, q *quotad) string {
	tb.Helper()
	_, _, b := q.do(tb, "GET", "/readyz", "", "", nil)
	return string(b)
}

// TestPostgresOutage stops Postgres for 20 s under load: checks and
// consumes keep answering 200 from Redis, readiness says degraded, and
// afterwards Postgres holds exactly what was acknowledged.
func TestPostgresOutage(t *testing.T) {
	pgs := testenv.StartPostgres(t)
	rd := testenv.RedisURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pgs.URL(), "QUOTAD_REDIS_URL="+rd)
	subjects := []string{"user:pg-1", "user:pg-2", "anon:pg-3"}
	for _, s := range subjects { // known before the outage: settings and counters are in Redis
		if r, _, ok := q.consume(`{"subject":"` + s + `","amount":1}`); !ok || !r.Applied {
			t.Fatalf("warm %s", s)
		}
	}
	stop := make(chan struct{})
	lr := drive(func() *quotad { return q }, subjects, 8, stop, true)
	time.Sleep(time.Second)
	pgs.Stop(t)
	time.Sleep(2 * time.Second)
	if r := readyz(t, q); !strings.Contains(r, `"status":"degraded"`) || !strings.Contains(r, `"postgres":"down"`) {
		t.Errorf("readyz during the outage: %s", r)
	}
	time.Sleep(18 * time.Second)
	if r := readyz(t, q); !strings.Contains(r, "flush_lag_seconds") {
		t.Errorf("readyz has no flush lag: %s", r)
	}
	// The lag is 20 s, but the flusher is failing, not slow: no consume
	// was refused for it (see TestOverloadSheds).
	if n := shedTotal(t, q); n != 0 {
		t.Errorf("%d consumes shed while postgres was down", n)
	}
	pgs.Start(t)
	time.Sleep(time.Second)
	close(stop)
	sums, n := settle(t, lr, false)
	t.Logf("%d requests, all answered 200, across a 20 s Postgres outage", n)
	for _, s := range subjects {
		want := sums[s] + 1
		waitFlushed(t, pgs.URL(), s, want)
		if got := q.used(t, s); got != want {
			t.Fatalf("%s: quotad says %d, want %d\n%s", s, got, want, q.out)
		}
	}
	if r := readyz(t, q); !strings.Contains(r, `"status":"ok"`) {
		t.Errorf("readyz after the outage: %s", r)
	}
}

// TestRedisOutage stops Redis under load: consumes go on through
// Postgres; when Redis is back the totals still match exactly.
func TestRedisOutage(t *testing.T) {
	pg := testenv.PostgresURL(t)
	rs := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL())
	subjects := []string{"user:rd-1", "user:rd-2"}
	stop := make(chan struct{})
	lr := drive(func() *quotad { return q }, subjects, 8, stop, true)
	time.Sleep(time.Second)
	rs.Stop(t)
	time.Sleep(3 * time.Second)
	if r := readyz(t, q); !strings.Contains(r, `"redis":"down"`) || !strings.Contains(r, `"status":"degraded"`) {
		t.Errorf("readyz during the outage: %s", r)
	}
	// An idempotent consume taken by Postgres during the outage...
	during := `{"subject":"user:rd-1","amount":5,"idempotency_key":"outage-1"}`
	if r, _, ok := q.consume(during); !ok || !r.Applied || r.Duplicate {
		t.Fatalf("idempotent consume during the outage: %+v", r)
	}
	rs.Start(t)
	time.Sleep(2 * time.Second) // the probe finds Redis, drops stale counters, switches back
	close(stop)
	// ...is still known once Redis serves again: the retry counts nothing.
	if r, _, ok := q.consume(during); !ok || !r.Duplicate || r.Amount != 5 {
		t.Fatalf("retry after the outage: %+v, want the first answer as a duplicate", r)
	}
	sums, n := settle(t, lr, false)
	sums["user:rd-1"] += 5
	t.Logf("%d requests, all answered 200, across a 3 s Redis outage", n)
	for _, s := range subjects {
		waitFlushed(t, pg, s, sums[s])
		if got := q.used(t, s); got != sums[s] {
			t.Fatalf("%s: quotad says %d after Redis came back, want %d", s, got, sums[s])
		}
		// And Redis itself counts on from the right total.
		if r, _, ok := q.consume(`{"subject":"` + s + `","amount":1}`); !ok || r.Used != sums[s]+1 {
			rdb := redis.NewClient(mustParse(t, rs.URL()))
			keys, _ := rdb.Keys(context.Background(), "*").Result()
			for _, k := range keys {
				v, _ := rdb.Get(context.Background(), k).Result()
				t.Logf("%s = %s", k, v)
			}
			c, l, rows := pgTotals(t, pg, s)
			t.Logf("pg %d %d %d\n%s", c, l, rows, q.out)
			t.Fatalf("%s: consume after recovery says used %d, want %d", s, r.Used, sums[s]+1)
		}
	}
}

// TestRedisDataLoss: after FLUSHALL, and after a Redis restart without
// persistence, a subject's usage is rebuilt from Postgres, not reset to
// zero; what was not flushed yet is the loss. With AOF a restart loses
// nothing, flushed or not.
func TestRedisDataLoss(t *testing.T) {
	pg := testenv.PostgresURL(t)
	t.Run("flushall", func(t *testing.T) {
		rs := testenv.StartRedis(t, testenv.RedisOptions{})
		q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL())
		consumeN(t, q, "user:loss-1", 100, 3)
		waitFlushed(t, pg, "user:loss-1", 300)
		rdb := redis.NewClient(mustParse(t, rs.URL()))
		defer rdb.Close()
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			t.Fatal(err)
		}
		if got := q.used(t, "user:loss-1"); got != 300 {
			t.Fatalf("after FLUSHALL quotad says %d, want 300 rebuilt from postgres", got)
		}
		consumeN(t, q, "user:loss-1", 1, 5)
		waitFlushed(t, pg, "user:loss-1", 305)
	})
	t.Run("restart without persistence", func(t *testing.T) {
		rs := testenv.StartRedis(t, testenv.RedisOptions{})
		q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL(), "QUOTAD_FLUSH_INTERVAL=100ms")
		consumeN(t, q, "user:loss-2", 50, 2)
		waitFlushed(t, pg, "user:loss-2", 100)
		rs.Kill(t)
		rs.Start(t)
		time.Sleep(time.Second) // the probe notices and reconnects
		if got := q.used(t, "user:loss-2"); got != 100 {
			t.Fatalf("after a restart without data quotad says %d, want 100 from postgres", got)
		}
	})
	t.Run("restart with AOF", func(t *testing.T) {
		rs := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
		// Nothing is flushed before the restart: all of it lives in Redis.
		q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL(), "QUOTAD_FLUSH_INTERVAL=1h")
		consumeN(t, q, "user:loss-3", 40, 5)
		if c, _, _ := pgTotals(t, pg, "user:loss-3"); c != 0 {
			t.Fatalf("postgres has %d before any flush", c)
		}
		rs.Kill(t) // appendfsync always: every acknowledged write is on disk
		rs.Start(t)
		time.Sleep(time.Second)
		if got := q.used(t, "user:loss-3"); got != 200 {
			t.Fatalf("after an AOF restart quotad says %d, want 200", got)
		}
		q.stop(t) // SIGTERM drains the flusher
		waitFlushed(t, pg, "user:loss-3", 200)
	})
}

func consumeN(tb testing.TB, q *quotad, subject string, n int, amount int) {
	tb.Helper()
	for i := range n {
		if _, status, ok := q.consume(`{"subject":"` + subject + `","amount":` + itoa(amount) + `}`); !ok {
			tb.Fatalf("consume %d of %d: %d", i, n, status)
		}
	}
}

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}

// TestPropagation: an admin change through instance A is seen by a check
// on instance B at once, although B's L1 holds the old state.
func TestPropagation(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	// A long cache TTL: without the invalidation B would answer from L1.
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_CACHE_TTL=1h")
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_CACHE_TTL=1h")
	consumeN(t, a, "user:prop", 1, 100)
	for range 2 { // fill B's L1
		if _, v := b.call(t, "POST", "/v1/check", `{"subject":"user:prop"}`); v["used"] != 100.0 || v["limit"] != 2500.0 {
			t.Fatalf("B before: %v", v)
		}
	}
	if status, _ := a.call(t, "POST", "/v1/subjects/user:prop/reset", `{}`); status != 200 {
		t.Fatal("reset")
	}
	if _, v := b.call(t, "POST", "/v1/check", `{"subject":"user:prop"}`); v["used"] != 0.0 {
		t.Fatalf("B after a reset on A: %v, want used 0", v)
	}
	if status, _ := a.call(t, "PUT", "/v1/plans/free", `{"limits":{"credits":{"limit":3000,"period":"month"}}}`); status != 200 {
		t.Fatal("put plan")
	}
	if _, v := b.call(t, "POST", "/v1/check", `{"subject":"user:prop"}`); v["limit"] != 3000.0 {
		t.Fatalf("B after a plan change on A: %v, want limit 3000", v)
	}
	if status, _ := a.call(t, "PUT", "/v1/subjects/user:prop", `{"plan":"pro"}`); status != 200 {
		t.Fatal("put subject")
	}
	if _, v := b.call(t, "POST", "/v1/check", `{"subject":"user:prop"}`); v["plan"] != "pro" || v["limit"] != 10000.0 {
		t.Fatalf("B after a subject change on A: %v, want plan pro", v)
	}
	if status, _ := a.call(t, "PUT", "/v1/pricing/claude-3-5-sonnet", `{"input":6,"output":15,"cache_write":3.75,"cache_read":0.3}`); status != 200 {
		t.Fatal("put price")
	}
	if _, v := b.call(t, "POST", "/v1/cost", `{"model":"claude-3-5-sonnet","input_tokens":1000000,"output_tokens":0}`); v["credits"] != 720.0 {
		t.Fatalf("B after a price change on A: %v, want 720 credits", v)
	}
}

// TestEnforceWhileRedisIsDown: Postgres alone lacks the usage still
// unflushed in Redis, so while Redis is unreachable an enforce consume is
// refused (503, Retry-After, nothing counted) and a record consume is
// taken; QUOTAD_DIRECT_ENFORCE=admit enforces against Postgres instead.
// Once Redis is back, enforce consumes are served again.
func TestEnforceWhileRedisIsDown(t *testing.T) {
	for _, mode := range []string{"refuse", "admit"} {
		t.Run(mode, func(t *testing.T) {
			pg := testenv.PostgresURL(t)
			rs := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
			q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL(), "QUOTAD_DIRECT_ENFORCE="+mode)
			s := "user:enforce-down-" + mode
			consumeN(t, q, s, 1, 3)
			// Flushed first: a subject first provisioned while its Redis
			// provisioning waits in the stream has its own window
			// (docs/failures.md), not this test's subject.
			waitFlushed(t, pg, s, 3)
			rs.Stop(t)
			enforce := `{"subject":"` + s + `","amount":2,"mode":"enforce"}`
			req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/consume", strings.NewReader(enforce))
			req.Header.Set("Authorization", "Bearer "+adminKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := 503
			if mode == "admit" {
				want = 200
			}
			if resp.StatusCode != want {
				t.Fatalf("enforce while redis is down: %d %s, want %d", resp.StatusCode, body, want)
			}
			if want == 503 && (resp.Header.Get("Retry-After") == "" || resp.Header.Get("Content-Type") != "application/problem+json" || !strings.Contains(string(body), "nothing was counted")) {
				t.Fatalf("refusal: Retry-After %q, %s %s", resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"), body)
			}
			if r, _, ok := q.consume(`{"subject":"` + s + `","amount":5}`); !ok || !r.Applied {
				t.Fatalf("record consume while redis is down: %+v", r)
			}
			rs.Start(t)
			deadline := time.Now().Add(10 * time.Second)
			for {
				r, status, ok := q.consume(enforce)
				if ok && r.Applied {
					break
				}
				if status != 503 || time.Now().After(deadline) {
					t.Fatalf("enforce after redis came back: %d %+v", status, r)
				}
				time.Sleep(100 * time.Millisecond)
			}
			wantUsed := int64(3 + 5 + 2)
			if mode == "admit" {
				wantUsed += 2
			}
			if got := q.used(t, s); got != wantUsed {
				t.Fatalf("used %d, want %d", got, wantUsed)
			}
		})
	}
}

// TestBothStoresDown: with Redis and Postgres both gone, QUOTAD_FAIL_MODE
// decides: closed answers 503 problem+json, open answers allowed/applied,
// counts it in quotad_fail_open_total and counts no usage.
func TestBothStoresDown(t *testing.T) {
	for _, mode := range []string{"closed", "open"} {
		t.Run(mode, func(t *testing.T) {
			pgs := testenv.StartPostgres(t)
			rs := testenv.StartRedis(t, testenv.RedisOptions{})
			// No L1 snapshots: a fresh one would answer a check without any store.
			q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pgs.URL(), "QUOTAD_REDIS_URL="+rs.URL(), "QUOTAD_FAIL_MODE="+mode, "QUOTAD_CACHE_TTL=1ns")
			consumeN(t, q, "user:down", 1, 3)
			waitFlushed(t, pgs.URL(), "user:down", 3) // this Redis keeps nothing across a restart
			rs.Stop(t)
			pgs.Stop(t)
			for _, s := range []string{"user:down", "user:never-seen"} {
				status, ct, b := q.do(t, "POST", "/v1/consume", adminKey, "application/json", strings.NewReader(`{"subject":"`+s+`","amount":2,"mode":"enforce"}`))
				chk, _, cb := q.do(t, "POST", "/v1/check", adminKey, "application/json", strings.NewReader(`{"subject":"`+s+`"}`))
				switch mode {
				case "closed":
					if status != 503 || ct != "application/problem+json" || chk != 503 {
						t.Fatalf("%s: consume %d %s %s, check %d %s; want 503 problems", s, status, ct, b, chk, cb)
					}
				case "open":
					if status != 200 || !strings.Contains(string(b), `"applied":true`) || chk != 200 || !strings.Contains(string(cb), `"allowed":true`) {
						t.Fatalf("%s: consume %d %s, check %d %s; want allowed\n%s", s, status, b, chk, cb, q.out)
					}
				}
			}
			if r := readyz(t, q); !strings.Contains(r, `"status":"unavailable"`) {
				t.Errorf("readyz with both stores down: %s", r)
			}
			_, _, metrics := q.do(t, "GET", "/metrics", "", "", nil)
			if got := strings.Contains(string(metrics), `quotad_fail_open_total{op="consume"} 2`); got != (mode == "open") {
				t.Errorf("fail-open metric present=%v in mode %s", got, mode)
			}
			// Nothing of the outage was counted.
			pgs.Start(t)
			rs.Start(t)
			time.Sleep(time.Second)
			if got := q.used(t, "user:down"); got != 3 {
				t.Fatalf("used %d after the outage, want the 3 from before", got)
			}
		})
	}
}

// TestSubjectChangeDuringRedisOutage: a subject's plan changed through one
// instance while Redis is unreachable is the plan every instance uses
// once Redis is back, although Redis kept its copy of the old settings
// (AOF) and the invalidation sent during the outage was lost.
func TestSubjectChangeDuringRedisOutage(t *testing.T) {
	pg := testenv.PostgresURL(t)
	rs := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL())
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL())
	const subject = "user:moved"
	consumeN(t, a, subject, 1, 10) // provisioned on free, in Redis
	checkPlan := func(q *quotad) (string, float64) {
		_, v := q.call(t, "POST", "/v1/check", `{"subject":"`+subject+`"}`)
		plan, _ := v["plan"].(string)
		limit, _ := v["limit"].(float64)
		return plan, limit
	}
	if plan, limit := checkPlan(b); plan != "free" || limit != 2500 {
		t.Fatalf("B before: plan %q limit %v, want free 2500", plan, limit)
	}

	rs.Stop(t)
	if status, v := a.call(t, "PUT", "/v1/subjects/"+subject, `{"plan":"pro"}`); status != 200 || v["plan"] != "pro" {
		t.Fatalf("plan change while redis is down: %d %v", status, v)
	}
	rs.Start(t)
	for _, q := range []*quotad{a, b} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			plan, limit := checkPlan(q)
			if plan == "pro" && limit == 10000 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: plan %q limit %v 5 s after redis came back, want pro 10000", q.addr, plan, limit)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if status, v := b.call(t, "GET", "/v1/subjects/"+subject, ""); status != 200 || v["plan"] != "pro" {
		t.Fatalf("B's view: %d %v", status, v)
	}
}
