package quota_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

func TestParseSubject(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		kind    quota.Kind
		invalid bool
	}{
		{name: "user", in: "user:42", kind: quota.KindUser},
		{name: "anon", in: "anon:fp_9f86d081", kind: quota.KindAnon},
		{name: "all allowed characters", in: "user:Az09._@+-", kind: quota.KindUser},
		{name: "128 characters", in: "user:" + strings.Repeat("a", 128), kind: quota.KindUser},
		{name: "129 characters", in: "user:" + strings.Repeat("a", 129), invalid: true},
		{name: "empty id", in: "user:", invalid: true},
		{name: "no kind", in: "42", invalid: true},
		{name: "unknown kind", in: "org:42", invalid: true},
		{name: "upper-case kind", in: "USER:42", invalid: true},
		{name: "space", in: "user:4 2", invalid: true},
		{name: "colon in id", in: "user:a:b", invalid: true},
		{name: "slash", in: "user:a/b", invalid: true},
		{name: "non-ascii", in: "user:é", invalid: true},
		{name: "empty", in: "", invalid: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kind, err := quota.ParseSubject(tt.in)
			if tt.invalid {
				var fe *quota.FieldError
				if !errors.Is(err, quota.ErrInvalid) || !errors.As(err, &fe) || fe.Field != "subject" {
					t.Fatalf("ParseSubject(%q) = %v, want an ErrInvalid naming subject", tt.in, err)
				}
				return
			}
			if err != nil || kind != tt.kind {
				t.Fatalf("ParseSubject(%q) = %q, %v; want %q", tt.in, kind, err, tt.kind)
			}
		})
	}
}

func TestValidMeter(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{name: "default", in: "credits", ok: true},
		{name: "dotted", in: "model.sonnet", ok: true},
		{name: "tokens", in: "tokens.output", ok: true},
		{name: "64 characters", in: strings.Repeat("m", 64), ok: true},
		{name: "65 characters", in: strings.Repeat("m", 65)},
		{name: "empty", in: ""},
		{name: "upper case", in: "Credits"},
		{name: "colon", in: "a:b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := quota.ValidMeter(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidMeter(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil && !errors.Is(err, quota.ErrInvalid) {
				t.Fatalf("ValidMeter(%q) = %v, want ErrInvalid", tt.in, err)
			}
		})
	}
}

// FuzzParseSubject checks that parsing never panics and accepts exactly the
// documented grammar.
func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{"user:42", "anon:x", "org:1", "", "user:", "user:a b", "anon:" + strings.Repeat("z", 130)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kind, err := quota.ParseSubject(s)
		prefix, id, found := strings.Cut(s, ":")
		want := found && (prefix == "user" || prefix == "anon") && len(id) >= 1 && len(id) <= 128 &&
			strings.Trim(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@+-") == ""
		if (err == nil) != want {
			t.Fatalf("ParseSubject(%q) = %q, %v; grammar says valid=%v", s, kind, err, want)
		}
		if err == nil && string(kind) != prefix {
			t.Fatalf("ParseSubject(%q) kind %q, want %q", s, kind, prefix)
		}
		if merr := quota.ValidMeter(s); merr == nil && (len(s) == 0 || len(s) > 64) {
			t.Fatalf("ValidMeter(%q) accepted a bad length", s)
		}
	})
}

func TestPlanValidate(t *testing.T) {
	tests := []struct {
		name  string
		plan  quota.Plan
		field string
	}{
		{name: "ok", plan: quota.Plan{Name: "team", Limits: map[string]quota.Limit{"credits": {Limit: 5, Period: quota.PeriodDay}}}},
		{name: "bad name", plan: quota.Plan{Name: "Team!", Limits: map[string]quota.Limit{"credits": {Limit: 5, Period: quota.PeriodDay}}}, field: "name"},
		{name: "no limits", plan: quota.Plan{Name: "team"}, field: "limits"},
		{name: "negative limit", plan: quota.Plan{Name: "team", Limits: map[string]quota.Limit{"credits": {Limit: -1, Period: quota.PeriodDay}}}, field: "limits.credits.limit"},
		{name: "bad period", plan: quota.Plan{Name: "team", Limits: map[string]quota.Limit{"credits": {Limit: 1, Period: "fortnight"}}}, field: "limits.credits.period"},
		{name: "bad meter", plan: quota.Plan{Name: "team", Limits: map[string]quota.Limit{"Credits": {Limit: 1, Period: quota.PeriodDay}}}, field: "limits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.plan.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			var fe *quota.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate() = %v, want an error naming %q", err, tt.field)
			}
		})
	}
}

func TestNewEventIDSortsByTime(t *testing.T) {
	a := quota.NewEventID(time.Unix(1_700_000_000, 0))
	b := quota.NewEventID(time.Unix(1_700_000_000, 1_000_000))
	c := quota.NewEventID(time.Unix(4_000_000_000, 0))
	if !(a < b && b < c) || len(a) != 27 || len(c) != 27 {
		t.Fatalf("ids %q %q %q do not sort by time", a, b, c)
	}
	x, y := quota.NewEventID(time.Unix(1, 0)), quota.NewEventID(time.Unix(1, 0))
	if x == y {
		t.Fatal("two ids for the same millisecond are equal")
	}
}

// TestNewEventIDFormat: the digits before the random part are the Unix
// millisecond in strconv's base 32, as ids written before kept them.
func TestNewEventIDFormat(t *testing.T) {
	at := time.UnixMilli(1_764_000_000_123)
	id := quota.NewEventID(at)
	want := strconv.FormatInt(at.UnixMilli(), 32)
	for len(want) < 11 {
		want = "0" + want
	}
	if id[:11] != want {
		t.Fatalf("id %q starts with %q, want %q", id, id[:11], want)
	}
	for _, c := range id[11:] {
		if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", c) {
			t.Fatalf("id %q has %q in its random part", id, c)
		}
	}
	seen := map[string]bool{}
	for range 100_000 {
		id := quota.NewEventID(at)
		if seen[id[11:]] {
			t.Fatalf("random part %q repeated", id[11:])
		}
		seen[id[11:]] = true
	}
}
