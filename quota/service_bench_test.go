package quota_test

import (
	"context"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

// memStores answers from fixed values: the benchmark below measures the
// quota code itself (validation, limit resolution, period arithmetic,
// the answer), not a cache or a store.
type memStores struct {
	sub  quota.Subject
	plan quota.Plan
}

func (m *memStores) Plans(context.Context) ([]quota.Plan, error) { return []quota.Plan{m.plan}, nil }
func (m *memStores) Plan(context.Context, string) (quota.Plan, error) {
	return m.plan, nil
}
func (m *memStores) PutPlan(context.Context, quota.Plan) error { return nil }
func (m *memStores) DeletePlan(context.Context, string) (quota.Plan, error) {
	return quota.Plan{}, quota.ErrNotFound
}
func (m *memStores) Subject(context.Context, string) (quota.Subject, error) {
	return m.sub, nil
}
func (m *memStores) ProvisionSubject(_ context.Context, s quota.Subject) (quota.Subject, error) {
	return s, nil
}
func (m *memStores) PutSubject(context.Context, quota.Subject) error { return nil }
func (m *memStores) Prices(context.Context) ([]quota.Price, error)   { return nil, nil }
func (m *memStores) PutPrice(context.Context, quota.Price) error     { return nil }
func (m *memStores) DeletePrice(context.Context, string) (quota.Price, error) {
	return quota.Price{}, quota.ErrNotFound
}
func (m *memStores) Used(context.Context, quota.UsageRead) (quota.Tally, error) {
	return quota.Tally{Used: 42}, nil
}
func (m *memStores) Consume(_ context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	return quota.ConsumeResult{Applied: true, Amount: op.Amount, Used: 42}, nil
}
func (m *memStores) Reset(context.Context, quota.CounterKey, time.Time) error { return nil }

// BenchmarkServiceCheck is a check with every store answering at once: the
// cost of the quota code on the hot path, clock read included.
func BenchmarkServiceCheck(b *testing.B) {
	m := &memStores{
		sub:  quota.Subject{ID: "user:42", Plan: "free", CycleAnchor: time.Date(2026, 1, 31, 10, 0, 0, 0, time.UTC)},
		plan: quota.DefaultPlans()[1],
	}
	svc := quota.NewService(quota.Stores{Plans: m, Subjects: m, Prices: m, Counter: m}, time.Now, quota.DefaultMargin())
	ctx := context.Background()
	req := quota.CheckRequest{Subject: "user:42", Amount: 1}
	b.ReportAllocs()
	for b.Loop() {
		res, err := svc.Check(ctx, req)
		if err != nil || !res.Allowed {
			b.Fatal(res, err)
		}
	}
}
