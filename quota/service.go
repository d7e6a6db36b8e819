package quota

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"sync/atomic"
	"time"
)

// Consume modes.
const (
	ModeRecord  = "record"  // usage that already happened: always applied
	ModeEnforce = "enforce" // applied only if it fits under the limit
)

// Stores is what a Service is built on.
type Stores struct {
	Plans    Plans
	Subjects Subjects
	Prices   Prices
	Counter  Counter
	Holds    Holds   // nil: reservations are unavailable (they need Redis)
	Reports  Reports // nil: listings and history answer ErrUnavailable
}

// Service answers every quota operation. It holds no usage itself: every
// answer comes from its stores, so several instances can serve one
// installation.
type Service struct {
	plans    Plans
	subjects Subjects
	prices   Prices
	counter  Counter
	holds    Holds
	reports  Reports
	notifier Notifier
	now      func() time.Time
	margin   Decimal
	book     atomic.Pointer[CostBook]
	onOpen   func(op, subject string, err error) // set by FailOpen
}

// FailOpen makes Check and Consume answer "allowed" (and "applied") when
// no store can answer, instead of ErrUnavailable (QUOTAD_FAIL_MODE=open);
// not an enforce consume refused because Redis is unreachable
// (ErrEnforceUnavailable: Postgres may be up, and was told not to take it).
// Such answers count nothing; onOpen is called for each one so that it is
// logged and counted. Call it before serving.
func (s *Service) FailOpen(onOpen func(op, subject string, err error)) { s.onOpen = onOpen }

// SetNotifier makes the service tell n about every change it makes (see
// Change). Call it before serving.
func (s *Service) SetNotifier(n Notifier) { s.notifier = n }

// NewService returns a Service over stores. now is the clock (time.Now when
// nil); margin is the cost book's margin. Call ReloadPrices before pricing.
func NewService(st Stores, now func() time.Time, margin Decimal) *Service {
	if now == nil {
		now = time.Now
	}
	s := &Service{plans: st.Plans, subjects: st.Subjects, prices: st.Prices, counter: st.Counter, holds: st.Holds, reports: st.Reports, now: now, margin: margin}
	s.book.Store(NewCostBook(margin, nil))
	return s
}

// ReloadPrices rebuilds the cost book from the price store. Instances call it
// at start and whenever prices change anywhere.
func (s *Service) ReloadPrices(ctx context.Context) error {
	ps, err := s.prices.Prices(ctx)
	if err != nil {
		return fmt.Errorf("load prices: %w", err)
	}
	s.book.Store(NewCostBook(s.margin, ps))
	return nil
}

// Time is an instant that encodes as RFC 3339 in UTC, and as null when zero
// (the lifetime period never resets).
type Time struct{ time.Time }

// MarshalJSON implements json.Marshaler.
func (t Time) MarshalJSON() ([]byte, error) {
	if t.IsZero() {
		return []byte("null"), nil
	}
	b := make([]byte, 0, len(time.RFC3339)+2)
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339)
	return append(b, '"'), nil
}

// CheckRequest asks whether Amount more of Meter may be spent by Subject.
type CheckRequest struct {
	Subject string `json:"subject"`
	Meter   string `json:"meter,omitempty"`  // default "credits"
	Amount  int64  `json:"amount,omitempty"` // default 1
}

// CheckResult answers a CheckRequest.
type CheckResult struct {
	Subject   string `json:"subject"`
	Meter     string `json:"meter"`
	Allowed   bool   `json:"allowed"`
	Used      int64  `json:"used"`
	Reserved  int64  `json:"reserved"`
	Limit     int64  `json:"limit"`
	Remaining int64  `json:"remaining"`
	ResetsAt  Time   `json:"resets_at"`
	Plan      string `json:"plan"`
}

