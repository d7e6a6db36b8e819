package client_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/quota"
)

// TestAdminCalls drives the admin routes that list and delete (keys,
// plans, prices) through the client against a real quotad.
func TestAdminCalls(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	ctx := context.Background()

	t.Run("list and revoke keys", func(t *testing.T) {
		k, err := c.CreateKey(ctx, client.ScopeService, "to-revoke")
		if err != nil || k.Key == "" || k.ID == 0 || k.CreatedAt.IsZero() {
			t.Fatalf("create key = %+v, %v; want a secret, an id and a creation time", k, err)
		}
		keys, err := c.Keys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(keys, func(l quota.APIKey) bool { return l.ID == k.ID })
		if i < 0 || keys[i].Scope != client.ScopeService || keys[i].Name != "to-revoke" {
			t.Fatalf("keys = %+v; want key %d, service, to-revoke", keys, k.ID)
		}
		svc := client.New(q.URL, k.Key, fast)
		if _, err := svc.Check(ctx, quota.CheckRequest{Subject: "user:revoke"}); err != nil {
			t.Fatalf("check with the key before its revoke: %v", err)
		}
		gone, err := c.RevokeKey(ctx, k.ID)
		if err != nil || gone.ID != k.ID || gone.Name != "to-revoke" {
			t.Fatalf("revoke = %+v, %v", gone, err)
		}
		_, err = svc.Check(ctx, quota.CheckRequest{Subject: "user:revoke"})
		var e *client.Error
		if !errors.As(err, &e) || e.Status != 401 || !client.IsUnauthorized(err) {
			t.Errorf("check with the revoked key: %v; want a *client.Error 401", err)
		}
		keys, err = c.Keys(ctx)
		if err != nil || slices.ContainsFunc(keys, func(l quota.APIKey) bool { return l.ID == k.ID }) {
			t.Errorf("keys after the revoke = %+v, %v; want it gone", keys, err)
		}
		if _, err := c.RevokeKey(ctx, k.ID); !client.IsNotFound(err) {
			t.Errorf("second revoke: %v; want 404", err)
		}
	})

	t.Run("expiring key", func(t *testing.T) {
		at := time.Now().Add(2 * time.Second).UTC().Truncate(time.Second)
		k, err := c.MintKey(ctx, client.KeySpec{Scope: client.ScopeService, Name: "short", ExpiresAt: &at})
		if err != nil || k.ExpiresAt == nil || !k.ExpiresAt.Equal(at) {
			t.Fatalf("mint = %+v, %v; want it to expire at %s", k, err, at)
		}
		svc := client.New(q.URL, k.Key, fast)
		if _, err := svc.Check(ctx, quota.CheckRequest{Subject: "user:expiring"}); err != nil {
			t.Fatalf("check before the expiry: %v", err)
		}
		time.Sleep(time.Until(at) + 100*time.Millisecond)
		if _, err := svc.Check(ctx, quota.CheckRequest{Subject: "user:expiring"}); !client.IsUnauthorized(err) {
			t.Errorf("check after the expiry: %v; want 401", err)
		}
		past := time.Now().Add(-time.Hour)
		_, err = c.MintKey(ctx, client.KeySpec{Scope: client.ScopeService, ExpiresAt: &past})
		var e *client.Error
		if !errors.As(err, &e) || !client.IsInvalid(err) || e.Field != "expires_at" {
			t.Errorf("a key expired already: %v; want 400 on expires_at", err)
		}
	})

	t.Run("delete plans", func(t *testing.T) {
		limits := map[string]quota.Limit{"credits": {Limit: 7_000, Period: quota.PeriodMonth}}
		for _, name := range []string{"del-unused", "del-used"} {
			if _, err := c.PutPlan(ctx, quota.Plan{Name: name, Limits: limits}); err != nil {
				t.Fatal(err)
			}
		}
		used := "del-used"
		if _, err := c.PutSubject(ctx, "user:del-plan", quota.SubjectUpdate{Plan: &used}); err != nil {
			t.Fatal(err)
		}
		p, err := c.DeletePlan(ctx, "del-unused")
		if err != nil || p.Name != "del-unused" || p.Limits["credits"].Limit != 7_000 {
			t.Fatalf("delete plan = %+v, %v; want the plan deleted", p, err)
		}
		if _, err := c.Plan(ctx, "del-unused"); !client.IsNotFound(err) {
			t.Errorf("plan after its delete: %v; want 404", err)
		}
		if _, err := c.DeletePlan(ctx, "del-unused"); !client.IsNotFound(err) {
			t.Errorf("second delete: %v; want 404", err)
		}
		for _, name := range []string{"del-used", "free"} {
			_, err := c.DeletePlan(ctx, name)
			if !client.IsConflict(err) || !errors.Is(err, quota.ErrConflict) {
				t.Errorf("delete plan %s (a subject has it, or new subjects get it): %v; want 409", name, err)
			}
			if _, err := c.Plan(ctx, name); err != nil {
				t.Errorf("plan %s after a refused delete: %v", name, err)
			}
		}
	})

	t.Run("delete a price", func(t *testing.T) {
		in, _ := quota.ParseDecimal("1")
		if _, err := c.PutPrice(ctx, quota.Price{Model: "del-model", Input: in, Output: in}); err != nil {
			t.Fatal(err)
		}
		p, err := c.DeletePrice(ctx, "del-model")
		if err != nil || p.Model != "del-model" || p.Input.String() != "1" {
			t.Fatalf("delete price = %+v, %v", p, err)
		}
		_, err = c.Cost(ctx, quota.Usage{Model: "del-model", InputTokens: 1})
		var e *client.Error
		if !errors.As(err, &e) || !client.IsInvalid(err) || e.Field != "usage.model" {
			t.Errorf("cost with the deleted model: %v; want 400 on the model", err)
		}
		if _, err := c.DeletePrice(ctx, "del-model"); !client.IsNotFound(err) {
			t.Errorf("second delete: %v; want 404", err)
		}
	})
}

