package main_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// TestReadsDoNotWrite: a check, a GET and a reset of a subject never seen
// answer from its kind's default plan and store nothing, in Redis or in
// Postgres; its first consume provisions it, anchored then.
func TestReadsDoNotWrite(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_FLUSH_INTERVAL=100ms")
	rdb := redis.NewClient(mustParse(t, rd))
	defer rdb.Close()
	ctx := context.Background()
	stored := func(t *testing.T, subject string) (keys []string, rows int64) {
		t.Helper()
		keys, err := rdb.Keys(ctx, "q:{"+subject+"}:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, pg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM subjects WHERE subject = $1)
			+ (SELECT count(*) FROM counters WHERE subject = $1)
			+ (SELECT count(*) FROM usage_ledger WHERE subject = $1)`, subject).Scan(&rows)
		if err != nil {
			t.Fatal(err)
		}
		return keys, rows
	}

	before := time.Now().UTC().Truncate(time.Second)
	status, c := q.call(t, "POST", "/v1/check", `{"subject":"anon:never-1","amount":3}`)
	if status != 200 || c["plan"] != "anonymous" || c["limit"] != 1000.0 || c["used"] != 0.0 || c["remaining"] != 1000.0 || c["allowed"] != true {
		t.Fatalf("check of a new subject: %d %v", status, c)
	}
	status, v := q.call(t, "GET", "/v1/subjects/user:never-2", "")
	if status != 200 || v["plan"] != "free" || len(v["meters"].([]any)) != 1 {
		t.Fatalf("view of a new subject: %d %v", status, v)
	}
	anchor, err := time.Parse(time.RFC3339, v["cycle_anchor"].(string))
	if err != nil || anchor.Before(before) || anchor.After(time.Now()) {
		t.Fatalf("new subject's anchor %v, want now (%v)", v["cycle_anchor"], err)
	}
	if status, v := q.call(t, "POST", "/v1/subjects/user:never-3/reset", ""); status != 200 || v["plan"] != "free" {
		t.Fatalf("reset of a new subject: %d %v", status, v)
	}
	if status, p := q.call(t, "POST", "/v1/subjects/user:never-3/reset", `{"meter":"tokens"}`); status != 400 || p["field"] != "meter" {
		t.Fatalf("reset of a meter the default plan lacks: %d %v", status, p)
	}
	// A later consume of another subject reaching Postgres means anything
	// the reads queued would have reached it too.
	if _, status, ok := q.consume(`{"subject":"user:marker","amount":1}`); !ok {
		t.Fatalf("consume: %d", status)
	}
	waitFlushed(t, pg, "user:marker", 1)
	for _, s := range []string{"anon:never-1", "user:never-2", "user:never-3"} {
		if keys, rows := stored(t, s); len(keys) != 0 || rows != 0 {
			t.Errorf("a read of %s stored Redis keys %v and %d Postgres rows", s, keys, rows)
		}
	}

	// The first consume provisions: the anchor is fixed from then on.
	if _, status, ok := q.consume(`{"subject":"user:never-2","amount":4}`); !ok {
		t.Fatalf("consume: %d", status)
	}
	_, v1 := q.call(t, "GET", "/v1/subjects/user:never-2", "")
	time.Sleep(1100 * time.Millisecond) // a new anchor would be a second later
	_, v2 := q.call(t, "GET", "/v1/subjects/user:never-2", "")
	if v1["cycle_anchor"] != v2["cycle_anchor"] || v2["meters"].([]any)[0].(map[string]any)["used"] != 4.0 {
		t.Fatalf("after the first consume: %v then %v", v1, v2)
	}
	waitFlushed(t, pg, "user:never-2", 4)
	if _, rows := stored(t, "user:never-2"); rows < 3 {
		t.Fatalf("user:never-2 has %d rows in postgres after its first consume, want its subject, counter and ledger rows", rows)
	}
	// A reservation provisions too.
	if status, h := q.call(t, "POST", "/v1/reservations", `{"subject":"user:never-4","amount":5}`); status != 201 {
		t.Fatalf("reserve: %d %v", status, h)
	}
	if keys, _ := stored(t, "user:never-4"); len(keys) == 0 {
		t.Fatalf("a reservation stored nothing for its subject")
	}
}
