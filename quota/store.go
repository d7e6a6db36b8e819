package quota

import (
	"context"
	"time"
)

// The interfaces below are what the Service needs from its storage tiers.
// persist/ implements all of them on Postgres; cache/ implements them again
// as decorators (L1 over L2 over Postgres) with the same contracts.

// Plans stores plans.
type Plans interface {
	// Plans returns every plan, sorted by name.
	Plans(ctx context.Context) ([]Plan, error)
	// Plan returns the named plan or ErrNotFound.
	Plan(ctx context.Context, name string) (Plan, error)
	// PutPlan creates or replaces a plan.
	PutPlan(ctx context.Context, p Plan) error
	// DeletePlan deletes a plan and returns it: ErrNotFound for none,
	// ErrConflict while subjects have it.
	DeletePlan(ctx context.Context, name string) (Plan, error)
}

// Subjects stores subjects' settings.
type Subjects interface {
	// Subject returns the subject or ErrNotFound when it was never seen.
	Subject(ctx context.Context, id string) (Subject, error)
	// ProvisionSubject stores s if no subject with its ID exists yet and
	// returns the stored subject: s, or the one that was there first.
	ProvisionSubject(ctx context.Context, s Subject) (Subject, error)
	// PutSubject creates or replaces a subject's settings.
	PutSubject(ctx context.Context, s Subject) error
}

// Prices stores the cost book's prices.
type Prices interface {
	// Prices returns every model's price, sorted by model.
	Prices(ctx context.Context) ([]Price, error)
	// PutPrice creates or replaces a model's price.
	PutPrice(ctx context.Context, p Price) error
	// DeletePrice deletes a model's price and returns it, or ErrNotFound.
	DeletePrice(ctx context.Context, model string) (Price, error)
}

// CounterKey names one usage counter: a subject's meter in one period.
type CounterKey struct {
	Subject string
	Meter   string
	Start   time.Time // first instant of the period
	End     time.Time // first instant after it; zero for the lifetime period
}

// ConsumeOp is one consume as a counter applies it.
type ConsumeOp struct {
	Key     CounterKey
	Amount  int64
	Enforce bool  // apply only if Used+Amount <= Limit
	Limit   int64 // the limit Enforce tests against
	// IdempotencyKey, when set, makes a repeat of the op (same subject and
	// key) return the first result instead of counting again. RequestHash
	// fingerprints the rest of the request; a repeat with another hash is
	// ErrConflict.
	IdempotencyKey string
	RequestHash    string
	EventID        string // unique id of this consume, the ledger's dedup key
	Usage          *Usage // token usage the amount was priced from, if any
	At             time.Time
}

// ConsumeResult is what a counter answers for a ConsumeOp.
type ConsumeResult struct {
	Applied   bool  // the amount was counted (false: enforce rejected it)
	Duplicate bool  // an earlier op with the same idempotency key answered
	Amount    int64 // the amount of the (first) op
	Used      int64 // usage of the period after the (first) op
	Reserved  int64 // units held by live reservations of the counter
}

// Tally is a counter's state: what was used, and what live reservations
// hold (see Holds).
type Tally struct {
	Used, Reserved int64
}

// UsageRead asks for the usage of Key. Limit and Amount tell a cache how
// close to the limit the answer matters: far from it, a snapshot a moment
// old is as good as the exact count. Stores that always read the exact
// count ignore them.
type UsageRead struct {
	Key    CounterKey
	Limit  int64
	Amount int64
	At     time.Time // the service's now: how old a snapshot is, is measured from it
}

// Counter counts usage per CounterKey.
type Counter interface {
	// Used returns the usage counted for r.Key, 0 if none, and what live
	// reservations of it hold (0 for stores that keep none).
	Used(ctx context.Context, r UsageRead) (Tally, error)
	// Consume applies op atomically. A repeated idempotency key with a
	// different RequestHash is ErrConflict; a sum past the int64 range is
	// ErrInvalid.
	Consume(ctx context.Context, op ConsumeOp) (ConsumeResult, error)
	// Reset sets the usage of key to 0.
	Reset(ctx context.Context, key CounterKey, at time.Time) error
}

// EventKind is what an Event records.
type EventKind string

// Event kinds.
const (
	EventConsume   EventKind = "consume"   // Amount was added to Key
	EventReset     EventKind = "reset"     // Key was set to 0
	EventProvision EventKind = "provision" // Subject was seen the first time
)

// Event is one change made in a fast tier (Redis) that the write-behind
// flusher still has to apply to Postgres.
type Event struct {
	Ref            string    `json:"-"`  // the queue's handle for acknowledging it; several events may share one
	Queue          int       `json:"-"`  // which of the queue's streams Ref is in (one per bucket of subjects)
	ID             string    `json:"id"` // unique; the ledger's dedup key
	Kind           EventKind `json:"k"`
	Subject        string    `json:"s"`
	Meter          string    `json:"m,omitempty"`
	Start          time.Time `json:"ps,omitzero"`
	End            time.Time `json:"pe,omitzero"`
	Amount         int64     `json:"a,omitempty"`
	Enforce        bool      `json:"en,omitempty"`
	Reservation    string    `json:"rsv,omitempty"` // the reservation a consume committed
	Usage          *Usage    `json:"u,omitempty"`
	IdempotencyKey string    `json:"ik,omitempty"`
	RequestHash    string    `json:"rh,omitempty"`
	Used           int64     `json:"used,omitempty"` // the counter right after a consume
	At             time.Time `json:"at"`
	Settings       *Subject  `json:"sub,omitempty"` // the provisioned subject
}

// Key returns the counter an event is about.
func (e *Event) Key() CounterKey {
	return CounterKey{Subject: e.Subject, Meter: e.Meter, Start: e.Start, End: e.End}
}

// IdempotencyRecord is the first answer to an idempotency key.
type IdempotencyRecord struct {
	Subject, Key, RequestHash string
	Applied                   bool
	Amount, Used              int64
	At                        time.Time // when the key was first used
}
