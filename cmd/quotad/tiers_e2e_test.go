package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// These tests run the real quotad binary with its full tiers (ristretto,
// Redis, Postgres) and break things under it: processes are killed, Redis
// and Postgres are stopped, Redis loses its data. Every test ends by
// comparing Postgres with what quotad acknowledged.

// pgTotals returns the usage Postgres holds for subject: the counters'
// sum, the ledger's sum and the ledger's row count.
func pgTotals(tb testing.TB, url, subject string) (counters, ledger, rows int64) {
	tb.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(context.Background(), `SELECT
		(SELECT coalesce(sum(used), 0) FROM counters WHERE subject = $1),
		(SELECT coalesce(sum(amount), 0) FROM usage_ledger WHERE subject = $1 AND kind = 'consume'),
		(SELECT count(*) FROM usage_ledger WHERE subject = $1 AND kind = 'consume')`, subject).Scan(&counters, &ledger, &rows)
	if err != nil {
		tb.Fatal(err)
	}
	return counters, ledger, rows
}

// waitFlushed waits until Postgres holds want units for subject in both
// the counters and the ledger, and fails with what it holds otherwise.
func waitFlushed(tb testing.TB, url, subject string, want int64) {
	tb.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		c, l, _ := pgTotals(tb, url, subject)
		if c == want && l == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s in postgres: counters %d, ledger %d; want %d in both", subject, c, l, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// used reads a subject's credits usage through the API.
func (q *quotad) used(tb testing.TB, subject string) int64 {
	tb.Helper()
	status, v := q.call(tb, "GET", "/v1/subjects/"+subject, "")
	if status != 200 {
		tb.Fatalf("get %s: %d %v", subject, status, v)
	}
	for _, m := range v["meters"].([]any) {
		if m := m.(map[string]any); m["meter"] == "credits" {
			return int64(m["used"].(float64))
		}
	}
	tb.Fatalf("%s has no credits meter: %v", subject, v)
	return 0
}

// consumeResult is the part of a consume answer the tests look at.
type consumeResult struct {
	Applied   bool  `json:"applied"`
	Duplicate bool  `json:"duplicate"`
	Amount    int64 `json:"amount"`
	Used      int64 `json:"used"`
}

var client = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 10 * time.Second}

// consume posts one consume; ok is false when no answer came back (the
// process died, the connection broke) or the answer was not a 200.
func (q *quotad) consume(body string) (consumeResult, int, bool) {
	req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/consume", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return consumeResult{}, 0, false
	}
	defer resp.Body.Close()
	var r consumeResult
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return r, resp.StatusCode, false
	}
	q.holdToContract(q.tb, req, []byte(body), resp.StatusCode, resp.Header, b)
	if resp.StatusCode != 200 || json.Unmarshal(b, &r) != nil {
		return r, resp.StatusCode, false
	}
	return r, resp.StatusCode, true
}

func (q *quotad) check(body string) (int, map[string]any) {
	req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/check", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var m map[string]any
	if b, err := io.ReadAll(resp.Body); err == nil {
		q.holdToContract(q.tb, req, []byte(body), resp.StatusCode, resp.Header, b)
		_ = json.Unmarshal(b, &m)
	}
	return resp.StatusCode, m
}

// kill sends SIGKILL and waits for the process to go.
func (q *quotad) kill(tb testing.TB) {
	tb.Helper()
	_ = q.cmd.Process.Signal(syscall.SIGKILL)
	_ = q.cmd.Wait()
	q.cmd = nil
}

// restart starts the process again with the same settings.
func (q *quotad) restart(tb testing.TB) {
	tb.Helper()
	q.start(tb)
}

func setLimit(tb testing.TB, q *quotad, subject string, limit int64) {
	tb.Helper()
	status, v := q.call(tb, "PUT", "/v1/subjects/"+subject, fmt.Sprintf(`{"limits":{"credits":{"limit":%d,"period":"month"}}}`, limit))
	if status != 200 {
		tb.Fatalf("set limit: %d %v", status, v)
	}
}

