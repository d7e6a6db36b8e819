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

// TestBackpressure, through the API: a lock holds the flush's COPY under
// steady consumes. Once their usage waited longer than
// QUOTAD_FLUSH_MAX_LAG (300ms) unread, consumes wait for the flusher (up
// to a second each) and are taken; once the flush has been stuck for
// 5 × the max lag, pacing cannot help and stops; after the lock goes the
// flusher catches up and nothing waits. Nothing is refused, lost or
// counted twice.
func TestBackpressure(t *testing.T) {
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+testenv.RedisURL(t),
		"QUOTAD_FLUSH_INTERVAL=100ms", "QUOTAD_FLUSH_MAX_LAG=300ms")
	const subject = "user:paced"
	body := `{"subject":"` + subject + `","amount":1}`
	n := 0
	consume := func() time.Duration {
		start := time.Now()
		if r, status, ok := q.consume(body); !ok || !r.Applied {
			t.Fatalf("consume %d: %d %+v", n+1, status, r)
		}
		n++
		return time.Since(start)
	}
	consume()
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
	held := time.Now()
	var late []time.Duration // consumes once the flush has been stuck for more than 5 × 300ms
	for time.Since(held) < 3*time.Second {
		took := consume()
		if time.Since(held)-took > 2*time.Second {
			late = append(late, took)
		}
		time.Sleep(20 * time.Millisecond)
	}
	paced := pacedTotal(t, q)
	if paced == 0 {
		t.Fatal("no consume waited while usage waited unread for longer than the max lag")
	}
	if len(late) == 0 {
		t.Fatal("no consume made late in the held flush")
	}
	for _, took := range late {
		if took > 500*time.Millisecond {
			t.Fatalf("a consume took %v with the flush stuck for over 5 × the max lag; want no pacing then (late ones: %v)", took, late)
		}
	}
	t.Logf("%d of %d consumes paced while the flush was held; %d late ones not", paced, n, len(late))

	if err := tx.Rollback(ctx); err != nil { // the held flush goes through; the flusher catches up
		t.Fatal(err)
	}
	waitFlushed(t, pg, subject, int64(n))
	time.Sleep(300 * time.Millisecond) // the flusher looks at the stream again
	consume()
	if p := pacedTotal(t, q); p != paced {
		t.Fatalf("%d consumes paced, want no more once the flusher caught up (%d)", p, paced)
	}
	waitFlushed(t, pg, subject, int64(n))
}
