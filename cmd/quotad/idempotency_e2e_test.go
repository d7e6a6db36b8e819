package main_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// TestRefusedAttemptKeepsNoKey: an enforce consume the limit refused does
// not keep its idempotency key, on Redis and on the Postgres path alike:
// the same key is tried again after a reset (and applies once), and may
// carry another amount; only an applied consume is replayed. A refused
// reservation keeps none either.
func TestRefusedAttemptKeepsNoKey(t *testing.T) {
	for _, tiers := range []string{"full", "postgres"} {
		t.Run(tiers, func(t *testing.T) {
			q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t), "QUOTAD_TIERS="+tiers)
			if status, _ := q.call(t, "PUT", "/v1/plans/tiny", `{"limits":{"credits":{"limit":10,"period":"day"}}}`); status != 200 {
				t.Fatal(status)
			}
			if status, _ := q.call(t, "PUT", "/v1/subjects/user:idem", `{"plan":"tiny"}`); status != 200 {
				t.Fatal(status)
			}
			consume := func(body string, applied, duplicate bool, used float64) {
				t.Helper()
				status, res := q.call(t, "POST", "/v1/consume", body)
				if status != 200 || res["applied"] != applied || res["duplicate"] != duplicate || res["used"] != used {
					t.Fatalf("%s: %d %v; want applied=%v duplicate=%v used=%v", body, status, res, applied, duplicate, used)
				}
			}
			consume(`{"subject":"user:idem","amount":8,"mode":"enforce","idempotency_key":"k1"}`, true, false, 8)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, false, false, 8)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, false, false, 8) // tried again, not replayed
			if status, _ := q.call(t, "POST", "/v1/subjects/user:idem/reset", ""); status != 200 {
				t.Fatal(status)
			}
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, true, false, 5)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, true, true, 5) // now replayed
			consume(`{"subject":"user:idem","amount":50,"mode":"enforce","idempotency_key":"k3"}`, false, false, 5)
			consume(`{"subject":"user:idem","amount":1,"mode":"enforce","idempotency_key":"k3"}`, true, false, 6) // another amount: no 409
			consume(`{"subject":"user:idem","amount":8,"mode":"enforce","idempotency_key":"k1"}`, true, true, 8)  // k1's first answer

			if tiers == "full" {
				reserve := func(amount string) (int, map[string]any) {
					return q.call(t, "POST", "/v1/reservations", `{"subject":"user:idem","amount":`+amount+`,"idempotency_key":"r1"}`)
				}
				if status, res := reserve("9"); status != 200 || res["granted"] != false {
					t.Fatalf("reservation over the limit: %d %v", status, res)
				}
				if status, res := reserve("2"); status != 201 || res["granted"] != true || res["duplicate"] != false {
					t.Fatalf("the same key, another amount that fits: %d %v", status, res)
				}
			}
		})
	}
}

// TestReplayAfterTheKeyWindowCountsOnce: Redis keeps a consume's
// idempotency key only QUOTAD_KEY_WINDOW; Postgres keeps it a day. A
// replay after the window is answered as a new consume, but it is counted
// once: Postgres writes no ledger row for it, and the usage quotad
// answers comes back to the first consume alone once it is flushed.
func TestReplayAfterTheKeyWindowCountsOnce(t *testing.T) {
	ctx := context.Background()
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_KEY_WINDOW=1s", "QUOTAD_FLUSH_INTERVAL=100ms")
	if status, _ := q.call(t, "PUT", "/v1/plans/window", `{"limits":{"credits":{"limit":1000,"period":"month"}}}`); status != 200 {
		t.Fatal(status)
	}
	const subject = "user:key-window"
	if status, _ := q.call(t, "PUT", "/v1/subjects/"+subject, `{"plan":"window"}`); status != 200 {
		t.Fatal(status)
	}
	body := `{"subject":"` + subject + `","amount":5,"idempotency_key":"kw-1"}`
	if status, res := q.call(t, "POST", "/v1/consume", body); status != 200 || res["applied"] != true || res["used"] != 5.0 {
		t.Fatalf("first consume: %d %v", status, res)
	}
	if status, res := q.call(t, "POST", "/v1/consume", body); status != 200 || res["duplicate"] != true || res["used"] != 5.0 {
		t.Fatalf("a replay within the window: %d %v; want its first answer", status, res)
	}

	rdb := redis.NewClient(mustParse(t, rd))
	defer rdb.Close()
	ik := "q:{" + subject + "}:i:kw-1"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		n, err := rdb.Exists(ctx, ik).Result()
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis still holds the key 5 s into a 1 s window")
		}
	}
	if status, res := q.call(t, "POST", "/v1/consume", body); status != 200 || res["applied"] != true {
		t.Fatalf("a replay after the window: %d %v", status, res)
	}

	conn, err := pgx.Connect(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var rows, sum int64
		if err := conn.QueryRow(ctx, `SELECT count(*), coalesce(sum(amount), 0) FROM usage_ledger WHERE subject = $1`, subject).Scan(&rows, &sum); err != nil {
			t.Fatal(err)
		}
		var used int64
		if err := conn.QueryRow(ctx, `SELECT coalesce(sum(used), 0) FROM counters WHERE subject = $1 AND meter = 'credits'`, subject).Scan(&used); err != nil {
			t.Fatal(err)
		}
		status, view := q.call(t, "GET", "/v1/subjects/"+subject, "")
		if status != 200 {
			t.Fatalf("subject view: %d %v", status, view)
		}
		apiUsed := view["meters"].([]any)[0].(map[string]any)["used"]
		if rows == 1 && sum == 5 && used == 5 && apiUsed == 5.0 {
			break
		}
		if rows > 1 || sum > 5 || used > 5 {
			t.Fatalf("the replay after the window was counted again: %d ledger rows summing %d, counter %d", rows, sum, used)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the flush: %d ledger rows summing %d, counter %d, quotad answers used %v; want 1, 5, 5, 5", rows, sum, used, apiUsed)
		}
	}
}