// TestNoOverAdmission: 200 goroutines consume in enforce mode against one
// subject with limit 1,000, across two instances sharing Redis and
// Postgres: exactly 1,000 units are accepted, and Postgres ends with 1,000.
func TestNoOverAdmission(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rd string) {
		pg := testenv.PostgresURL(t)
		a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
		b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
		for _, subject := range []string{"user:one-instance", "user:two-instances"} {
			setLimit(t, a, subject, 1000)
			var accepted atomic.Int64
			var wg sync.WaitGroup
			for g := range 200 {
				wg.Go(func() {
					q := a
					if subject == "user:two-instances" && g%2 == 1 {
						q = b
					}
					for range 8 {
						r, status, ok := q.consume(`{"subject":"` + subject + `","amount":1,"mode":"enforce"}`)
						if !ok {
							t.Errorf("consume: status %d", status)
							return
						}
						if r.Applied {
							accepted.Add(1)
						}
						if r.Used > 1000 {
							t.Errorf("used %d past the limit", r.Used)
						}
					}
				})
			}
			wg.Wait()
			if accepted.Load() != 1000 {
				t.Fatalf("%s: accepted %d units, want exactly 1000", subject, accepted.Load())
			}
			waitFlushed(t, pg, subject, 1000)
		}
	})
}

// TestIdempotencyExactlyOnce sends one idempotency key 50 times at once
// over two instances, and again after a restart: it counts once in Redis,
// in the counters and in the ledger.
func TestIdempotencyExactlyOnce(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rd string) {
		pg := testenv.PostgresURL(t)
		a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
		b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
		body := `{"subject":"user:idem","amount":42,"idempotency_key":"msg-7"}`
		var firsts atomic.Int64
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				q := a
				if i%2 == 1 {
					q = b
				}
				r, status, ok := q.consume(body)
				if !ok || !r.Applied || r.Used != 42 || r.Amount != 42 {
					t.Errorf("answer %+v (status %d), want applied with used 42", r, status)
				}
				if !r.Duplicate {
					firsts.Add(1)
				}
			})
		}
		wg.Wait()
		if firsts.Load() != 1 {
			t.Fatalf("%d answers were not duplicates, want 1", firsts.Load())
		}
		waitFlushed(t, pg, "user:idem", 42)
		a.stop(t)
		a.restart(t)
		if r, _, ok := a.consume(body); !ok || !r.Duplicate || r.Used != 42 {
			t.Fatalf("after restart: %+v, want the first answer as a duplicate", r)
		}
		if got := a.used(t, "user:idem"); got != 42 {
			_, view := a.call(t, "GET", "/v1/subjects/user:idem", "")
			t.Fatalf("redis says %d, want 42; subject now: %v\n%s", got, view, a.out)
		}
		time.Sleep(1500 * time.Millisecond) // a flush interval and more
		if c, l, rows := pgTotals(t, pg, "user:idem"); c != 42 || l != 42 || rows != 1 {
			t.Fatalf("postgres: counters %d, ledger %d in %d rows; want 42 in 1 row", c, l, rows)
		}
	})
}

// load drives consumes of random amounts, each with its own idempotency
// key, from workers goroutines until stop is closed. It returns every
// request sent; acked[i] says whether request i got a 200.
type loadResult struct {
	done   chan struct{} // closed when every worker has stopped
	mu     sync.Mutex
	bodies []string
	amount []int64
	acked  []bool
	ended  []time.Time // when each answer came
}

func drive(q func() *quotad, subjects []string, workers int, stop <-chan struct{}, checks bool) *loadResult {
	lr := &loadResult{done: make(chan struct{})}
	var wg sync.WaitGroup
	var seq atomic.Int64
	for w := range workers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				subject := subjects[rng.IntN(len(subjects))]
				if checks && n%2 == 0 {
					status, _ := q().check(`{"subject":"` + subject + `","amount":1}`)
					lr.mu.Lock()
					lr.bodies, lr.amount, lr.acked = append(lr.bodies, "check"), append(lr.amount, 0), append(lr.acked, status == 200)
					lr.ended = append(lr.ended, time.Now())
					lr.mu.Unlock()
					continue
				}
				amount := int64(1 + rng.IntN(9))
				body := fmt.Sprintf(`{"subject":"%s","amount":%d,"idempotency_key":"load-%d"}`, subject, amount, n)
				_, _, ok := q().consume(body)
				lr.mu.Lock()
				lr.bodies, lr.amount, lr.acked = append(lr.bodies, body), append(lr.amount, amount), append(lr.acked, ok)
				lr.ended = append(lr.ended, time.Now())
				lr.mu.Unlock()
			}
		})
	}
	go func() { <-stop; wg.Wait(); close(lr.done) }()
	return lr
}

// subjectOf extracts the subject of a consume body.
func subjectOf(body string) string {
	var v struct{ Subject string }
	_ = json.Unmarshal([]byte(body), &v)
	return v.Subject
}

