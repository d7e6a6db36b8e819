package cache_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

// TestCountsExactToInt64: the scripts add, compare and answer counts
// exactly up to the end of the int64 range, where a Lua number (a double)
// is 1,024 wide; one more unit is a 400 that changes nothing.
func TestCountsExactToInt64(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	k := quota.CounterKey{Subject: "user:int64", Meter: "credits", Start: time.Unix(0, 0).UTC()}
	const start = math.MaxInt64 - 2*quota.MaxAmount - 1
	if _, err := e.store.Pool().Exec(ctx, `INSERT INTO counters (subject, meter, period_start, period_end, used) VALUES ($1, $2, $3, NULL, $4)`,
		k.Subject, k.Meter, k.Start, int64(start)); err != nil {
		t.Fatal(err)
	}
	c := e.counter(t)
	now := time.Now()
	held := int64(quota.MaxAmount)
	r, err := c.Reserve(ctx, quota.ReserveOp{Key: k, ID: quota.NewReservationID(k, held, now.Add(time.Minute)), Amount: held,
		Enforce: true, Limit: math.MaxInt64, ExpiresAt: now.Add(time.Minute), At: now})
	if err != nil || !r.Granted || r.Used != start || r.Reserved != held {
		t.Fatalf("reserve: %+v, %v", r, err)
	}
	// used + held + amount = MaxInt64 - 1, the limit: fits.
	op := quota.ConsumeOp{Key: k, Amount: quota.MaxAmount, Enforce: true, Limit: math.MaxInt64 - 1, EventID: "e1", At: now}
	res, err := c.Consume(ctx, op)
	if err != nil || !res.Applied || res.Used != start+quota.MaxAmount || res.Reserved != held {
		t.Fatalf("enforce to the limit: %+v, %v", res, err)
	}
	// One more unit would pass the limit by one.
	op = quota.ConsumeOp{Key: k, Amount: 1, Enforce: true, Limit: math.MaxInt64 - 1, EventID: "e2", At: now}
	if res, err := c.Consume(ctx, op); err != nil || res.Applied || res.Used != start+quota.MaxAmount {
		t.Fatalf("enforce one past the limit: %+v, %v", res, err)
	}
	// Record the rest, to MaxInt64 exactly, with an idempotency key whose
	// repeat answers the same count.
	op = quota.ConsumeOp{Key: k, Amount: quota.MaxAmount + 1, EventID: "e3", IdempotencyKey: "k", RequestHash: "h", At: now}
	for i := range 2 {
		res, err = c.Consume(ctx, op)
		if err != nil || res.Used != math.MaxInt64 || res.Duplicate != (i == 1) {
			t.Fatalf("record to MaxInt64 (try %d): %+v, %v", i, res, err)
		}
	}
	op = quota.ConsumeOp{Key: k, Amount: 1, EventID: "e4", At: now}
	if _, err := c.Consume(ctx, op); !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("past MaxInt64: %v, want ErrInvalid", err)
	}
	tally, err := c.Used(ctx, quota.UsageRead{Key: k, At: now})
	if err != nil || tally.Used != math.MaxInt64 || tally.Reserved != held {
		t.Fatalf("after: %+v, %v", tally, err)
	}
	rel, err := c.Release(ctx, k, r.ID, now)
	if err != nil || rel.Used != math.MaxInt64 || rel.Reserved != 0 {
		t.Fatalf("release: %+v, %v", rel, err)
	}
}