// ConsumeRequest records or enforces usage. Exactly one of Amount and Usage
// is set; Usage is priced by the cost book.
type ConsumeRequest struct {
	Subject        string `json:"subject"`
	Meter          string `json:"meter,omitempty"`
	Amount         int64  `json:"amount,omitempty"`
	Usage          *Usage `json:"usage,omitempty"`
	Mode           string `json:"mode,omitempty"` // default "record"
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// ConsumeResult answers a ConsumeRequest.
type ConsumeResponse struct {
	Applied   bool  `json:"applied"`
	Duplicate bool  `json:"duplicate"`
	Amount    int64 `json:"amount"`
	Used      int64 `json:"used"`
	Reserved  int64 `json:"reserved"`
	Limit     int64 `json:"limit"`
	Remaining int64 `json:"remaining"`
	Exceeded  bool  `json:"exceeded"`
	ResetsAt  Time  `json:"resets_at"`
}

// MeterStatus is one meter of a SubjectView.
type MeterStatus struct {
	Meter     string `json:"meter"`
	Used      int64  `json:"used"`
	Reserved  int64  `json:"reserved"`
	Limit     int64  `json:"limit"`
	Remaining int64  `json:"remaining"`
	Period    Period `json:"period"`
	ResetsAt  Time   `json:"resets_at"`
	// Overage is the limit's own: usage may pass it (recorded, not
	// refused). OverageUsed is how far usage has passed it.
	Overage     bool  `json:"overage"`
	OverageUsed int64 `json:"overage_used"`
}

// SubjectView is a subject's settings and the usage of each of its meters.
type SubjectView struct {
	Subject     string           `json:"subject"`
	Plan        string           `json:"plan"`
	CycleAnchor time.Time        `json:"cycle_anchor"`
	Limits      map[string]Limit `json:"limits,omitempty"` // the subject's own overrides
	Meters      []MeterStatus    `json:"meters"`
}

// SubjectUpdate changes a subject's settings; nil fields stay as they are.
// Limits replaces all of the subject's overrides.
type SubjectUpdate struct {
	Plan        *string           `json:"plan,omitempty"`
	Limits      *map[string]Limit `json:"limits,omitempty"`
	CycleAnchor *time.Time        `json:"cycle_anchor,omitempty"`
}

// CostResult is the price of a Usage.
type CostResult struct {
	Credits int64   `json:"credits"`
	USD     Decimal `json:"usd"`
}

// Check answers whether req.Amount more may be spent now. It never writes:
// a subject never seen is answered from its kind's default plan with
// nothing used, and stays unprovisioned. Errors:
// ErrInvalid for a bad subject, meter or amount, or a meter without a limit.
func (s *Service) Check(ctx context.Context, req CheckRequest) (CheckResult, error) {
	res, err := s.check(ctx, req)
	if err != nil && s.onOpen != nil && errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrEnforceUnavailable) {
		s.onOpen("check", req.Subject, err)
		return CheckResult{Subject: req.Subject, Meter: cmp.Or(req.Meter, DefaultMeter), Allowed: true}, nil
	}
	return res, err
}

func (s *Service) check(ctx context.Context, req CheckRequest) (CheckResult, error) {
	kind, meter, err := parseTarget(req.Subject, req.Meter)
	if err != nil {
		return CheckResult{}, err
	}
	amount := req.Amount
	if amount == 0 {
		amount = 1
	}
	if amount < 0 || amount > MaxAmount {
		return CheckResult{}, errAmount
	}
	now := s.now()
	sub, seen, err := s.subject(ctx, req.Subject, kind, false)
	if err != nil {
		return CheckResult{}, err
	}
	plan, lim, err := s.limit(ctx, &sub, meter)
	if err != nil {
		return CheckResult{}, err
	}
	key := counterKey(&sub, meter, lim.Period, now)
	var t Tally // a subject never seen has counted nothing: no store is asked
	if seen {
		if t, err = s.counter.Used(ctx, UsageRead{Key: key, Limit: lim.Limit, Amount: amount, At: now}); err != nil {
			return CheckResult{}, fmt.Errorf("read usage: %w", err)
		}
	}
	return CheckResult{
		Subject:   req.Subject,
		Meter:     meter,
		Allowed:   lim.Overage || t.Used+t.Reserved <= lim.Limit-amount,
		Used:      t.Used,
		Reserved:  t.Reserved,
		Limit:     lim.Limit,
		Remaining: remaining(lim.Limit, t),
		ResetsAt:  Time{key.End},
		Plan:      plan,
	}, nil
}

