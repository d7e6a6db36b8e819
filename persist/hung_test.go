package persist_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// queue is a pending queue in memory: these tests are about the flusher
// against a real Postgres, and what feeds it does not matter here.
type queue struct {
	mu     sync.Mutex
	events []quota.Event
	acked  int
}

func (q *queue) Claim(_ context.Context, _ int, into []quota.Event) ([]quota.Event, int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append(into, q.events...), len(q.events), nil
}

func (q *queue) Next(_ context.Context, _ int, into []quota.Event) ([]quota.Event, int, error) {
	return into, 0, nil
}

func (q *queue) Ack(_ context.Context, events []quota.Event) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.acked += len(events)
	q.events = nil
	return nil
}

func (q *queue) Stats(context.Context) (int64, time.Time, time.Duration, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int64(len(q.events)), time.Time{}, 0, nil
}

// TestFlushAgainstAHungPostgres: Postgres frozen (SIGSTOP: sockets open,
// no answer) mid-flush. The write is cut after WriteTimeout and the flush
// reports failing (so /readyz says degraded) instead of waiting for good;
// once Postgres answers again the flush goes through, every event once.
func TestFlushAgainstAHungPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	ctx := context.Background()
	st, err := persist.Open(ctx, pg.URL(), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	key := monthKey
	key.Subject = "user:hung"
	q := &queue{}
	for i := range 10 {
		at := time.Now()
		q.events = append(q.events, quota.Event{ID: quota.NewEventID(at), Ref: "r", Kind: quota.EventConsume, Subject: key.Subject,
			Meter: key.Meter, Start: key.Start, End: key.End, Amount: int64(i + 1), At: at})
	}
	f := persist.NewFlusher(st, q, persist.FlusherConfig{WriteTimeout: 300 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	pg.Pause(t)
	done := make(chan error, 1)
	go func() { done <- f.Drain(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, _, err := f.Status(); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a write to a frozen Postgres did not give up within 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	pg.Resume(t)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the flush did not go through once Postgres answered again")
	}
	var used int64
	if err := st.Pool().QueryRow(ctx, `SELECT used FROM counters WHERE subject = $1`, key.Subject).Scan(&used); err != nil || used != 55 {
		t.Fatalf("counter %d (%v), want 55", used, err)
	}
}

// TestHurryFlushesBeforeTheTick: a flush asked for with Hurry (a load
// waits for one) comes soon, not at the next interval.
func TestHurryFlushesBeforeTheTick(t *testing.T) {
	st := newStore(t)
	q := &queue{}
	f := persist.NewFlusher(st, q, persist.FlusherConfig{Interval: 20 * time.Second, MaxLag: -1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()

	key := monthKey
	key.Subject = "user:hurry"
	time.Sleep(200 * time.Millisecond) // past the first flush, of nothing
	q.mu.Lock()
	at := time.Now()
	q.events = append(q.events, quota.Event{ID: quota.NewEventID(at), Ref: "r", Kind: quota.EventConsume, Subject: key.Subject,
		Meter: key.Meter, Start: key.Start, End: key.End, Amount: 3, At: at})
	q.mu.Unlock()
	f.Hurry()
	deadline := time.Now().Add(10 * time.Second) // half the interval; hurried flushes wait Interval/10 after the last
	for {
		q.mu.Lock()
		acked := q.acked
		q.mu.Unlock()
		if acked == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no flush 10 s after Hurry; the interval is 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if used, _, err := st.Stored(context.Background(), key); err != nil || used != 3 {
		t.Fatalf("flushed counter: %d, %v; want 3", used, err)
	}
}
