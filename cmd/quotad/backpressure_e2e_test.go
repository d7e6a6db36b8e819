package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// shedTotal reads quotad_consume_shed_total from /metrics.
func shedTotal(tb testing.TB, q *quotad) int {
	tb.Helper()
	return int(metricValue(tb, q, "quotad_consume_shed_total"))
}

// flushLag reads flush_lag_seconds from /readyz.
func flushLag(tb testing.TB, q *quotad) float64 {
	tb.Helper()
	var r struct {
		Detail struct {
			Lag float64 `json:"flush_lag_seconds"`
		} `json:"detail"`
	}
	if err := json.Unmarshal([]byte(readyz(tb, q)), &r); err != nil {
		tb.Fatal(err)
	}
	return r.Detail.Lag
}

// TestOverloadSheds drives keyed consumes at a quotad whose flusher is
// slowed on purpose (each flush of at most 200 events takes 400 ms more:
// ~500 events/s), far faster than it takes them. The excess is refused at
// once with 503, Retry-After and a problem body that says nothing was
// counted; the flush lag stays bounded; clients that retry the refused
// consumes with their keys get every one counted exactly once, and
// Postgres ends with exactly what was acknowledged.
func TestOverloadSheds(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+testenv.RedisURL(t),
		"QUOTAD_FLUSH_INTERVAL=100ms", "QUOTAD_FLUSH_MAX_LAG=300ms", "QUOTAD_FLUSH_MAX=200", "QUOTAD_TEST_HOOK=slow-flush")
	const subject = "user:overload"
	var acked, refused atomic.Int64
	var maxLag atomic.Int64 // ms
	var badRefusal atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	post := func(body string) (int, http.Header, []byte) {
		req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/consume", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	for w := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"subject":"%s","amount":1,"idempotency_key":"w%d-%d"}`, subject, w, i)
				for { // a client retries a refused consume with its key until it is acknowledged
					status, h, b := post(body)
					if status == 200 {
						acked.Add(1)
						break
					}
					if status != 503 || h.Get("Retry-After") != "1" || !strings.Contains(string(b), "nothing was counted") {
						badRefusal.Store(fmt.Sprintf("%d %v %s", status, h, b))
						return
					}
					refused.Add(1)
					time.Sleep(50 * time.Millisecond) // shorter than Retry-After: the test wants many tries
				}
			}
		})
	}
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if ms := int64(flushLag(t, q) * 1000); ms > maxLag.Load() {
				maxLag.Store(ms)
			}
		}
	})
	time.Sleep(6 * time.Second)
	close(stop)
	wg.Wait()
	if v := badRefusal.Load(); v != nil {
		t.Fatalf("a consume was answered %v; want 200, or 503 with Retry-After 1 and a problem body", v)
	}
	if refused.Load() == 0 || shedTotal(t, q) == 0 {
		t.Fatalf("nothing was shed (%d acknowledged); the flusher takes ~500 events/s", acked.Load())
	}
	// The lag is bounded by the max lag, the flush's own time and what was
	// admitted before the flusher said it was behind: seconds, not the
	// length of the run.
	if lag := time.Duration(maxLag.Load()) * time.Millisecond; lag > 4*time.Second {
		t.Fatalf("flush lag reached %v under overload; want it bounded", lag)
	}
	t.Logf("%d acknowledged, %d refused and retried, flush lag at most %d ms", acked.Load(), refused.Load(), maxLag.Load())
	waitFlushed(t, pg, subject, acked.Load())
	conn, err := pgx.Connect(context.Background(), pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var keys int64
	if err := conn.QueryRow(context.Background(), `SELECT count(DISTINCT idempotency_key) FROM usage_ledger WHERE subject = $1`, subject).Scan(&keys); err != nil || keys != acked.Load() {
		t.Fatalf("ledger holds %d distinct keys (%v), want %d", keys, err, acked.Load())
	}
}