// Consume records (mode record) or enforces (mode enforce) usage. A repeat
// of an idempotency key returns the first answer with Duplicate set.
// Errors: ErrInvalid for bad input or an unknown model, ErrConflict for an
// idempotency key reused with a different request.
func (s *Service) Consume(ctx context.Context, req ConsumeRequest) (ConsumeResponse, error) {
	res, err := s.consume(ctx, req)
	if err != nil && s.onOpen != nil && errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrEnforceUnavailable) {
		s.onOpen("consume", req.Subject, err)
		return ConsumeResponse{Applied: true, Amount: req.Amount}, nil
	}
	return res, err
}

func (s *Service) consume(ctx context.Context, req ConsumeRequest) (ConsumeResponse, error) {
	kind, meter, err := parseTarget(req.Subject, req.Meter)
	if err != nil {
		return ConsumeResponse{}, err
	}
	var enforce bool
	switch req.Mode {
	case "", ModeRecord:
	case ModeEnforce:
		enforce = true
	default:
		return ConsumeResponse{}, errMode
	}
	if err := validIdempotencyKey(req.IdempotencyKey); err != nil {
		return ConsumeResponse{}, err
	}
	amount, err := s.price(req.Amount, req.Usage)
	if err != nil {
		return ConsumeResponse{}, err
	}
	now := s.now()
	sub, _, lim, err := s.resolve(ctx, req.Subject, kind, meter)
	if err != nil {
		return ConsumeResponse{}, err
	}
	op := ConsumeOp{
		Key:            counterKey(&sub, meter, lim.Period, now),
		Amount:         amount,
		Enforce:        enforce && !lim.Overage,
		Limit:          lim.Limit,
		IdempotencyKey: req.IdempotencyKey,
		EventID:        NewEventID(now),
		Usage:          req.Usage,
		At:             now,
	}
	if req.IdempotencyKey != "" {
		op.RequestHash = requestHash(meter, req.Amount, enforce, req.Usage)
	}
	res, err := s.counter.Consume(ctx, op)
	if err != nil {
		return ConsumeResponse{}, fmt.Errorf("consume: %w", err)
	}
	if res.Applied && !res.Duplicate {
		s.notifyUsage(op.Key, "consumed", "", res.Amount, Tally{res.Used, res.Reserved}, lim.Limit, now)
	}
	return consumeAnswer(res, lim.Limit, op.Key), nil
}

// consumeAnswer is the API's answer to a consume (or a commit) of key.
func consumeAnswer(res ConsumeResult, limit int64, key CounterKey) ConsumeResponse {
	return ConsumeResponse{
		Applied:   res.Applied,
		Duplicate: res.Duplicate,
		Amount:    res.Amount,
		Used:      res.Used,
		Reserved:  res.Reserved,
		Limit:     limit,
		Remaining: remaining(limit, Tally{res.Used, res.Reserved}),
		Exceeded:  res.Used > limit || !res.Applied,
		ResetsAt:  Time{key.End},
	}
}

// price answers the credits of a request that gives either amount or
// usage (priced by the cost book).
func (s *Service) price(amount int64, u *Usage) (int64, error) {
	switch {
	case u != nil && amount != 0:
		return 0, Invalid("amount", "give either amount or usage, not both")
	case u != nil:
		credits, err := s.book.Load().Credits(*u)
		if err != nil {
			return 0, err
		}
		if credits == 0 {
			return 0, Invalid("usage", "prices to 0 credits: at least one token count must be positive")
		}
		return credits, nil
	case amount < 1 || amount > MaxAmount:
		return 0, errAmount
	}
	return amount, nil
}

// Subject returns a subject's settings and the usage of every meter its plan
// or overrides define. A subject never seen is shown as it would be
// provisioned now, and stays unprovisioned.
func (s *Service) Subject(ctx context.Context, id string) (SubjectView, error) {
	sub, seen, err := s.parseAndLoad(ctx, id, false)
	if err != nil {
		return SubjectView{}, err
	}
	return s.view(ctx, &sub, seen)
}

// parseAndLoad validates a subject id from a path and loads the subject
// (see subject).
func (s *Service) parseAndLoad(ctx context.Context, id string, provision bool) (Subject, bool, error) {
	kind, err := ParseSubject(id)
	if err != nil {
		return Subject{}, false, err
	}
	return s.subject(ctx, id, kind, provision)
}

