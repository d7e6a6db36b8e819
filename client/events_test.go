package client_test

import (
	"context"
	"testing"
	"time"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/quota"
)

// next returns the next change of ev that keep accepts, failing the test
// when the stream ends first.
func next(t *testing.T, ev *client.Events, keep func(quota.Change) bool) quota.Change {
	t.Helper()
	for ev.Next() {
		if ch := ev.Change(); keep(ch) {
			return ch
		}
	}
	t.Fatalf("the stream ended: %v", ev.Err())
	return quota.Change{}
}

func ofType(typ string) func(quota.Change) bool {
	return func(ch quota.Change) bool { return ch.Type == typ }
}

// TestEvents follows quotad's events stream through the client: the
// snapshot it starts with, typed changes as usage moves, a resume with
// Last-Event-ID after the connection is cut, and the every-subject stream.
func TestEvents(t *testing.T) {
	q := quotadtest.Start(t)
	admin := adminClient(q)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("a subject's changes", func(t *testing.T) {
		ev := admin.Events(ctx, "user:ev")
		defer ev.Close()
		s := next(t, ev, func(quota.Change) bool { return true })
		if s.Type != client.ChangeSnapshot || s.Subject != "user:ev" || s.Meter != "credits" || s.Remaining != 2500 || s.Plan != "free" {
			t.Fatalf("first change %+v; want the snapshot", s)
		}
		if _, err := admin.Consume(ctx, quota.ConsumeRequest{Subject: "user:ev", Amount: 10}); err != nil {
			t.Fatal(err)
		}
		u := next(t, ev, ofType(quota.ChangeUsage))
		if u.Subject != "user:ev" || u.Amount != 10 || u.Used != 10 || u.Remaining != 2490 || u.At.IsZero() || ev.LastEventID() == "" {
			t.Errorf("usage change %+v (id %q)", u, ev.LastEventID())
		}
		rv, err := admin.Reserve(ctx, quota.ReserveRequest{Subject: "user:ev", Amount: 100})
		if err != nil {
			t.Fatal(err)
		}
		r := next(t, ev, ofType(quota.ChangeReservation))
		if r.Action != "reserved" || r.Reserved != 100 || r.Remaining != 2390 {
			t.Errorf("reservation change %+v", r)
		}
		if _, err := admin.Commit(ctx, rv.ID, quota.CommitRequest{Amount: 1300}); err != nil {
			t.Fatal(err)
		}
		th := next(t, ev, ofType(quota.ChangeThreshold))
		if th.Threshold != 50 || th.Used != 1310 {
			t.Errorf("threshold change %+v; want 50 %% crossed at 1310 used", th)
		}
	})

	t.Run("resumes after a cut with Last-Event-ID", func(t *testing.T) {
		p := newProxy(t, q.URL)
		c := client.New(p.srv.URL, quotadtest.AdminKey, fast)
		path := "/v1/subjects/user:ev-resume/events"
		p.fail(path, cutEvent) // the first connection ends after its first change
		ev := c.Events(ctx, "user:ev-resume")
		defer ev.Close()
		next(t, ev, ofType(client.ChangeSnapshot))
		if _, err := admin.Consume(ctx, quota.ConsumeRequest{Subject: "user:ev-resume", Amount: 1}); err != nil {
			t.Fatal(err)
		}
		a := next(t, ev, ofType(quota.ChangeUsage))
		idA := ev.LastEventID()
		// The stream is cut now; this change happens while the client
		// reconnects, and must come through the replay.
		if _, err := admin.Consume(ctx, quota.ConsumeRequest{Subject: "user:ev-resume", Amount: 2}); err != nil {
			t.Fatal(err)
		}
		b := next(t, ev, func(quota.Change) bool { return true })
		if a.Used != 1 || b.Type != quota.ChangeUsage || b.Used != 3 {
			t.Errorf("changes %+v then %+v; want usage 1, then usage 3 (no snapshot, no repeat)", a, b)
		}
		reqs := p.requests(path)
		if len(reqs) != 2 || reqs[1].header.Get("Last-Event-ID") != idA {
			t.Fatalf("%d connections (%v); want 2, the second with Last-Event-ID %q", len(reqs), reqs, idA)
		}
	})

	t.Run("every subject", func(t *testing.T) {
		ev := admin.Events(ctx, "")
		defer ev.Close()
		next(t, ev, ofType(client.ChangeHello))
		if _, err := admin.Consume(ctx, quota.ConsumeRequest{Subject: "anon:ev-all", Amount: 4}); err != nil {
			t.Fatal(err)
		}
		u := next(t, ev, func(ch quota.Change) bool { return ch.Type == quota.ChangeUsage && ch.Subject == "anon:ev-all" })
		if u.Used != 4 || u.Limit != 1000 {
			t.Errorf("usage change %+v", u)
		}
	})

	t.Run("refusals end the stream with the problem", func(t *testing.T) {
		key, err := admin.CreateKey(ctx, client.ScopeService, "events")
		if err != nil {
			t.Fatal(err)
		}
		svc := client.New(q.URL, key.Key, fast)
		if ev := svc.Events(ctx, ""); ev.Next() || !client.IsForbidden(ev.Err()) {
			t.Errorf("every subject with a service key: %v; want 403", ev.Err())
		}
		if ev := svc.Events(ctx, "bob"); ev.Next() || !client.IsInvalid(ev.Err()) {
			t.Errorf("bad subject: %v; want 400", ev.Err())
		}
	})
}
