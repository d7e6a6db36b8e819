package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/quota"
)

// TestCalls drives every non-reservation route of the contract through
// the client against a real quotad, and checks the typed answers.
func TestCalls(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	ctx := context.Background()

	t.Run("check", func(t *testing.T) {
		res, err := c.Check(ctx, quota.CheckRequest{Subject: "user:calls-check", Amount: 100})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Allowed || res.Limit != 2500 || res.Remaining != 2500 || res.Plan != "free" || res.Meter != "credits" || res.ResetsAt.IsZero() {
			t.Errorf("check = %+v", res)
		}
	})
	t.Run("consume", func(t *testing.T) {
		res, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:calls-consume", Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000}, IdempotencyKey: "msg-1"})
		if err != nil {
			t.Fatal(err)
		}
		if !res.Applied || res.Duplicate || res.Amount != 360 || res.Used != 360 || res.Remaining != 2140 {
			t.Errorf("consume = %+v", res)
		}
		again, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:calls-consume", Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000}, IdempotencyKey: "msg-1"})
		if err != nil || !again.Duplicate || again.Used != 360 {
			t.Errorf("repeat = %+v, %v; want the first answer, duplicate", again, err)
		}
		over, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:calls-consume", Amount: 3000, Mode: quota.ModeEnforce})
		if err != nil || over.Applied || !over.Exceeded || over.Used != 360 {
			t.Errorf("enforce over the limit = %+v, %v; want not applied, exceeded", over, err)
		}
	})
	t.Run("subject", func(t *testing.T) {
		v, err := c.Subject(ctx, "anon:calls-visitor")
		if err != nil {
			t.Fatal(err)
		}
		if v.Plan != "anonymous" || len(v.Meters) != 1 || v.Meters[0].Limit != 1000 || v.Meters[0].Period != quota.PeriodMonth {
			t.Errorf("subject = %+v", v)
		}
		pro := "pro"
		v, err = c.PutSubject(ctx, "user:calls-pro", quota.SubjectUpdate{Plan: &pro})
		if err != nil || v.Plan != "pro" || v.Meters[0].Limit != 10_000 {
			t.Fatalf("put subject = %+v, %v", v, err)
		}
		if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:calls-pro", Amount: 70}); err != nil {
			t.Fatal(err)
		}
		v, err = c.Reset(ctx, "user:calls-pro", "")
		if err != nil || v.Meters[0].Used != 0 {
			t.Errorf("reset = %+v, %v; want used 0", v, err)
		}
	})
	t.Run("plans", func(t *testing.T) {
		ps, err := c.Plans(ctx)
		if err != nil || len(ps) < 3 {
			t.Fatalf("plans = %+v, %v", ps, err)
		}
		p, err := c.PutPlan(ctx, quota.Plan{Name: "team", Limits: map[string]quota.Limit{"credits": {Limit: 50_000, Period: quota.PeriodMonth}}})
		if err != nil || p.Name != "team" {
			t.Fatalf("put plan = %+v, %v", p, err)
		}
		p, err = c.Plan(ctx, "team")
		if err != nil || p.Limits["credits"].Limit != 50_000 {
			t.Errorf("plan = %+v, %v", p, err)
		}
	})
	t.Run("pricing", func(t *testing.T) {
		cost, err := c.Cost(ctx, quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000})
		if err != nil || cost.Credits != 360 || cost.USD.String() != "3" {
			t.Errorf("cost = %+v (%s), %v; want 360 credits, $3", cost, cost.USD, err)
		}
		pr, err := c.Pricing(ctx)
		if err != nil || len(pr.Prices) == 0 || pr.Margin.String() != "0.2" {
			t.Fatalf("pricing = %+v, %v", pr, err)
		}
		in, _ := quota.ParseDecimal("1")
		out, _ := quota.ParseDecimal("2")
		p, err := c.PutPrice(ctx, quota.Price{Model: "house-model", Input: in, Output: out})
		if err != nil || p.Model != "house-model" {
			t.Fatalf("put price = %+v, %v", p, err)
		}
		cost, err = c.Cost(ctx, quota.Usage{Model: "house-model", InputTokens: 1_000_000, OutputTokens: 1_000_000})
		if err != nil || cost.Credits != 360 {
			t.Errorf("cost with the new price = %+v, %v; want 360", cost, err)
		}
	})
	t.Run("keys", func(t *testing.T) {
		k, err := c.CreateKey(ctx, client.ScopeService, "calls")
		if err != nil || k.Key == "" || k.Scope != client.ScopeService {
			t.Fatalf("create key = %+v, %v", k, err)
		}
		svc := client.New(q.URL, k.Key, fast)
		if _, err := svc.Check(ctx, quota.CheckRequest{Subject: "user:calls-key"}); err != nil {
			t.Errorf("check with the new service key: %v", err)
		}
		_, err = svc.PutPlan(ctx, quota.Plan{Name: "nope", Limits: map[string]quota.Limit{"credits": {Limit: 1, Period: quota.PeriodDay}}})
		if !client.IsForbidden(err) {
			t.Errorf("put plan with a service key: %v; want 403", err)
		}
	})
}

