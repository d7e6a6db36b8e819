package quota

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// Listing and history: the reads an operator makes over many subjects and
// over one subject's past. Which subjects exist and what they used before
// now come from Postgres (Reports); the numbers shown for a listed subject
// come from the same live view as GET /v1/subjects/{subject}, so they
// include usage Redis holds that Postgres does not have yet.

// Subject listing orders.
const (
	OrderID    = "id"    // subject id, ascending (byte order)
	OrderUsed  = "used"  // the meter's usage in its current period, most first
	OrderShare = "share" // the meter's usage over its limit, largest first
)

// Bounds of the listing and ledger pages and of the usage series.
const (
	MaxPage          = 200
	DefaultPage      = 50
	MaxUsageDays     = 90
	DefaultUsageDays = 30
	maxPrefix        = 133 // the longest subject
)

// SubjectQuery asks for a page of subjects.
type SubjectQuery struct {
	Prefix string // only subjects starting with it; "" for all
	Order  string // OrderID, OrderUsed or OrderShare
	Meter  string // the meter OrderUsed and OrderShare sort by
	// After is the last position of the previous page; nil for the first.
	After *SubjectPosition
	Limit int       // subjects per page, 1..MaxPage
	Now   time.Time // the instant whose periods are current; set by the Service
}

// SubjectPosition is where a subject sits in a listing: its sort key (Used
// for OrderUsed, Share for OrderShare, neither for OrderID) and its id,
// which breaks ties.
type SubjectPosition struct {
	Subject string
	Used    int64
	// Share is used / limit; +Inf for usage under a limit of 0, -1 for a
	// subject without a limit for the meter.
	Share float64
}

// MeterShare is a meter's live status and the share of its limit used.
type MeterShare struct {
	MeterStatus
	// Share is used / limit (above 1 past the limit); null when the
	// limit is 0.
	Share *float64 `json:"share"`
}

// SubjectRow is one subject of a listing.
type SubjectRow struct {
	Subject string       `json:"subject"`
	Plan    string       `json:"plan"`
	Meters  []MeterShare `json:"meters"`
}

// SubjectPage is a page of a listing. Next is the position to continue
// after; nil on the last page.
type SubjectPage struct {
	Subjects []SubjectRow
	Next     *SubjectPosition
}

// DayUsage is what one meter used during one UTC day.
type DayUsage struct {
	Day  string `json:"day"` // YYYY-MM-DD, UTC
	Used int64  `json:"used"`
}

// UsageSeries is a subject's usage of a meter per UTC day, oldest first,
// every day present (0 for a day without usage).
type UsageSeries struct {
	Subject string     `json:"subject"`
	Meter   string     `json:"meter"`
	Total   int64      `json:"total"`
	Days    []DayUsage `json:"days"`
}

// LedgerQuery asks for a page of a subject's ledger, latest first.
type LedgerQuery struct {
	Subject string
	Meter   string          // "" for every meter
	Before  *LedgerPosition // the last event of the previous page; nil for the first
	Limit   int             // 1..MaxPage
}

// LedgerPosition is an event's place in the ledger's order: its time,
// then its id.
type LedgerPosition struct {
	At      time.Time
	EventID string
}

