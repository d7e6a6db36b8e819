package testenv_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func pgConnect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx(t), url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func countTables(t *testing.T, conn *pgx.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(ctx(t), `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFreePort(t *testing.T) {
	t.Parallel()
	port := testenv.FreePort(t)
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatalf("FreePort returned %d, which cannot be bound: %v", port, err)
	}
	l.Close()
}

func TestPostgresURL(t *testing.T) {
	t.Parallel()
	urlA, urlB := testenv.PostgresURL(t), testenv.PostgresURL(t)
	if urlA == urlB {
		t.Fatalf("same URL twice: %s", urlA)
	}
	a, b := pgConnect(t, urlA), pgConnect(t, urlB)
	var dbA, dbB string
	if err := a.QueryRow(ctx(t), "SELECT current_database()").Scan(&dbA); err != nil {
		t.Fatal(err)
	}
	if err := b.QueryRow(ctx(t), "SELECT current_database()").Scan(&dbB); err != nil {
		t.Fatal(err)
	}
	if dbA == dbB {
		t.Fatalf("both URLs point to database %q", dbA)
	}
	if n := countTables(t, a); n != 0 {
		t.Fatalf("fresh database %s has %d tables", dbA, n)
	}
	if _, err := a.Exec(ctx(t), "CREATE TABLE quota (id bigint PRIMARY KEY, used bigint NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exec(ctx(t), "CREATE TABLE quota (id bigint PRIMARY KEY, other text)"); err != nil {
		t.Fatalf("same table name in second database: %v", err)
	}
	if _, err := a.Exec(ctx(t), "INSERT INTO quota VALUES (1, 10)"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := b.QueryRow(ctx(t), "SELECT count(*) FROM quota").Scan(&n); err != nil || n != 0 {
		t.Fatalf("second database sees %d rows (err %v), want 0", n, err)
	}
}

// TestPostgresURLParallel checks concurrent CREATE/DROP DATABASE on the shared server.
func TestPostgresURLParallel(t *testing.T) {
	t.Parallel()
	for i := range 8 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			conn := pgConnect(t, testenv.PostgresURL(t))
			if n := countTables(t, conn); n != 0 {
				t.Fatalf("fresh database has %d tables", n)
			}
			if _, err := conn.Exec(ctx(t), "CREATE TABLE t (x int)"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestStartPostgresStopStart(t *testing.T) {
	t.Parallel()
	pg := testenv.StartPostgres(t)
	url := pg.URL()
	conn, err := pgx.Connect(ctx(t), url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx(t), "CREATE TABLE kv (k text PRIMARY KEY, v text); INSERT INTO kv VALUES ('a', 'before-stop')"); err != nil {
		t.Fatal(err)
	}

	pg.Stop(t)
	if err := conn.Ping(ctx(t)); err == nil {
		t.Fatal("connection still works after Stop")
	}
	conn.Close(context.Background())
	if c, err := pgx.Connect(ctx(t), url); err == nil {
		c.Close(context.Background())
		t.Fatal("new connection succeeded after Stop")
	}

	pg.Start(t)
	if pg.URL() != url {
		t.Fatalf("URL changed across restart: %s -> %s", url, pg.URL())
	}
	conn = pgConnect(t, url)
	var v string
	if err := conn.QueryRow(ctx(t), "SELECT v FROM kv WHERE k = 'a'").Scan(&v); err != nil || v != "before-stop" {
		t.Fatalf("after restart: v=%q err=%v", v, err)
	}
	if _, err := conn.Exec(ctx(t), "INSERT INTO kv VALUES ('b', 'before-crash')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(context.Background())

	pg.Crash(t)
	pg.Start(t)
	conn = pgConnect(t, url)
	var n int
	if err := conn.QueryRow(ctx(t), "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after crash recovery: %d rows, err %v; want 2", n, err)
	}
}

func TestStartRedisAOFStopStart(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
	if want := "redis://" + r.Addr() + "/0"; r.URL() != want {
		t.Fatalf("URL() = %q, want %q", r.URL(), want)
	}
	c := redisClient(t, r.URL())
	if err := c.Set(ctx(t), "k", "v1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if save, err := c.ConfigGet(ctx(t), "save").Result(); err != nil || save["save"] != "" {
		t.Fatalf("CONFIG GET save = %v (err %v), want empty", save, err)
	}
	r.Stop(t)
	if conn, err := net.Dial("tcp", r.Addr()); err == nil {
		conn.Close()
		t.Fatal("port still open after Stop")
	}
	r.Start(t)
	c2 := redisClient(t, r.URL())
	if got, err := c2.Get(ctx(t), "k").Result(); err != nil || got != "v1" {
		t.Fatalf("after Stop/Start GET k = %q, %v; want v1", got, err)
	}

	// appendfsync always: even a SIGKILL keeps acknowledged writes.
	if err := c2.Set(ctx(t), "k2", "v2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Kill(t)
	r.Start(t)
	if got, err := redisClient(t, r.URL()).Get(ctx(t), "k2").Result(); err != nil || got != "v2" {
		t.Fatalf("after Kill/Start GET k2 = %q, %v; want v2", got, err)
	}
}

func TestStartRedisNoAOFKill(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t, testenv.RedisOptions{})
	c := redisClient(t, r.URL())
	if err := c.Set(ctx(t), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	r.Kill(t)
	r.Start(t)
	if err := redisClient(t, r.URL()).Get(ctx(t), "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("after Kill/Start without AOF GET k: err = %v, want redis.Nil", err)
	}
}

func TestRedisURL(t *testing.T) {
	t.Parallel()
	urlA, urlB := testenv.RedisURL(t), testenv.RedisURL(t)
	if urlA == urlB {
		t.Fatalf("same URL twice: %s", urlA)
	}
	a, b := redisClient(t, urlA), redisClient(t, urlB)
	if err := a.Set(ctx(t), "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Get(ctx(t), "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("key set via %s visible via %s (err %v)", urlA, urlB, err)
	}
	if n, err := b.DBSize(ctx(t)).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE of %s = %d, %v; want 0", urlB, n, err)
	}
}

// TestRedisURLReuse checks that a database handed out again is empty.
func TestRedisURLReuse(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			url := testenv.RedisURL(t)
			c := redisClient(t, url)
			if n, err := c.DBSize(ctx(t)).Result(); err != nil || n != 0 {
				t.Fatalf("DBSIZE of %s = %d, %v; want 0 (reused=%v)", url, n, err, seen[url])
			}
			seen[url] = true
			if err := c.Set(ctx(t), "leftover", i, 0).Err(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
