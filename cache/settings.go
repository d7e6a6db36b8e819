package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/quota"
)

// SettingsSource is the Postgres store of plans, subjects and prices.
type SettingsSource interface {
	quota.Plans
	quota.Subjects
	quota.Prices
	// StaleSubjects lists subjects whose settings changed in Postgres and
	// may be older in Redis (the change was made while Redis was
	// unreachable, or not copied there yet).
	StaleSubjects(ctx context.Context) ([]quota.Subject, error)
	// SubjectsSynced marks subjects as matching Redis again: those whose
	// row still holds the given settings.
	SubjectsSynced(ctx context.Context, subs []quota.Subject) error
}

// Settings caches plans and subjects in L1 (ristretto) and subjects in L2
// (Redis) over Postgres. It implements quota.Plans, quota.Subjects and
// quota.Prices.
//
// A subject seen for the first time is provisioned in Redis (SET NX, so
// every instance agrees on its cycle anchor) and reaches Postgres through
// the write-behind flusher: a burst of new subjects costs no Postgres
// write on the request path. Admin changes write Postgres first, then
// Redis, then tell every instance's L1 through the Bus.
type Settings struct {
	src      SettingsSource
	rdb      redis.UniversalClient
	health   *Health
	bus      *Bus
	layout   Layout   // names the keys (SetLayout)
	plans    sync.Map // name -> planEntry; plans are few
	subjects *ristretto.Cache[string, subjectEntry]
	ttl      int64 // nanoseconds
	// clock is a coarse "now" (unix nanoseconds, updated every 100 ms) for
	// entry expiry: reading the real clock costs more than the rest of an
	// L1 lookup here, and expiry needs no precision.
	clock atomic.Int64
	// lastPlans keeps the last plan read from Postgres, served when
	// Postgres is down and L1 has let the plan go.
	lastPlans sync.Map
	// onPrices runs when prices changed on any instance (the service
	// reloads its cost book). Set after the bus and the recovery already
	// run (the service is built on these settings), hence atomic.
	onPrices atomic.Pointer[func(ctx context.Context)]
}

// SetOnPrices sets what runs when prices changed on any instance, or may
// have while messages were missed.
func (s *Settings) SetOnPrices(f func(ctx context.Context)) { s.onPrices.Store(&f) }

// pricesChanged runs the OnPrices function, if set.
func (s *Settings) pricesChanged(ctx context.Context) {
	if f := s.onPrices.Load(); f != nil {
		(*f)(ctx)
	}
}

var (
	_ quota.Plans    = (*Settings)(nil)
	_ quota.Subjects = (*Settings)(nil)
	_ quota.Prices   = (*Settings)(nil)
)

type subjectEntry struct {
	sub     quota.Subject
	expires int64
}

type planEntry struct {
	plan    quota.Plan
	expires int64
}

// subjectTTL bounds how long Redis keeps a subject's settings; after it
// they are read from Postgres again.
const subjectTTL = 24 * time.Hour

// NewSettings returns the settings tiers over src. ttl bounds how long L1
// keeps an entry even without an invalidation (a missed message), and
// maxSubjects how many subjects it keeps (0: DefaultMaxItems).
// The coarse clock runs until ctx ends.
func NewSettings(ctx context.Context, src SettingsSource, rdb redis.UniversalClient, health *Health, bus *Bus, ttl time.Duration, maxSubjects int64) (*Settings, error) {
	if maxSubjects <= 0 {
		maxSubjects = DefaultMaxItems
	}
	// Each subject costs 1 (see NewSnapshots on IgnoreInternalCost).
	subjects, err := ristretto.NewCache(&ristretto.Config[string, subjectEntry]{
		NumCounters: 10 * maxSubjects, MaxCost: maxSubjects, BufferItems: 64, IgnoreInternalCost: true,
	})
	if err != nil {
		return nil, err
	}
	s := &Settings{src: src, rdb: rdb, health: health, bus: bus, subjects: subjects, ttl: int64(ttl)}
	s.clock.Store(time.Now().UnixNano())
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				s.clock.Store(now.UnixNano())
			}
		}
	}()
	return s, nil
}

// SetLayout sets the key layout (see keys.go). Call it before serving.
func (s *Settings) SetLayout(l Layout) { s.layout = l }

func (s *Settings) cacheSubject(sub quota.Subject) {
	s.subjects.Set(sub.ID, subjectEntry{sub: sub, expires: s.clock.Load() + s.ttl}, 1)
}