// TestErrors checks that quotad's problem answers come back as typed
// *client.Error values that errors.As, errors.Is and the helpers match.
func TestErrors(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	ctx := context.Background()
	if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:errors", Amount: 5, IdempotencyKey: "k1"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		call   func() error
		status int
		field  string
		is     func(error) bool
		target error
	}{
		{"bad subject", func() error { _, err := c.Check(ctx, quota.CheckRequest{Subject: "bob"}); return err },
			400, "subject", client.IsInvalid, quota.ErrInvalid},
		{"unknown model", func() error {
			_, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:errors", Usage: &quota.Usage{Model: "no-such-model", InputTokens: 1}})
			return err
		}, 400, "usage.model", client.IsInvalid, quota.ErrInvalid},
		{"unknown plan", func() error { _, err := c.Plan(ctx, "no-such-plan"); return err },
			404, "", client.IsNotFound, quota.ErrNotFound},
		{"key reused for another request", func() error {
			_, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:errors", Amount: 6, IdempotencyKey: "k1"})
			return err
		}, 409, "", client.IsConflict, quota.ErrConflict},
		{"bad key", func() error {
			_, err := client.New(q.URL, "wrong", fast).Check(ctx, quota.CheckRequest{Subject: "user:errors"})
			return err
		}, 401, "", client.IsUnauthorized, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not a *client.Error", err, err)
			}
			if e.Status != tt.status || e.Field != tt.field || e.Title != http.StatusText(tt.status) || e.Detail == "" {
				t.Errorf("error = %+v; want status %d, field %q, a title and a detail", e, tt.status, tt.field)
			}
			if !tt.is(err) {
				t.Errorf("helper does not match %v", err)
			}
			if tt.target != nil && !errors.Is(err, tt.target) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.target)
			}
			if client.IsUnavailable(err) {
				t.Errorf("IsUnavailable(%v) = true", err)
			}
		})
	}
}

