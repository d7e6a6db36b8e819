package testenv_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

// TestPause: a paused server keeps its connections and answers nothing,
// and answers again once resumed. For Postgres that includes a session
// opened before the pause (its backend is paused too, not only the
// postmaster).
func TestPause(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		r := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
		rdb := redis.NewClient(&redis.Options{Addr: r.Addr(), ReadTimeout: 200 * time.Millisecond, MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		if err := rdb.Ping(ctx(t)).Err(); err != nil {
			t.Fatal(err)
		}
		r.Pause(t)
		if err := rdb.Ping(ctx(t)).Err(); err == nil {
			t.Fatal("a paused redis answered PING")
		}
		r.Resume(t)
		if err := rdb.Ping(ctx(t)).Err(); err != nil {
			t.Fatalf("after resume: %v", err)
		}
	})
	t.Run("postgres", func(t *testing.T) {
		p := testenv.StartPostgres(t)
		conn := pgConnect(t, p.URL())
		p.Pause(t)
		c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		var one int
		if err := conn.QueryRow(c, "SELECT 1").Scan(&one); err == nil {
			t.Fatal("a session of a paused postgres answered")
		}
		p.Resume(t)
		conn = pgConnect(t, p.URL()) // pgx closes a connection whose query was cancelled
		if err := conn.QueryRow(ctx(t), "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("after resume: %v", err)
		}
	})
	t.Run("left paused", func(t *testing.T) {
		// The cleanup resumes it, so the server's own Stop at cleanup does
		// not wait out its timeout.
		start := time.Now()
		t.Run("inner", func(t *testing.T) {
			testenv.StartPostgres(t).Pause(t)
		})
		if d := time.Since(start); d > 20*time.Second {
			t.Fatalf("cleanup of a paused postgres took %v", d)
		}
	})
}
