package main_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// TestWaitReplicas: with QUOTAD_REDIS_WAIT_REPLICAS=1 a consume answers
// only once Redis's replica has its writes. While the replica is frozen
// the writes cannot be confirmed: a consume with a key answers 503 (its
// outcome unknown: it may be on the master), one without goes to Postgres
// with its event id; and when the replica is back, the keyed retry counts
// once. Postgres ends with every acknowledged unit exactly once.
func TestWaitReplicas(t *testing.T) {
	ctx := context.Background()
	master := testenv.StartRedis(t, testenv.RedisOptions{})
	replica := testenv.StartRedisReplica(t, master)
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+master.URL(), "QUOTAD_REDIS_WAIT_REPLICAS=1", "QUOTAD_FLUSH_INTERVAL=100ms")
	if status, _ := q.call(t, "PUT", "/v1/plans/waited", `{"limits":{"credits":{"limit":1000,"period":"month"}}}`); status != 200 {
		t.Fatal(status)
	}
	const subject = "user:waited"
	if status, _ := q.call(t, "PUT", "/v1/subjects/"+subject, `{"plan":"waited"}`); status != 200 {
		t.Fatal(status)
	}
	onReplica := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	defer onReplica.Close()

	if status, res := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":3,"idempotency_key":"w-1"}`); status != 200 || res["applied"] != true {
		t.Fatalf("consume: %d %v", status, res)
	}
	if n, err := onReplica.Exists(ctx, "q:{"+subject+"}:i:w-1").Result(); err != nil || n != 1 {
		t.Fatalf("the replica does not hold the acknowledged consume's key (%d, %v)", n, err)
	}

	replica.Pause(t)
	keyed := `{"subject":"` + subject + `","amount":7,"idempotency_key":"w-2"}`
	if status, res := q.call(t, "POST", "/v1/consume", keyed); status != 503 {
		t.Fatalf("a keyed consume the replica cannot confirm: %d %v; want 503", status, res)
	}
	if status, res := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":5}`); status != 200 || res["applied"] != true {
		t.Fatalf("a consume without a key while the replica is frozen: %d %v; want it taken by Postgres", status, res)
	}
	replica.Resume(t)
	var status int
	var res map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if status, res = q.call(t, "POST", "/v1/consume", keyed); status == 200 || time.Now().After(deadline) {
			break
		}
	}
	if status != 200 || res["applied"] != true {
		t.Fatalf("the keyed retry with the replica back: %d %v", status, res)
	}

	conn, err := pgx.Connect(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var used, ledger int64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT sum(used) FROM counters WHERE subject = $1), 0),
			coalesce((SELECT sum(amount) FROM usage_ledger WHERE subject = $1 AND kind = 'consume'), 0)`, subject).Scan(&used, &ledger); err != nil {
			t.Fatal(err)
		}
		if used == 15 && ledger == 15 || time.Now().After(deadline) {
			break
		}
	}
	if used != 15 || ledger != 15 {
		t.Fatalf("Postgres: counter %d, ledger %d; want 15 (3 + 5 + 7, each once)", used, ledger)
	}
	if _, view := q.call(t, "GET", "/v1/subjects/"+subject, ""); view["meters"].([]any)[0].(map[string]any)["used"] != 15.0 {
		t.Fatalf("quotad answers %v, want used 15", view["meters"])
	}
}
