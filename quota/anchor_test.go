package quota_test

import (
	"context"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

// TestUsageNeverBeforeTheAnchor: a consume whose time is before its
// subject's cycle anchor (the subject was provisioned a moment later, on
// a clock a little ahead, or as the second turned) counts in the first
// period, which starts at the anchor, not in the month before it, where
// the subject's view would never show it.
func TestUsageNeverBeforeTheAnchor(t *testing.T) {
	anchor := time.Date(2026, 12, 3, 9, 34, 55, 0, time.UTC)
	m := &memStores{
		sub:  quota.Subject{ID: "user:anchor", Plan: "free", CycleAnchor: anchor},
		plan: quota.DefaultPlans()[1],
	}
	now := anchor.Add(-14 * time.Millisecond)
	svc := quota.NewService(quota.Stores{Plans: m, Subjects: m, Prices: m, Counter: m}, func() time.Time { return now }, quota.DefaultMargin())
	res, err := svc.Consume(context.Background(), quota.ConsumeRequest{Subject: "user:anchor", Amount: 7})
	if err != nil {
		t.Fatal(err)
	}
	if want := anchor.AddDate(0, 1, 0); !res.ResetsAt.Equal(want) {
		t.Fatalf("resets_at %v, want %v (the first period, from the anchor)", res.ResetsAt.Time, want)
	}
	check, err := svc.Check(context.Background(), quota.CheckRequest{Subject: "user:anchor"})
	if err != nil || !check.ResetsAt.Equal(anchor.AddDate(0, 1, 0)) {
		t.Fatalf("check resets_at %v (%v), want the first period", check.ResetsAt.Time, err)
	}
}