// TestRedisFull: Redis at its maxmemory (noeviction) refuses writes.
// Consumes then answer 503, not 500, and count nothing; /readyz says
// degraded with a warning well before that; checks are still served.
func TestRedisFull(t *testing.T) {
	pg := testenv.PostgresURL(t)
	rs := testenv.StartRedis(t, testenv.RedisOptions{})
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rs.URL())
	const subject = "user:redis-full"
	if r, status, ok := q.consume(`{"subject":"` + subject + `","amount":1}`); !ok || !r.Applied {
		t.Fatalf("consume: %d %+v", status, r)
	}
	rdb := redis.NewClient(mustParse(t, rs.URL()))
	defer rdb.Close()
	ctx := context.Background()
	used, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`used_memory:(\d+)`).FindStringSubmatch(used)
	if m == nil {
		t.Fatalf("no used_memory in %q", used)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", m[1]).Err(); err != nil { // full now
		t.Fatal(err)
	}
	var refused int
	for i := range 50 {
		_, status, _ := q.consume(fmt.Sprintf(`{"subject":"%s","amount":1,"idempotency_key":"full-%d"}`, subject, i))
		switch status {
		case 200:
		case 503:
			refused++
		default:
			t.Fatalf("consume with redis full: status %d, want 200 or 503\n%s", status, q.out)
		}
	}
	if refused == 0 {
		t.Fatal("redis at maxmemory took every consume")
	}
	if r := readyz(t, q); !strings.Contains(r, `"status":"degraded"`) || !strings.Contains(r, "redis_memory_warning") {
		t.Fatalf("readyz with redis full: %s", r)
	}
	if status, v := q.check(`{"subject":"` + subject + `"}`); status != 200 {
		t.Fatalf("check with redis full: %d %v", status, v)
	}
	if err := rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	acked := q.used(t, subject)
	waitFlushed(t, pg, subject, acked)
}

// TestHungPostgresAnswers503: Postgres frozen (SIGSTOP: connections open,
// no answer). A request that needs it answers 503 within the write
// timeout instead of hanging; once Postgres answers again so does quotad.
func TestHungPostgresAnswers503(t *testing.T) {
	pg := testenv.StartPostgres(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg.URL(), "QUOTAD_WRITE_TIMEOUT=2s")
	plan := `{"limits":{"credits":{"limit":100,"period":"month"}}}`
	if status, v := q.call(t, "PUT", "/v1/plans/hung", plan); status != 200 {
		t.Fatalf("put plan: %d %v", status, v)
	}
	pg.Pause(t)
	start := time.Now()
	status, v := q.call(t, "PUT", "/v1/plans/hung", plan) // a write: Postgres first
	if took := time.Since(start); status != 503 || took > 5*time.Second {
		t.Fatalf("put plan with postgres frozen: %d %v after %v; want 503 within the write timeout", status, v, took)
	}
	pg.Resume(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, v = q.call(t, "PUT", "/v1/plans/hung", plan)
		if status == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("put plan after postgres came back: %d %v", status, v)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestInFlightBound: with QUOTAD_MAX_IN_FLIGHT at 2 and 32 clients
// consuming at once, the usage requests past the bound are answered 503
// at once, with Retry-After and a problem body saying nothing was
// counted; clients that retry them with their keys get every one counted
// exactly once. Checks are not bounded.
func TestInFlightBound(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_MAX_IN_FLIGHT=2")
	const subject = "user:in-flight"
	var acked, refused atomic.Int64
	var bad atomic.Value
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Go(func() {
			for i := range 40 {
				body := fmt.Sprintf(`{"subject":"%s","amount":1,"idempotency_key":"f%d-%d"}`, subject, w, i)
				for {
					req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/consume", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer "+adminKey)
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						bad.Store(err.Error())
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						acked.Add(1)
						break
					}
					if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "nothing was counted") {
						bad.Store(fmt.Sprintf("%d %v %s", resp.StatusCode, resp.Header, b))
						return
					}
					refused.Add(1)
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Fatalf("a consume was answered %v", v)
	}
	if refused.Load() == 0 {
		t.Fatal("32 clients at once were never refused with 2 usage requests allowed in flight")
	}
	if status, v := q.check(`{"subject":"` + subject + `"}`); status != 200 {
		t.Fatalf("check: %d %v", status, v)
	}
	if acked.Load() != 32*40 {
		t.Fatalf("%d acknowledged, want %d", acked.Load(), 32*40)
	}
	t.Logf("%d refused and retried", refused.Load())
	waitFlushed(t, pg, subject, 32*40)
}