// TestCrashMidLoad kill -9s quotad under load, restarts it, and lets the
// client retry what was not acknowledged (with the same idempotency keys,
// as a client must): afterwards Postgres holds every consume exactly once.
func TestCrashMidLoad(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rd string) {
		pg := testenv.PostgresURL(t)
		q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_FLUSH_CLAIM_IDLE=1s")
		subjects := []string{"user:crash-1", "user:crash-2", "user:crash-3"}
		stop := make(chan struct{})
		var mu sync.Mutex
		cur := q
		lr := drive(func() *quotad { mu.Lock(); defer mu.Unlock(); return cur }, subjects, 16, stop, false)
		time.Sleep(1500 * time.Millisecond) // at least one flush happens mid-load
		q.kill(t)
		close(stop)
		<-lr.done
		q.restart(t)

		lr.mu.Lock()
		defer lr.mu.Unlock()
		want := map[string]int64{}
		var retried, acked int
		for i, body := range lr.bodies {
			if !lr.acked[i] {
				retried++
				r, status, ok := q.consume(body)
				if !ok {
					t.Fatalf("retry %s: %d", body, status)
				}
				if r.Amount != lr.amount[i] {
					t.Fatalf("retry %s answered amount %d", body, r.Amount)
				}
			} else {
				acked++
			}
			want[subjectOf(body)] += lr.amount[i]
		}
		t.Logf("%d consumes acknowledged before the kill, %d retried after it", acked, retried)
		if acked < 100 {
			t.Fatalf("only %d consumes before the kill; the load did not run", acked)
		}
		for _, s := range subjects {
			waitFlushed(t, pg, s, want[s])
			if got := q.used(t, s); got != want[s] {
				t.Fatalf("%s: quotad says used %d, want %d", s, got, want[s])
			}
		}
	})
}

// TestCrashBetweenCommitAndAck kills quotad right after a flush batch
// committed to Postgres and before Redis heard of it; the restarted
// quotad flushes the batch again and Postgres must not count it twice.
func TestCrashBetweenCommitAndAck(t *testing.T) {
	onEachRedis(t, func(t *testing.T, rd string) {
		pg := testenv.PostgresURL(t)
		q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_TEST_HOOK=crash-after-commit",
			"QUOTAD_FLUSH_INTERVAL=1h", "QUOTAD_FLUSH_CLAIM_IDLE=500ms")
		var sum int64
		for i := range 300 {
			amount := int64(1 + i%5)
			if _, status, ok := q.consume(fmt.Sprintf(`{"subject":"user:hook","amount":%d}`, amount)); !ok {
				t.Fatalf("consume %d: %d", i, status)
			}
			sum += amount
		}
		// SIGTERM drains the flusher, and the hook kills the process between
		// the commit and the ack.
		_ = q.cmd.Process.Signal(syscall.SIGTERM)
		err := q.cmd.Wait()
		q.cmd = nil
		if ws, ok := err.(interface{ Sys() any }); !ok || !ws.Sys().(syscall.WaitStatus).Signaled() {
			t.Fatalf("quotad exited with %v, want killed by the hook", err)
		}
		if c, l, _ := pgTotals(t, pg, "user:hook"); c != sum || l != sum {
			t.Fatalf("before the replay: counters %d, ledger %d; want the batch committed (%d)", c, l, sum)
		}
		// 300 consumes and the subject's provisioning.
		if n := pendingEntries(t, rd); n != 301 {
			t.Fatalf("%d events left in redis, want all 301 unacknowledged", n)
		}
		q.env = append(q.env, "QUOTAD_TEST_HOOK=", "QUOTAD_FLUSH_INTERVAL=200ms")
		q.restart(t)
		deadline := time.Now().Add(30 * time.Second)
		for {
			n := pendingEntries(t, rd)
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d events still pending", n)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if c, l, rows := pgTotals(t, pg, "user:hook"); c != sum || l != sum || rows != 300 {
			t.Fatalf("after the replay: counters %d, ledger %d in %d rows; want %d in 300 rows", c, l, rows, sum)
		}
		if got := q.used(t, "user:hook"); got != sum {
			t.Fatalf("quotad says %d, want %d", got, sum)
		}
	})
}

func mustParse(tb testing.TB, url string) *redis.Options {
	opt, err := redis.ParseURL(url)
	if err != nil {
		tb.Fatal(err)
	}
	return opt
}
