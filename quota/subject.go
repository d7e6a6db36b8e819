package quota

import "time"

// Kind is the kind of a subject: the part before the colon.
type Kind string

// Subject kinds. Each kind has a default plan for subjects seen the first time.
const (
	KindAnon Kind = "anon"
	KindUser Kind = "user"
)

// DefaultPlan returns the plan a subject of kind k is provisioned with.
func (k Kind) DefaultPlan() string {
	if k == KindAnon {
		return "anonymous"
	}
	return "free"
}

// Subject is who spends: its plan, billing anchor and per-meter overrides.
type Subject struct {
	ID          string           `json:"subject"`
	Plan        string           `json:"plan"`
	CycleAnchor time.Time        `json:"cycle_anchor"`
	Overrides   map[string]Limit `json:"limits,omitempty"`
}

// Limit returns the limit that applies to meter for s under plan p: the
// subject's override if it has one, else the plan's. ok is false when
// neither defines the meter.
func (s *Subject) Limit(p *Plan, meter string) (l Limit, ok bool) {
	if l, ok = s.Overrides[meter]; ok {
		return l, true
	}
	l, ok = p.Limits[meter]
	return l, ok
}

// ParseSubject checks that s is "<kind>:<id>" with a known kind and an id of
// 1–128 characters of [A-Za-z0-9._@+-], and returns the kind. It does not
// allocate. Errors are ErrInvalid naming the field "subject".
func ParseSubject(s string) (Kind, error) {
	var kind Kind
	var id string
	switch {
	case len(s) > 5 && s[:5] == "anon:":
		kind, id = KindAnon, s[5:]
	case len(s) > 5 && s[:5] == "user:":
		kind, id = KindUser, s[5:]
	default:
		return "", errSubjectKind
	}
	if len(id) > 128 {
		return "", errSubjectLength
	}
	for i := 0; i < len(id); i++ {
		if !idChar(id[i]) {
			return "", errSubjectChar
		}
	}
	return kind, nil
}

// ValidMeter checks that m is a meter name: 1–64 characters of [a-z0-9_.-].
// Errors are ErrInvalid naming the field "meter".
func ValidMeter(m string) error {
	if len(m) == 0 || len(m) > 64 {
		return errMeter
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return errMeter
		}
	}
	return nil
}

// Preallocated so that validating the hot path does not allocate even on
// the error path.
var (
	errSubjectKind   = Invalid("subject", `must be "anon:<id>" or "user:<id>"`)
	errSubjectLength = Invalid("subject", "id must be 1-128 characters")
	errSubjectChar   = Invalid("subject", "id may contain only A-Z a-z 0-9 . _ @ + -")
	errMeter         = Invalid("meter", "must be 1-64 characters of a-z 0-9 _ . -")
)

func idChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == '@' || c == '+' || c == '-'
}