// Plans implements quota.Plans (always from Postgres: listing is rare).
func (s *Settings) Plans(ctx context.Context) ([]quota.Plan, error) { return s.src.Plans(ctx) }

// Plan implements quota.Plans.
func (s *Settings) Plan(ctx context.Context, name string) (quota.Plan, error) {
	if e, ok := s.plans.Load(name); ok && e.(planEntry).expires > s.clock.Load() {
		return e.(planEntry).plan, nil
	}
	p, err := s.src.Plan(ctx, name)
	if errors.Is(err, quota.ErrUnavailable) {
		if last, ok := s.lastPlans.Load(name); ok {
			return last.(quota.Plan), nil
		}
	}
	if err != nil {
		return quota.Plan{}, err
	}
	s.lastPlans.Store(name, p)
	s.plans.Store(name, planEntry{plan: p, expires: s.clock.Load() + s.ttl})
	return p, nil
}

// PutPlan implements quota.Plans.
func (s *Settings) PutPlan(ctx context.Context, p quota.Plan) error {
	if err := s.src.PutPlan(ctx, p); err != nil {
		return err
	}
	s.plans.Delete(p.Name)
	s.bus.Publish(ctx, "plan "+p.Name)
	return nil
}

// DeletePlan implements quota.Plans: Postgres, then every L1.
func (s *Settings) DeletePlan(ctx context.Context, name string) (quota.Plan, error) {
	p, err := s.src.DeletePlan(ctx, name)
	if err != nil {
		return quota.Plan{}, err
	}
	s.plans.Delete(name)
	s.lastPlans.Delete(name)
	s.bus.Publish(ctx, "plan "+name)
	return p, nil
}

// Subject implements quota.Subjects: L1, then Redis, then Postgres.
func (s *Settings) Subject(ctx context.Context, id string) (quota.Subject, error) {
	if e, ok := s.subjects.Get(id); ok && e.expires > s.clock.Load() {
		return e.sub, nil
	}
	if s.health.Up() {
		raw, err := s.rdb.Get(ctx, s.layout.subjectKey(id)).Bytes()
		switch {
		case err == nil:
			var sub quota.Subject
			if err := json.Unmarshal(raw, &sub); err != nil {
				return quota.Subject{}, fmt.Errorf("subject %s in redis: %w", id, err)
			}
			s.cacheSubject(sub)
			return sub, nil
		case errors.Is(err, redis.Nil):
		default:
			s.health.Failed(err)
		}
	}
	// A cache fill, like a counter's load (Counter.load): the subject's
	// drop mark is read before Postgres, and the copy is stored only if
	// no drop of stale copies came in between (it may miss a change made
	// while Redis was unreachable). Losing the fill costs a Postgres read.
	drops, fill := "", s.health.Up()
	if fill {
		var err error
		if drops, err = s.rdb.Get(ctx, s.layout.dropsKey(id)).Result(); err != nil && !errors.Is(err, redis.Nil) {
			fill = false
		}
	}
	sub, err := s.src.Subject(ctx, id)
	if err != nil {
		return quota.Subject{}, err
	}
	if raw, err := json.Marshal(sub); err == nil && fill {
		loadScript.Run(ctx, s.rdb, []string{s.layout.subjectKey(id), s.layout.dropsKey(id)}, raw, time.Now().Add(subjectTTL).Unix(), drops)
	}
	s.cacheSubject(sub)
	return sub, nil
}

// ProvisionSubject implements quota.Subjects through Redis when it is up
// (Postgres gets the subject from the flusher), else through Postgres.
func (s *Settings) ProvisionSubject(ctx context.Context, sub quota.Subject) (quota.Subject, error) {
	raw, err := json.Marshal(sub)
	if err != nil {
		return quota.Subject{}, err
	}
	ev := appendEvent(nil, &quota.Event{ID: quota.NewEventID(sub.CycleAnchor), Kind: quota.EventProvision, Subject: sub.ID, At: sub.CycleAnchor, Settings: &sub})
	return redisOrDirect(ctx, s.health,
		func() (quota.Subject, error) {
			stored, err := provisionScript.Run(ctx, s.rdb, []string{s.layout.subjectKey(sub.ID), s.layout.stream(sub.ID)}, raw, ev, int64(subjectTTL/time.Second)).Text()
			if err != nil {
				return quota.Subject{}, err
			}
			var got quota.Subject
			if err := json.Unmarshal([]byte(stored), &got); err != nil {
				return quota.Subject{}, fmt.Errorf("subject %s in redis: %w", sub.ID, err)
			}
			s.cacheSubject(got)
			return got, nil
		},
		// Marked stale in Postgres, within the health gate: the recovery
		// that drops Redis's copies of stale subjects (one another instance
		// may have provisioned there meanwhile) waits for it.
		func(ctx context.Context, _ bool) (quota.Subject, error) { return s.src.ProvisionSubject(ctx, sub) },
		nil) // SET NX: provisioning again changes nothing
}