// PutSubject changes a subject's plan, overrides or cycle anchor. A
// subject never seen is provisioned first (an admin's write is what makes
// it exist; its anchor is now unless the update sets one). Errors:
// ErrInvalid for a bad subject, an unknown plan or bad limits.
func (s *Service) PutSubject(ctx context.Context, id string, u SubjectUpdate) (SubjectView, error) {
	sub, _, err := s.parseAndLoad(ctx, id, true)
	if err != nil {
		return SubjectView{}, err
	}
	if u.Plan != nil {
		if validName(*u.Plan) != nil {
			return SubjectView{}, errSubjectPlan
		}
		if _, err := s.plans.Plan(ctx, *u.Plan); errors.Is(err, ErrNotFound) {
			return SubjectView{}, Invalid("plan", "unknown plan %q", *u.Plan)
		} else if err != nil {
			return SubjectView{}, err
		}
		sub.Plan = *u.Plan
	}
	if u.Limits != nil {
		if err := ValidateLimits("limits", *u.Limits); err != nil {
			return SubjectView{}, err
		}
		sub.Overrides = *u.Limits
	}
	if u.CycleAnchor != nil {
		if u.CycleAnchor.Year() < 1970 || u.CycleAnchor.Year() > 9999 {
			return SubjectView{}, Invalid("cycle_anchor", "must be between 1970 and 9999")
		}
		sub.CycleAnchor = u.CycleAnchor.UTC().Truncate(time.Second)
	}
	if err := s.subjects.PutSubject(ctx, sub); err != nil {
		return SubjectView{}, fmt.Errorf("put subject: %w", err)
	}
	v, err := s.view(ctx, &sub, true)
	if err == nil {
		s.notifyView(ChangePlan, "plan", &v)
	}
	return v, err
}

// Reset sets the current period's usage of meter (every meter when empty)
// to 0. A subject never seen has nothing to reset: it is answered like a
// read, and nothing is stored. Errors: ErrInvalid for a bad subject or a
// meter without a limit.
func (s *Service) Reset(ctx context.Context, id, meter string) (SubjectView, error) {
	sub, seen, err := s.parseAndLoad(ctx, id, false)
	if err != nil {
		return SubjectView{}, err
	}
	plan, err := s.plan(ctx, sub.Plan)
	if err != nil {
		return SubjectView{}, err
	}
	meters := meterNames(&sub, &plan)
	if meter != "" {
		if _, ok := sub.Limit(&plan, meter); !ok {
			return SubjectView{}, Invalid("meter", "subject has no limit for meter %q", meter)
		}
		meters = []string{meter}
	}
	if !seen {
		return s.view(ctx, &sub, false)
	}
	now := s.now()
	for _, m := range meters {
		lim, _ := sub.Limit(&plan, m)
		if err := s.counter.Reset(ctx, counterKey(&sub, m, lim.Period, now), now); err != nil {
			return SubjectView{}, fmt.Errorf("reset %s: %w", m, err)
		}
	}
	v, err := s.view(ctx, &sub, true)
	if err == nil {
		s.notifyView(ChangeReset, "reset", &v, meters...)
	}
	return v, err
}

// Plans returns every plan.
func (s *Service) Plans(ctx context.Context) ([]Plan, error) { return s.plans.Plans(ctx) }

// Plan returns the named plan or ErrNotFound.
func (s *Service) Plan(ctx context.Context, name string) (Plan, error) {
	if err := validName(name); err != nil {
		return Plan{}, err
	}
	return s.plans.Plan(ctx, name)
}

// PutPlan creates or replaces a plan. Errors: ErrInvalid for a bad plan.
func (s *Service) PutPlan(ctx context.Context, p Plan) (Plan, error) {
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	if err := s.plans.PutPlan(ctx, p); err != nil {
		return Plan{}, fmt.Errorf("put plan: %w", err)
	}
	return p, nil
}

// DeletePlan deletes a plan and returns it. Errors: ErrNotFound,
// ErrConflict for a kind's default plan (new subjects get it) or a plan
// some subject has.
func (s *Service) DeletePlan(ctx context.Context, name string) (Plan, error) {
	if err := validName(name); err != nil {
		return Plan{}, err
	}
	for _, k := range []Kind{KindAnon, KindUser} {
		if k.DefaultPlan() == name {
			return Plan{}, fmt.Errorf("plan %q is the default plan of %s subjects: %w", name, k, ErrConflict)
		}
	}
	p, err := s.plans.DeletePlan(ctx, name)
	if err != nil {
		return Plan{}, fmt.Errorf("delete plan: %w", err)
	}
	return p, nil
}

