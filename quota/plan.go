package quota

import "sort"

// MaxAmount is the largest amount one consume or check may carry, and
// MaxLimit the largest limit a plan may set.
const (
	MaxAmount int64 = 1_000_000_000_000
	MaxLimit  int64 = 1_000_000_000_000_000_000
)

// DefaultMeter is the meter used when a request names none.
const DefaultMeter = "credits"

// Limit is how much of one meter may be used per period.
type Limit struct {
	Limit   int64  `json:"limit"`
	Period  Period `json:"period"`
	Overage bool   `json:"overage,omitempty"` // usage past the limit is recorded, not blocked
}

// Plan is a named set of per-meter limits.
type Plan struct {
	Name   string           `json:"name"`
	Limits map[string]Limit `json:"limits"`
}

// Validate reports the first problem with p as an ErrInvalid naming the field.
func (p *Plan) Validate() error {
	if err := validName(p.Name); err != nil {
		return err
	}
	if len(p.Limits) == 0 {
		return Invalid("limits", "at least one meter is required")
	}
	return ValidateLimits("limits", p.Limits)
}

// ValidateLimits checks every meter name and limit of ls; field prefixes the
// field names in errors ("limits.credits.limit").
func ValidateLimits(field string, ls map[string]Limit) error {
	meters := make([]string, 0, len(ls))
	for m := range ls {
		meters = append(meters, m)
	}
	sort.Strings(meters) // report the same error for the same input
	for _, m := range meters {
		if err := ValidMeter(m); err != nil {
			return Invalid(field, "meter %q must be 1-64 characters of a-z 0-9 _ . -", m)
		}
		l := ls[m]
		if l.Limit < 0 || l.Limit > MaxLimit {
			return Invalid(field+"."+m+".limit", "must be between 0 and %d", MaxLimit)
		}
		if !l.Period.Valid() {
			return Invalid(field+"."+m+".period", `must be one of "hour", "day", "week", "month", "none"`)
		}
	}
	return nil
}

// validName checks a plan name: 1–64 characters of [a-z0-9_.-]. Errors are
// ErrInvalid naming the field "name".
func validName(s string) error {
	if err := ValidMeter(s); err != nil {
		return errPlanName
	}
	return nil
}

var errPlanName = Invalid("name", "must be 1-64 characters of a-z 0-9 _ . -")

// DefaultPlans returns the plans a new installation is seeded with.
func DefaultPlans() []Plan {
	return []Plan{
		{Name: "anonymous", Limits: map[string]Limit{DefaultMeter: {Limit: 1_000, Period: PeriodMonth}}},
		{Name: "free", Limits: map[string]Limit{DefaultMeter: {Limit: 2_500, Period: PeriodMonth}}},
		{Name: "pro", Limits: map[string]Limit{DefaultMeter: {Limit: 10_000, Period: PeriodMonth, Overage: true}}},
	}
}