// PutSubject implements quota.Subjects: Postgres, then Redis, then every L1.
func (s *Settings) PutSubject(ctx context.Context, sub quota.Subject) error {
	if err := s.src.PutSubject(ctx, sub); err != nil {
		return err
	}
	// Postgres marked the subject stale; once Redis has the change it is
	// not. If Redis does not get it (unreachable), or the mark stays (the
	// second write failed), the next recovery drops Redis's copy; one
	// under way, which may have listed the stale subjects before this
	// write committed, is waited for, and the change then goes to Redis.
	if raw, err := json.Marshal(sub); err == nil && s.health.UpAfterRecovery() {
		if err := s.rdb.Set(ctx, s.layout.subjectKey(sub.ID), raw, subjectTTL).Err(); err != nil {
			s.health.Failed(err)
		} else {
			_ = s.src.SubjectsSynced(ctx, []quota.Subject{sub})
		}
	}
	s.subjects.Del(sub.ID)
	s.bus.Publish(ctx, "subject "+sub.ID)
	return nil
}

// Prices implements quota.Prices.
func (s *Settings) Prices(ctx context.Context) ([]quota.Price, error) { return s.src.Prices(ctx) }

// PutPrice implements quota.Prices and tells every instance to reload.
func (s *Settings) PutPrice(ctx context.Context, p quota.Price) error {
	if err := s.src.PutPrice(ctx, p); err != nil {
		return err
	}
	s.bus.Publish(ctx, "prices")
	return nil
}

// DeletePrice implements quota.Prices and tells every instance to reload.
func (s *Settings) DeletePrice(ctx context.Context, model string) (quota.Price, error) {
	p, err := s.src.DeletePrice(ctx, model)
	if err != nil {
		return quota.Price{}, err
	}
	s.bus.Publish(ctx, "prices")
	return p, nil
}

// Invalidate handles a Bus message about settings.
func (s *Settings) Invalidate(ctx context.Context, msg string) {
	kind, arg, _ := strings.Cut(msg, " ")
	switch kind {
	case "plan":
		s.plans.Delete(arg)
	case "subject":
		s.subjects.Del(arg)
	case "subjects":
		s.subjects.Clear()
	case "prices":
		s.pricesChanged(ctx)
	}
}

// DropStale drops Redis's copies of subjects whose settings changed in
// Postgres while Redis was unreachable (they would be served for up to a
// day), and tells every instance to drop the subjects in its L1: the
// invalidations sent meanwhile were lost. It runs before Redis is used
// again. A fill that read Postgres before the change does not store its
// copy after the drop (see dropStale). The marks are cleared where the
// row still holds the settings listed: a change made meanwhile stays
// marked for the next recovery.
func (s *Settings) DropStale(ctx context.Context) error {
	subs, err := s.src.StaleSubjects(ctx)
	if err != nil || len(subs) == 0 {
		return err
	}
	ids, keys := make([]string, len(subs)), make([]string, len(subs))
	for i, sub := range subs {
		ids[i], keys[i] = sub.ID, s.layout.subjectKey(sub.ID)
	}
	if err := dropStale(ctx, s.rdb, s.layout, ids, keys); err != nil {
		return fmt.Errorf("drop stale subjects: %w", err)
	}
	if err := s.src.SubjectsSynced(ctx, subs); err != nil {
		return err
	}
	if s.bus != nil { // not waited for: the recovery holds direct writes back meanwhile
		go s.bus.Publish(context.WithoutCancel(ctx), "subjects")
	}
	return nil
}

// Clear drops every L1 entry and reloads the prices in the background
// (Redis came back, or the invalidation subscription was made again:
// messages may have been missed, "prices" ones too).
func (s *Settings) Clear() {
	s.plans.Clear()
	s.subjects.Clear()
	go s.pricesChanged(context.Background())
}

// Plan entries hold a value copy; a plan's Limits map is shared with
// callers, who must not change it (quota.Service does not).
