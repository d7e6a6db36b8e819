package main_test

import (
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/internal/testenv"
)

// pacedTotal reads quotad_consume_paced_total from /metrics.
func pacedTotal(tb testing.TB, q *quotad) int {
	tb.Helper()
	_, _, b := q.do(tb, "GET", "/metrics", "", "", nil)
	m := regexp.MustCompile(`(?m)^quotad_consume_paced_total (\d+)`).FindSubmatch(b)
	if m == nil {
		tb.Fatalf("no quotad_consume_paced_total in /metrics")
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

// TestBackpressure: while the flusher is working but its usage waits
// longer than QUOTAD_FLUSH_MAX_LAG (here: Postgres holds a lock the flush
// waits for), consumes wait for it, up to a second, and are then taken
// anyway; once the flush is through, nothing waits. Nothing is lost or
// counted twice.
func TestBackpressure(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+testenv.RedisURL(t),
		"QUOTAD_FLUSH_INTERVAL=100ms", "QUOTAD_FLUSH_MAX_LAG=300ms")
	const subject = "user:paced"
	body := `{"subject":"` + subject + `","amount":1}`
	if r, _, ok := q.consume(body); !ok || !r.Applied {
		t.Fatal("first consume")
	}
	waitFlushed(t, pg, subject, 1)

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE usage_ledger IN SHARE MODE"); err != nil { // the flush's COPY waits for it
		t.Fatal(err)
	}
	if r, _, ok := q.consume(body); !ok || !r.Applied {
		t.Fatal("consume before the lag")
	}
	time.Sleep(time.Second) // the flush of that consume is stuck on the lock: its lag passes 300ms
	if n := pacedTotal(t, q); n != 0 {
		t.Fatalf("%d consumes paced before any waited", n)
	}
	start := time.Now()
	if r, status, ok := q.consume(body); !ok || !r.Applied {
		t.Fatalf("a paced consume is refused: %d %+v", status, r)
	}
	waited := time.Since(start)
	if n := pacedTotal(t, q); n != 1 {
		t.Fatalf("%d consumes paced, want the one made while the flusher was behind", n)
	}
	t.Logf("a consume behind a stuck flush waited %v and was taken", waited)

	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFlushed(t, pg, subject, 3)
	time.Sleep(300 * time.Millisecond) // the flusher looks at the stream again
	if r, _, ok := q.consume(body); !ok || r.Used != 4 {
		t.Fatalf("consume after the flush: %+v, want used 4", r)
	}
	if n := pacedTotal(t, q); n != 1 {
		t.Fatalf("%d consumes paced, want no more once the flush went through", n)
	}
	waitFlushed(t, pg, subject, 4)
}