// Cost prices u with the cost book. Errors: ErrInvalid for an unknown model
// or bad token counts.
func (s *Service) Cost(u Usage) (CostResult, error) {
	credits, usd, err := s.book.Load().Cost(u)
	if err != nil {
		return CostResult{}, err
	}
	return CostResult{Credits: credits, USD: usd}, nil
}

// Pricing returns the cost book's prices and margin.
func (s *Service) Pricing() ([]Price, Decimal) {
	b := s.book.Load()
	return b.Prices(), b.Margin()
}

// PutPrice creates or replaces a model's price. Errors: ErrInvalid.
func (s *Service) PutPrice(ctx context.Context, p Price) (Price, error) {
	if err := ValidatePrice(p); err != nil {
		return Price{}, err
	}
	if err := s.prices.PutPrice(ctx, p); err != nil {
		return Price{}, fmt.Errorf("put price: %w", err)
	}
	for {
		old := s.book.Load()
		if s.book.CompareAndSwap(old, old.With(p)) {
			return p, nil
		}
	}
}

// DeletePrice deletes a model's price and returns it; usage of the model
// is then refused like any unknown model's. Errors: ErrInvalid,
// ErrNotFound.
func (s *Service) DeletePrice(ctx context.Context, model string) (Price, error) {
	if err := ValidatePrice(Price{Model: model}); err != nil {
		return Price{}, err
	}
	p, err := s.prices.DeletePrice(ctx, model)
	if err != nil {
		return Price{}, fmt.Errorf("delete price: %w", err)
	}
	for {
		old := s.book.Load()
		if s.book.CompareAndSwap(old, old.Without(model)) {
			return p, nil
		}
	}
}

// resolve returns the subject (provisioned if new: it is about to spend),
// its plan's name and the limit that applies to meter.
func (s *Service) resolve(ctx context.Context, id string, kind Kind, meter string) (Subject, string, Limit, error) {
	sub, _, err := s.subject(ctx, id, kind, true)
	if err != nil {
		return Subject{}, "", Limit{}, err
	}
	plan, lim, err := s.limit(ctx, &sub, meter)
	return sub, plan, lim, err
}

// limit returns the name of sub's plan and the limit that applies to meter.
func (s *Service) limit(ctx context.Context, sub *Subject, meter string) (string, Limit, error) {
	plan, err := s.plan(ctx, sub.Plan)
	if err != nil {
		return "", Limit{}, err
	}
	lim, ok := sub.Limit(&plan, meter)
	if !ok {
		return "", Limit{}, Invalid("meter", "plan %q has no limit for meter %q", plan.Name, meter)
	}
	return plan.Name, lim, nil
}

// subject loads a subject. One never seen gets its kind's default plan and
// a cycle anchor of now: stored (provisioned) when provision is set, for
// the writes that make a subject exist (its first consume or reservation,
// an admin's change); else only answered, with seen false, so that reads
// never write and a caller cannot create subjects by asking about them.
func (s *Service) subject(ctx context.Context, id string, kind Kind, provision bool) (sub Subject, seen bool, err error) {
	sub, err = s.subjects.Subject(ctx, id)
	if err == nil {
		return sub, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return Subject{}, false, fmt.Errorf("load subject: %w", err)
	}
	sub = Subject{ID: id, Plan: kind.DefaultPlan(), CycleAnchor: s.now().UTC().Truncate(time.Second)}
	if !provision {
		return sub, false, nil
	}
	if sub, err = s.subjects.ProvisionSubject(ctx, sub); err != nil {
		return Subject{}, false, fmt.Errorf("provision subject: %w", err)
	}
	return sub, true, nil
}

func (s *Service) plan(ctx context.Context, name string) (Plan, error) {
	p, err := s.plans.Plan(ctx, name)
	if err != nil {
		// A subject's plan always exists (PutSubject checks it, a plan a
		// subject has cannot be deleted), so a miss here is a store
		// problem, not bad input.
		return Plan{}, fmt.Errorf("load plan %q: %w", name, err)
	}
	return p, nil
}

