package main

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// clock is a settable clock for the service.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// inProcess wires the full tiers the way serve does, with a settable clock.
func inProcess(tb testing.TB, now func() time.Time) (*quota.Service, tiers, *persist.Store) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	store, err := persist.Open(ctx, testenv.PostgresURL(tb), 32)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(store.Close)
	if err := store.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := store.Seed(ctx, quota.DefaultPlans(), quota.DefaultPrices()); err != nil {
		tb.Fatal(err)
	}
	cfg := Config{RedisURL: testenv.RedisURL(tb), FlushInterval: time.Hour, FlushBatch: 5000, FlushMax: 100000, CacheTTL: time.Second,
		NearLimit: 0.1, FlushClaimIdle: 30 * time.Second}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	t, err := fullTiers(ctx, cfg, store, prometheus.NewRegistry(), log)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(t.close)
	if !t.health.Up() {
		tb.Fatal("redis is not up")
	}
	svc := quota.NewService(t.stores, now, quota.DefaultMargin())
	if err := svc.ReloadPrices(ctx); err != nil {
		tb.Fatal(err)
	}
	return svc, t, store
}

// TestRollover: usage that crosses a period boundary lands in the new
// period, and the old period stays in Postgres.
func TestRollover(t *testing.T) {
	var c clock
	// Two seconds before the next full hour of the real clock, so that
	// Redis's expiry times (derived from the periods) are in the future.
	boundary := time.Now().UTC().Truncate(time.Hour).Add(time.Hour)
	c.Set(boundary.Add(-2 * time.Second))
	svc, tr, store := inProcess(t, c.Now)
	ctx := context.Background()
	if _, err := svc.PutPlan(ctx, quota.Plan{Name: "hourly", Limits: map[string]quota.Limit{"credits": {Limit: 10, Period: quota.PeriodHour}}}); err != nil {
		t.Fatal(err)
	}
	plan := "hourly"
	if _, err := svc.PutSubject(ctx, "user:roll", quota.SubjectUpdate{Plan: &plan}); err != nil {
		t.Fatal(err)
	}
	if r, err := svc.Consume(ctx, quota.ConsumeRequest{Subject: "user:roll", Amount: 8, Mode: quota.ModeEnforce}); err != nil || !r.Applied || !r.ResetsAt.Equal(boundary) {
		t.Fatalf("before the boundary: %+v, %v", r, err)
	}
	if r, err := svc.Consume(ctx, quota.ConsumeRequest{Subject: "user:roll", Amount: 8, Mode: quota.ModeEnforce}); err != nil || r.Applied {
		t.Fatalf("second 8 in the same hour: %+v, %v; want rejected", r, err)
	}
	c.Advance(3 * time.Second)
	r, err := svc.Consume(ctx, quota.ConsumeRequest{Subject: "user:roll", Amount: 8, Mode: quota.ModeEnforce})
	if err != nil || !r.Applied || r.Used != 8 || !r.ResetsAt.Equal(boundary.Add(time.Hour)) {
		t.Fatalf("after the boundary: %+v, %v; want applied in a fresh period", r, err)
	}
	chk, err := svc.Check(ctx, quota.CheckRequest{Subject: "user:roll", Amount: 2})
	if err != nil || !chk.Allowed || chk.Used != 8 {
		t.Fatalf("check after the boundary: %+v, %v", chk, err)
	}
	if err := tr.flusher.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	rows, err := store.Pool().Query(ctx, `SELECT period_start, used FROM counters WHERE subject = 'user:roll' ORDER BY period_start`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []int64
	var starts []time.Time
	for rows.Next() {
		var s time.Time
		var u int64
		if err := rows.Scan(&s, &u); err != nil {
			t.Fatal(err)
		}
		starts, got = append(starts, s.UTC()), append(got, u)
	}
	if len(got) != 2 || got[0] != 8 || got[1] != 8 || !starts[0].Equal(boundary.Add(-time.Hour)) || !starts[1].Equal(boundary) {
		t.Fatalf("postgres counters: starts %v used %v; want 8 in each of the two hours", starts, got)
	}
}

// BenchmarkCheckL1 measures a check answered from L1: the subject, its
// plan and its usage snapshot are all in process.
func BenchmarkCheckL1(b *testing.B) {
	svc, _, _ := inProcess(b, time.Now)
	ctx := context.Background()
	req := quota.CheckRequest{Subject: "user:bench", Amount: 1}
	if _, err := svc.Consume(ctx, quota.ConsumeRequest{Subject: "user:bench", Amount: 1}); err != nil { // provisions: checks do not
		b.Fatal(err)
	}
	for range 3 { // load, snapshot; ristretto admits asynchronously
		if _, err := svc.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := svc.Check(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkConsumeRedis measures a record-mode consume through the Redis
// script (one round trip), the flusher idle.
func BenchmarkConsumeRedis(b *testing.B) {
	svc, _, _ := inProcess(b, time.Now)
	ctx := context.Background()
	req := quota.ConsumeRequest{Subject: "user:bench", Amount: 1}
	if _, err := svc.Consume(ctx, req); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := svc.Consume(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}