// TestRetryCountsOnce loses quotad's answer to a consume after quotad
// applied it; the client's retry carries the same (generated) idempotency
// key, so the usage counts once.
func TestRetryCountsOnce(t *testing.T) {
	q := quotadtest.Start(t)
	admin := adminClient(q)
	ctx := context.Background()

	for _, tt := range []struct {
		name  string
		fault fault
		opts  []client.Option
	}{
		{"connection cut before the answer", dropAns, nil},
		{"answer later than the attempt timeout", slowAns, []client.Option{client.WithAttemptTimeout(300 * time.Millisecond)}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newProxy(t, q.URL)
			p.slow = time.Second
			c := client.New(p.srv.URL, quotadtest.AdminKey, append([]client.Option{fast}, tt.opts...)...)
			subject := "user:retry-" + map[fault]string{dropAns: "drop", slowAns: "slow"}[tt.fault]
			p.fail("/v1/consume", tt.fault)
			res, err := c.Consume(ctx, quota.ConsumeRequest{Subject: subject, Amount: 7})
			if err != nil {
				t.Fatal(err)
			}
			if !res.Duplicate || res.Used != 7 {
				t.Errorf("consume = %+v; want the first try's answer (duplicate, used 7)", res)
			}
			reqs := p.requests("/v1/consume")
			if len(reqs) != 2 {
				t.Fatalf("quotad saw %d consumes; want 2 (the lost one and its retry)", len(reqs))
			}
			k1, k2 := idempotencyKey(t, reqs[0].body), idempotencyKey(t, reqs[1].body)
			if k1 == "" || k1 != k2 {
				t.Errorf("idempotency keys %q and %q; want one generated key on both tries", k1, k2)
			}
			if m := meter(t, admin, subject); m.Used != 7 {
				t.Errorf("used = %d after the retried consume; want 7", m.Used)
			}
		})
	}

	t.Run("two calls get two keys", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		for range 2 {
			if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:retry-two", Amount: 3}); err != nil {
				t.Fatal(err)
			}
		}
		reqs := p.requests("/v1/consume")
		if k1, k2 := idempotencyKey(t, reqs[0].body), idempotencyKey(t, reqs[1].body); k1 == k2 {
			t.Errorf("two calls shared the key %q", k1)
		}
		if m := meter(t, admin, "user:retry-two"); m.Used != 6 {
			t.Errorf("used = %d; want 6", m.Used)
		}
	})

	t.Run("503 is retried", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		p.fail("/v1/check", fake503, fake503)
		res, err := c.Check(ctx, quota.CheckRequest{Subject: "user:retry-503"})
		if err != nil || !res.Allowed {
			t.Fatalf("check = %+v, %v", res, err)
		}
		if n := len(p.requests("/v1/check")); n != 3 {
			t.Errorf("%d tries; want 3", n)
		}
	})

	t.Run("503 with Retry-After", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, client.WithRetry(2, 10*time.Millisecond, 200*time.Millisecond))
		p.fail("/v1/consume", fake503RA)
		start := time.Now()
		res, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:retry-after", Amount: 2})
		if err != nil || res.Used != 2 {
			t.Fatalf("consume = %+v, %v", res, err)
		}
		// Retry-After: 1, bounded by the 200 ms maximum backoff.
		if d := time.Since(start); d < 200*time.Millisecond || d > 900*time.Millisecond {
			t.Errorf("the retry came after %v; want the bounded Retry-After, 200 ms", d)
		}
		p.fail("/v1/consume", fake503RA, fake503RA)
		_, err = c.Consume(ctx, quota.ConsumeRequest{Subject: "user:retry-after", Amount: 2})
		var e *client.Error
		if !errors.As(err, &e) || e.Status != 503 || e.RetryAfter != time.Second || !client.IsUnavailable(err) {
			t.Errorf("err = %#v; want the 503 with its Retry-After", err)
		}
	})

	t.Run("a 400 is not retried", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		if _, err := c.Check(ctx, quota.CheckRequest{Subject: "bob"}); !client.IsInvalid(err) {
			t.Fatalf("err = %v; want 400", err)
		}
		if n := len(p.requests("/v1/check")); n != 1 {
			t.Errorf("%d tries; want 1", n)
		}
	})

	t.Run("create key is not retried once sent", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		p.fail("/v1/keys", dropAns)
		_, err := c.CreateKey(ctx, client.ScopeService, "once")
		if !client.IsUnavailable(err) {
			t.Errorf("err = %v; want unavailable", err)
		}
		if n := len(p.requests("/v1/keys")); n != 1 {
			t.Errorf("%d tries; want 1: a second would mint a second key", n)
		}
	})

	t.Run("retries are bounded", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		p.fail("/v1/check", fake503, fake503, fake503, fake503, fake503)
		_, err := c.Check(ctx, quota.CheckRequest{Subject: "user:retry-bounded"})
		if !client.IsUnavailable(err) || client.StatusOf(err) != 503 {
			t.Errorf("err = %v; want the last 503", err)
		}
		if n := len(p.requests("/v1/check")); n != 4 {
			t.Errorf("%d tries; want 4", n)
		}
	})
}