// view answers sub's settings and usage; seen false (a subject never
// seen) answers nothing used without asking the counter.
func (s *Service) view(ctx context.Context, sub *Subject, seen bool) (SubjectView, error) {
	plan, err := s.plan(ctx, sub.Plan)
	if err != nil {
		return SubjectView{}, err
	}
	now := s.now()
	v := SubjectView{Subject: sub.ID, Plan: sub.Plan, CycleAnchor: sub.CycleAnchor, Limits: sub.Overrides}
	for _, m := range meterNames(sub, &plan) {
		lim, _ := sub.Limit(&plan, m)
		key := counterKey(sub, m, lim.Period, now)
		var t Tally
		if seen {
			if t, err = s.counter.Used(ctx, UsageRead{Key: key, Limit: lim.Limit, Amount: 1, At: now}); err != nil {
				return SubjectView{}, fmt.Errorf("read usage of %s: %w", m, err)
			}
		}
		v.Meters = append(v.Meters, MeterStatus{
			Meter:       m,
			Used:        t.Used,
			Reserved:    t.Reserved,
			Limit:       lim.Limit,
			Remaining:   remaining(lim.Limit, t),
			Period:      lim.Period,
			ResetsAt:    Time{key.End},
			Overage:     lim.Overage,
			OverageUsed: max(0, t.Used-lim.Limit),
		})
	}
	return v, nil
}

// meterNames lists the meters a subject has limits for, sorted.
func meterNames(sub *Subject, plan *Plan) []string {
	names := make([]string, 0, len(plan.Limits)+len(sub.Overrides))
	for m := range plan.Limits {
		names = append(names, m)
	}
	for m := range sub.Overrides {
		if _, dup := plan.Limits[m]; !dup {
			names = append(names, m)
		}
	}
	sort.Strings(names)
	return names
}

// counterKey names the counter of sub's meter for the period holding now.
// No usage is before a subject's anchor: a time before it (the subject
// was provisioned a moment later than the request read its clock, or on a
// clock a little ahead) counts in the first period.
func counterKey(sub *Subject, meter string, p Period, now time.Time) CounterKey {
	if now.Before(sub.CycleAnchor) {
		now = sub.CycleAnchor
	}
	start, end := p.Window(sub.CycleAnchor, now)
	return CounterKey{Subject: sub.ID, Meter: meter, Start: start, End: end}
}

// parseTarget validates a request's subject and meter ("credits" when
// empty).
func parseTarget(subject, meter string) (Kind, string, error) {
	kind, err := ParseSubject(subject)
	if err != nil {
		return "", "", err
	}
	if meter == "" {
		return kind, DefaultMeter, nil
	}
	return kind, meter, ValidMeter(meter)
}

// validIdempotencyKey allows up to 255 bytes without control characters
// (so that a key can travel inside the pending stream's events).
func validIdempotencyKey(k string) error {
	if len(k) > 255 {
		return errIdemKey
	}
	for i := 0; i < len(k); i++ {
		if k[i] < 0x20 || k[i] == 0x7f {
			return errIdemKey
		}
	}
	return nil
}

// remaining is what may still be spent: max(0, limit - used - reserved),
// without overflow for any counts.
func remaining(limit int64, t Tally) int64 {
	if t.Used >= limit || t.Reserved >= limit-t.Used {
		return 0
	}
	return limit - t.Used - t.Reserved
}

// requestHash fingerprints what an idempotent consume asked for, so that a
// key reused for a different request is a conflict rather than a silent
// duplicate.
func requestHash(meter string, amount int64, enforce bool, u *Usage) string {
	h := fnv.New64a()
	b := make([]byte, 0, 128)
	b = append(b, meter...)
	b = append(b, '|')
	b = strconv.AppendInt(b, amount, 10)
	b = strconv.AppendBool(append(b, '|'), enforce)
	if u != nil {
		b = append(append(b, '|'), u.Model...)
		for _, n := range [...]int64{u.InputTokens, u.OutputTokens, u.CacheWriteTokens, u.CacheReadTokens} {
			b = strconv.AppendInt(append(b, '|'), n, 10)
		}
	}
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 16)
}

var (
	errAmount      = Invalid("amount", "must be between 1 and %d", MaxAmount)
	errMode        = Invalid("mode", `must be "record" or "enforce"`)
	errSubjectPlan = Invalid("plan", "must be 1-64 characters of a-z 0-9 _ . -")
	errIdemKey     = Invalid("idempotency_key", "must be at most 255 bytes without control characters")
)