// LedgerEvent is one row of the usage ledger.
type LedgerEvent struct {
	EventID        string    `json:"event_id"`
	Kind           string    `json:"kind"` // "consume" or "reset"
	Meter          string    `json:"meter"`
	Amount         int64     `json:"amount"`
	PeriodStart    time.Time `json:"period_start"`
	Mode           string    `json:"mode,omitempty"`
	Model          string    `json:"model,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	ReservationID  string    `json:"reservation_id,omitempty"`
	At             time.Time `json:"at"`
}

// LedgerPage is a page of ledger events. Next is the position to continue
// before; nil on the last page.
type LedgerPage struct {
	Events []LedgerEvent
	Next   *LedgerPosition
}

// Reports answers reads over many subjects and over the ledger, from the
// source of truth; persist.Store implements it.
type Reports interface {
	// ListSubjects returns the positions of up to q.Limit subjects after
	// q.After in q.Order.
	ListSubjects(ctx context.Context, q SubjectQuery) ([]SubjectPosition, error)
	// DailyUsage returns the consumed amounts of subject's meter per UTC
	// day in [from, to), keyed by the day's midnight; days without usage
	// are missing.
	DailyUsage(ctx context.Context, subject, meter string, from, to time.Time) (map[time.Time]int64, error)
	// Ledger returns up to q.Limit events before q.Before, latest first.
	Ledger(ctx context.Context, q LedgerQuery) ([]LedgerEvent, error)
}

// ListSubjects returns a page of subjects in q.Order, each with its live
// usage. The order and the page's membership come from Postgres: a
// subject provisioned in Redis a moment ago shows up once flushed, and
// OrderUsed and OrderShare sort by the flushed usage. Errors: ErrInvalid
// for a bad prefix, order, meter or limit; ErrUnavailable without
// Reports.
func (s *Service) ListSubjects(ctx context.Context, q SubjectQuery) (SubjectPage, error) {
	if err := validPrefix(q.Prefix); err != nil {
		return SubjectPage{}, err
	}
	switch q.Order {
	case OrderID, OrderUsed, OrderShare:
	default:
		return SubjectPage{}, errOrder
	}
	if err := ValidMeter(q.Meter); err != nil {
		return SubjectPage{}, err
	}
	if q.Limit < 1 || q.Limit > MaxPage {
		return SubjectPage{}, errPage
	}
	if s.reports == nil {
		return SubjectPage{}, fmt.Errorf("list subjects: %w", ErrUnavailable)
	}
	q.Now = s.now()
	want := q.Limit
	q.Limit++ // one more tells whether there is a next page
	pos, err := s.reports.ListSubjects(ctx, q)
	if err != nil {
		return SubjectPage{}, fmt.Errorf("list subjects: %w", err)
	}
	var page SubjectPage
	if len(pos) > want {
		pos = pos[:want]
		page.Next = &pos[want-1]
	}
	page.Subjects = make([]SubjectRow, len(pos))
	// Each row is the subject's live view: settings from the cache tiers,
	// usage from L1/Redis. They are independent reads, a few at a time.
	var wg sync.WaitGroup
	errs := make([]error, len(pos))
	sem := make(chan struct{}, 8)
	for i := range pos {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			page.Subjects[i], errs[i] = s.row(ctx, pos[i].Subject)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return SubjectPage{}, err
		}
	}
	return page, nil
}

// row is a listed subject's live view. A subject listed is in Postgres,
// so it is seen.
func (s *Service) row(ctx context.Context, id string) (SubjectRow, error) {
	v, err := s.Subject(ctx, id)
	if err != nil {
		return SubjectRow{}, err
	}
	r := SubjectRow{Subject: v.Subject, Plan: v.Plan, Meters: make([]MeterShare, len(v.Meters))}
	for i, m := range v.Meters {
		r.Meters[i] = MeterShare{MeterStatus: m}
		if m.Limit > 0 {
			share := float64(m.Used) / float64(m.Limit)
			r.Meters[i].Share = &share
		}
	}
	return r, nil
}

// Usage returns subject's usage of meter ("credits" when empty) per UTC day
// over the last days days (DefaultUsageDays when 0), today included, from
// the ledger in Postgres: usage not flushed yet (about a second's) is not
// in it. A subject never seen has used nothing; nothing is stored. Errors:
// ErrInvalid for a bad subject, meter or days.
func (s *Service) Usage(ctx context.Context, subject, meter string, days int) (UsageSeries, error) {
	if days == 0 {
		days = DefaultUsageDays
	}
	_, meter, err := parseTarget(subject, meter)
	if err != nil {
		return UsageSeries{}, err
	}
	if days < 1 || days > MaxUsageDays {
		return UsageSeries{}, errDays
	}
	if s.reports == nil {
		return UsageSeries{}, fmt.Errorf("usage series: %w", ErrUnavailable)
	}
	const day = 24 * time.Hour
	today := s.now().UTC().Truncate(day)
	from := today.Add(-time.Duration(days-1) * day)
	used, err := s.reports.DailyUsage(ctx, subject, meter, from, today.Add(day))
	if err != nil {
		return UsageSeries{}, fmt.Errorf("usage series: %w", err)
	}
	out := UsageSeries{Subject: subject, Meter: meter, Days: make([]DayUsage, days)}
	for i := range out.Days {
		d := from.Add(time.Duration(i) * day)
		u := used[d]
		out.Days[i] = DayUsage{Day: d.Format(time.DateOnly), Used: u}
		if out.Total > math.MaxInt64-u {
			out.Total = math.MaxInt64
		} else {
			out.Total += u
		}
	}
	return out, nil
}

// Ledger returns a page of subject's ledger events, latest first, from
// Postgres: events not flushed yet (about a second's) are not in it. A
// subject never seen has none; nothing is stored. Errors: ErrInvalid for
// a bad subject, meter or limit.
func (s *Service) Ledger(ctx context.Context, q LedgerQuery) (LedgerPage, error) {
	if _, err := ParseSubject(q.Subject); err != nil {
		return LedgerPage{}, err
	}
	if q.Meter != "" {
		if err := ValidMeter(q.Meter); err != nil {
			return LedgerPage{}, err
		}
	}
	if q.Limit < 1 || q.Limit > MaxPage {
		return LedgerPage{}, errPage
	}
	if s.reports == nil {
		return LedgerPage{}, fmt.Errorf("ledger: %w", ErrUnavailable)
	}
	want := q.Limit
	q.Limit++
	evs, err := s.reports.Ledger(ctx, q)
	if err != nil {
		return LedgerPage{}, fmt.Errorf("ledger: %w", err)
	}
	page := LedgerPage{Events: evs}
	if len(evs) > want {
		page.Events = evs[:want]
		last := evs[want-1]
		page.Next = &LedgerPosition{At: last.At, EventID: last.EventID}
	}
	if page.Events == nil {
		page.Events = []LedgerEvent{}
	}
	return page, nil
}

// validPrefix allows the start of a subject: characters a subject may
// hold, at most as long as one.
func validPrefix(p string) error {
	if len(p) > maxPrefix {
		return errPrefix
	}
	for i := 0; i < len(p); i++ {
		if !idChar(p[i]) && p[i] != ':' {
			return errPrefix
		}
	}
	return nil
}

var (
	errOrder  = Invalid("order", `must be "id", "used" or "share"`)
	errPage   = Invalid("limit", "must be between 1 and %d", MaxPage)
	errDays   = Invalid("days", "must be between 1 and %d", MaxUsageDays)
	errPrefix = Invalid("prefix", "must be at most %d characters of A-Z a-z 0-9 . _ @ + - :", maxPrefix)
)