// TestFailMode points clients at a port nothing listens on.
func TestFailMode(t *testing.T) {
	ctx := context.Background()
	url := deadURL(t)

	t.Run("closed", func(t *testing.T) {
		c := client.New(url, "k", fast)
		_, err := c.Check(ctx, quota.CheckRequest{Subject: "user:1"})
		if !client.IsUnavailable(err) || !errors.Is(err, quota.ErrUnavailable) {
			t.Errorf("check: %v; want unavailable", err)
		}
		if _, err := c.Reserve(ctx, quota.ReserveRequest{Subject: "user:1", Amount: 5}); !client.IsUnavailable(err) {
			t.Errorf("reserve: %v; want unavailable", err)
		}
	})

	t.Run("open", func(t *testing.T) {
		var mu sync.Mutex
		var ops []string
		c := client.New(url, "k", fast, client.WithFailMode(client.FailOpen), client.OnFailOpen(func(op, subject string, err error) {
			mu.Lock()
			defer mu.Unlock()
			if subject != "user:1" || !client.IsUnavailable(err) {
				t.Errorf("hook(%q, %q, %v)", op, subject, err)
			}
			ops = append(ops, op)
		}))
		ck, err := c.Check(ctx, quota.CheckRequest{Subject: "user:1"})
		if err != nil || !ck.Allowed {
			t.Errorf("check = %+v, %v; want allowed", ck, err)
		}
		rv, err := c.Reserve(ctx, quota.ReserveRequest{Subject: "user:1", Amount: 5})
		if err != nil || !rv.Granted || rv.ID != "" {
			t.Errorf("reserve = %+v, %v; want granted with no id", rv, err)
		}
		if _, err := c.Commit(ctx, rv.ID, quota.CommitRequest{Amount: 9}); err != nil {
			t.Errorf("commit of the empty id: %v", err)
		}
		if _, err := c.Release(ctx, rv.ID); err != nil {
			t.Errorf("release of the empty id: %v", err)
		}
		if _, err := c.Consume(ctx, quota.ConsumeRequest{Subject: "user:1", Amount: 1}); !client.IsUnavailable(err) {
			t.Errorf("consume: %v; want unavailable (usage is never dropped silently)", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(ops) != 2 || ops[0] != "check" || ops[1] != "reserve" {
			t.Errorf("hook saw %v; want [check reserve]", ops)
		}
	})

	t.Run("a canceled context is not unavailability", func(t *testing.T) {
		c := client.New(url, "k", fast, client.WithFailMode(client.FailOpen))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := c.Check(cctx, quota.CheckRequest{Subject: "user:1"})
		if !errors.Is(err, context.Canceled) || client.IsUnavailable(err) {
			t.Errorf("check = %v; want context.Canceled, not a fail-open answer", err)
		}
	})
}

// TestReservations runs a hold's life through the client: reserve,
// refusal when it does not fit, commit above the estimate, release, and
// the 404 and 409 of the contract.
func TestReservations(t *testing.T) {
	q := quotadtest.Start(t)
	c := adminClient(q)
	ctx := context.Background()
	const subject = "anon:reservations" // 1,000 credits a month

	rv, err := c.Reserve(ctx, quota.ReserveRequest{Subject: subject, Amount: 600})
	if err != nil {
		t.Fatal(err)
	}
	if !rv.Granted || rv.ID == "" || rv.Amount != 600 || rv.Reserved != 600 || rv.Remaining != 400 || rv.ExpiresAt == nil {
		t.Fatalf("reserve = %+v", rv)
	}
	refused, err := c.Reserve(ctx, quota.ReserveRequest{Subject: subject, Amount: 500})
	if err != nil || refused.Granted || refused.ID != "" || refused.Remaining != 400 || refused.Limit != 1000 {
		t.Errorf("reserve past the limit = %+v, %v; want refused, remaining 400", refused, err)
	}
	if m := meter(t, c, subject); m.Reserved != 600 || m.Used != 0 {
		t.Errorf("while held: %+v; want reserved 600", m)
	}

	cm, err := c.Commit(ctx, rv.ID, quota.CommitRequest{Amount: 900})
	if err != nil {
		t.Fatal(err)
	}
	if cm.Reservation != quota.ReservationCommitted || cm.Amount != 900 || cm.Used != 900 || cm.Reserved != 0 {
		t.Errorf("commit above the estimate = %+v; want 900 recorded in full", cm)
	}
	again, err := c.Commit(ctx, rv.ID, quota.CommitRequest{Amount: 900})
	if err != nil || !again.Duplicate || again.Used != 900 {
		t.Errorf("second commit = %+v, %v; want the first answer", again, err)
	}
	if _, err := c.Release(ctx, rv.ID); !client.IsConflict(err) {
		t.Errorf("release after commit: %v; want 409", err)
	}

	rv2, err := c.Reserve(ctx, quota.ReserveRequest{Subject: subject, Amount: 50, TTLSeconds: 60})
	if err != nil || !rv2.Granted {
		t.Fatalf("reserve = %+v, %v", rv2, err)
	}
	rel, err := c.Release(ctx, rv2.ID)
	if err != nil || rel.Reservation != quota.ReservationReleased || rel.Reserved != 0 || rel.Used != 900 {
		t.Errorf("release = %+v, %v", rel, err)
	}
	if _, err := c.Commit(ctx, rv2.ID, quota.CommitRequest{}); !client.IsConflict(err) {
		t.Errorf("commit after release: %v; want 409", err)
	}
	if _, err := c.Commit(ctx, "rsv_nonsense", quota.CommitRequest{}); !client.IsNotFound(err) {
		t.Errorf("commit of an unknown id: %v; want 404", err)
	}

	t.Run("a lost answer holds once", func(t *testing.T) {
		p := newProxy(t, q.URL)
		pc := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		p.fail("/v1/reservations", dropAns)
		rv, err := pc.Reserve(ctx, quota.ReserveRequest{Subject: "user:reserve-retry", Amount: 30})
		if err != nil || !rv.Granted || !rv.Duplicate {
			t.Fatalf("reserve = %+v, %v; want the first try's hold", rv, err)
		}
		if m := meter(t, c, "user:reserve-retry"); m.Reserved != 30 {
			t.Errorf("reserved = %d; want 30 (held once)", m.Reserved)
		}
		// A commit whose answer is lost is retried too, by id.
		p.fail("/v1/reservations/"+rv.ID+"/commit", dropAns)
		cm, err := pc.Commit(ctx, rv.ID, quota.CommitRequest{Amount: 40})
		if err != nil || cm.Used != 40 {
			t.Fatalf("commit = %+v, %v", cm, err)
		}
		if m := meter(t, c, "user:reserve-retry"); m.Used != 40 || m.Reserved != 0 {
			t.Errorf("after the retried commit: %+v; want used 40, reserved 0", m)
		}
	})
}

// TestConsumeBatch checks that a batch answers in order, that one refused
// event is its own result's *Error, and that a lost answer is retried
// without counting twice.
func TestConsumeBatch(t *testing.T) {
	q := quotadtest.Start(t)
	p := newProxy(t, q.URL)
	c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
	ctx := context.Background()
	events := []quota.ConsumeRequest{
		{Subject: "user:batch-a", Amount: 10},
		{Subject: "bob", Amount: 1},
		{Subject: "user:batch-b", Usage: &quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000}},
		{Subject: "user:batch-a", Amount: 5},
	}
	p.fail("/v1/consume/batch", dropAns)
	res, err := c.ConsumeBatch(ctx, events)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d results; want 4", len(res))
	}
	if res[0].Err != nil || !res[0].Duplicate || res[0].Used != 10 {
		t.Errorf("result 0 = %+v; want used 10, duplicate (the retry of the lost answer)", res[0])
	}
	if res[1].Err == nil || res[1].Err.Status != 400 || res[1].Err.Field != "subject" {
		t.Errorf("result 1 = %+v; want a 400 on subject", res[1])
	}
	if res[2].Err != nil || res[2].Amount != 360 {
		t.Errorf("result 2 = %+v; want 360 credits", res[2])
	}
	if res[3].Err != nil || res[3].Used != 15 {
		t.Errorf("result 3 = %+v; want used 15", res[3])
	}
	if events[0].IdempotencyKey != "" {
		t.Error("ConsumeBatch changed the caller's events")
	}
	reqs := p.requests("/v1/consume/batch")
	if len(reqs) != 2 || string(reqs[0].body) != string(reqs[1].body) {
		t.Errorf("tries: %d, bodies equal: %v; want 2 identical tries", len(reqs), len(reqs) == 2 && string(reqs[0].body) == string(reqs[1].body))
	}
	admin := adminClient(q)
	if m := meter(t, admin, "user:batch-a"); m.Used != 15 {
		t.Errorf("user:batch-a used %d; want 15", m.Used)
	}

	t.Run("a shed event is sent again", func(t *testing.T) {
		p.fail("/v1/consume/batch", shedFirst)
		before := len(p.requests("/v1/consume/batch"))
		res, err := c.ConsumeBatch(ctx, []quota.ConsumeRequest{
			{Subject: "user:batch-shed", Amount: 4},
			{Subject: "user:batch-shed", Amount: 5},
		})
		if err != nil {
			t.Fatal(err)
		}
		if res[0].Err != nil || res[0].Amount != 4 || res[1].Err != nil || res[1].Amount != 5 {
			t.Errorf("results %+v; want both applied", res)
		}
		reqs := p.requests("/v1/consume/batch")[before:]
		if len(reqs) != 2 {
			t.Fatalf("%d batch requests; want 2 (the batch, then the shed event alone)", len(reqs))
		}
		var first, second struct {
			Events []quota.ConsumeRequest `json:"events"`
		}
		_ = json.Unmarshal(reqs[0].body, &first)
		_ = json.Unmarshal(reqs[1].body, &second)
		if len(second.Events) != 1 || second.Events[0].IdempotencyKey != first.Events[0].IdempotencyKey {
			t.Errorf("second request %s; want the first event alone, with its key", reqs[1].body)
		}
		if m := meter(t, admin, "user:batch-shed"); m.Used != 9 {
			t.Errorf("used %d; want 9", m.Used)
		}
	})
}
