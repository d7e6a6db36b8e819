package quota

// Change is one thing that happened to a subject's usage or settings, as
// live subscribers see it (GET /v1/subjects/{subject}/events). Changes are
// a notification, not the record: Postgres's ledger is the record, and a
// subscriber that misses changes gets a fresh snapshot instead.
type Change struct {
	// Type is the Server-Sent Events event name: one of the Change* types.
	Type string `json:"type"`
	// Action says what happened within the type (consumed, committed,
	// reserved, released, expired, reset, plan, limits).
	Action      string `json:"action,omitempty"`
	Subject     string `json:"subject"`
	Meter       string `json:"meter,omitempty"`
	Amount      int64  `json:"amount,omitempty"`
	Reservation string `json:"reservation,omitempty"`
	// Threshold is the percentage of the limit a threshold change crossed
	// upwards (50, 80 or 100).
	Threshold int    `json:"threshold,omitempty"`
	Used      int64  `json:"used"`
	Reserved  int64  `json:"reserved"`
	Limit     int64  `json:"limit"`
	Remaining int64  `json:"remaining"`
	Plan      string `json:"plan,omitempty"`
	At        Time   `json:"at"`
}

// Change types: the event names of the events stream.
const (
	ChangeUsage       = "usage"       // consumed or committed usage
	ChangeReservation = "reservation" // reserved, committed, released, expired
	ChangeThreshold   = "threshold"   // usage crossed 50, 80 or 100 % of a limit
	ChangeReset       = "reset"       // a meter's usage was set to 0
	ChangePlan        = "plan"        // the subject's plan or limits changed
)

// Thresholds are the percentages of a limit whose upward crossing is a
// threshold change.
var Thresholds = [...]int{50, 80, 100}

// Notifier receives changes as the Service makes them. Notify must not
// block: it is called on the request path, after the change was applied.
type Notifier interface {
	Notify(Change)
}

// crossed returns the thresholds (percent of limit) that usage crossed
// upwards going from before to after; none for a limit of 0 or less.
func crossed(before, after, limit int64) []int {
	if limit <= 0 || after <= before {
		return nil
	}
	var out []int
	for _, pct := range Thresholds {
		// at = ceil(limit * pct / 100) without overflow for limits up to 10^18
		at := limit/100*int64(pct) + (limit%100*int64(pct)+99)/100
		if before < at && after >= at {
			out = append(out, pct)
		}
	}
	return out
}