// TestReports reads the listing of subjects, a subject's usage per day
// and its ledger through the client, after consumes quotad has flushed
// to Postgres.
func TestReports(t *testing.T) {
	q := quotadtest.Start(t, "QUOTAD_FLUSH_INTERVAL=100ms", "QUOTAD_LISTING_REFRESH=100ms")
	c := adminClient(q)
	ctx := context.Background()

	// user:rp-0 .. user:rp-6 use 10, 20, ... 70 credits, in two consumes
	// each (so that each ledger holds two events).
	const n = 7
	id := func(i int) string { return fmt.Sprintf("user:rp-%d", i) }
	for i := range n {
		for j, amount := range []int64{int64(i+1) * 4, int64(i+1) * 6} {
			if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: id(i), Amount: amount, IdempotencyKey: fmt.Sprintf("rp-%d-%d", i, j)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The reports read Postgres: wait until every consume was flushed.
	for i := range n {
		want := int64(i+1) * 10
		flushed(t, func() (bool, string) {
			s, err := c.Usage(ctx, id(i), "", 1)
			return err == nil && s.Total == want, fmt.Sprintf("usage of %s = %+v, %v; want total %d", id(i), s, err, want)
		})
	}

	t.Run("usage", func(t *testing.T) {
		s, err := c.Usage(ctx, id(2), "credits", 7)
		if err != nil {
			t.Fatal(err)
		}
		today := time.Now().UTC().Format(time.DateOnly)
		if s.Subject != id(2) || s.Meter != "credits" || s.Total != 30 || len(s.Days) != 7 {
			t.Fatalf("usage = %+v; want 7 days, total 30", s)
		}
		if last := s.Days[6]; last.Day != today || last.Used != 30 {
			t.Errorf("last day = %+v; want today (%s) with 30", last, today)
		}
		if _, err := c.Usage(ctx, id(2), "", quota.MaxUsageDays+1); !client.IsInvalid(err) {
			t.Errorf("usage over %d days: %v; want 400", quota.MaxUsageDays+1, err)
		}
	})

	t.Run("ledger pages", func(t *testing.T) {
		first, err := c.Ledger(ctx, id(3), client.LedgerQuery{Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if first.Subject != id(3) || len(first.Events) != 1 || first.Events[0].Amount != 24 || first.Events[0].Kind != "consume" || first.NextCursor == "" {
			t.Fatalf("first page = %+v; want the latest consume (24) and a cursor", first)
		}
		second, err := c.Ledger(ctx, id(3), client.LedgerQuery{Limit: 1, Cursor: first.NextCursor})
		if err != nil {
			t.Fatal(err)
		}
		if len(second.Events) != 1 || second.Events[0].Amount != 16 || second.Events[0].IdempotencyKey != "rp-3-0" || second.NextCursor != "" {
			t.Errorf("second page = %+v; want the first consume (16), the last page", second)
		}
		all, err := c.Ledger(ctx, id(3), client.LedgerQuery{Meter: "credits"})
		if err != nil || len(all.Events) != 2 || all.NextCursor != "" {
			t.Errorf("whole ledger = %+v, %v; want both events on one page", all, err)
		}
		_, err = c.Ledger(ctx, id(4), client.LedgerQuery{Cursor: first.NextCursor})
		var e *client.Error
		if !errors.As(err, &e) || !client.IsInvalid(err) || e.Field != "cursor" {
			t.Errorf("another subject's cursor: %v; want 400 on cursor", err)
		}
	})

	t.Run("subjects pages", func(t *testing.T) {
		var got []string
		cursor := ""
		for pages := 1; ; pages++ {
			page, err := c.Subjects(ctx, client.SubjectsQuery{Prefix: "user:rp-", Limit: 3, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Subjects) > 3 || pages > n {
				t.Fatalf("page %d = %+v; want at most 3 subjects, %d subjects in all", pages, page, n)
			}
			for _, r := range page.Subjects {
				got = append(got, r.Subject)
			}
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
		want := make([]string, n)
		for i := range n {
			want[i] = id(i)
		}
		if !slices.Equal(got, want) {
			t.Errorf("subjects by id = %v; want %v", got, want)
		}
	})

	t.Run("subjects by usage", func(t *testing.T) {
		// The order by usage is rolled up from the flushed counters every
		// QUOTAD_LISTING_REFRESH: until the first rollup after the flush,
		// the subjects have none.
		var page client.SubjectList
		flushed(t, func() (bool, string) {
			var err error
			page, err = c.Subjects(ctx, client.SubjectsQuery{Prefix: "user:rp-", Order: quota.OrderUsed, Meter: "credits", Limit: 2})
			return err == nil && len(page.Subjects) > 0 && page.Subjects[0].Subject == id(6), fmt.Sprintf("top by usage = %+v, %v", page, err)
		})
		if len(page.Subjects) != 2 || page.Subjects[0].Subject != id(6) || page.Subjects[1].Subject != id(5) || page.NextCursor == "" {
			t.Fatalf("top 2 by usage = %+v; want %s, %s and a cursor", page, id(6), id(5))
		}
		if m := page.Subjects[0].Meters; len(m) == 0 || m[0].Meter != "credits" || m[0].Used != 70 {
			t.Errorf("top row's meters = %+v; want credits used 70", m)
		}
		_, err := c.Subjects(ctx, client.SubjectsQuery{Prefix: "user:rp-", Cursor: page.NextCursor})
		var e *client.Error
		if !errors.As(err, &e) || !client.IsInvalid(err) || e.Field != "cursor" {
			t.Errorf("a by-usage cursor given to the by-id listing: %v; want 400 on cursor", err)
		}
	})
}

// flushed waits until cond holds: what quotad flushes to Postgres appears
// there within a few flush intervals. It fails with cond's last message
// after 15 s.
func flushed(tb testing.TB, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal(msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
