package quota_test

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/quotad/quotad/quota"
)

func utc(y int, m time.Month, d, h, min, s, ns int) time.Time {
	return time.Date(y, m, d, h, min, s, ns, time.UTC)
}

func TestParsePeriod(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    quota.Period
		wantErr bool
	}{
		{name: "hour", in: "hour", want: quota.PeriodHour},
		{name: "day", in: "day", want: quota.PeriodDay},
		{name: "week", in: "week", want: quota.PeriodWeek},
		{name: "month", in: "month", want: quota.PeriodMonth},
		{name: "none", in: "none", want: quota.PeriodNone},
		{name: "empty", in: "", wantErr: true},
		{name: "unknown", in: "year", wantErr: true},
		{name: "wrong case", in: "Month", wantErr: true},
		{name: "padded", in: " day", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := quota.ParsePeriod(tt.in)
			if tt.wantErr {
				if !errors.Is(err, quota.ErrInvalid) {
					t.Fatalf("ParsePeriod(%q) error = %v, want ErrInvalid", tt.in, err)
				}
				var fe *quota.FieldError
				if !errors.As(err, &fe) || fe.Field != "period" {
					t.Fatalf("ParsePeriod(%q) error = %#v, want FieldError for \"period\"", tt.in, err)
				}
				if got.Valid() {
					t.Fatalf("ParsePeriod(%q) = %q, want an invalid period with the error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePeriod(%q) = %q, %v; want %q, nil", tt.in, got, err, tt.want)
			}
			if !got.Valid() {
				t.Fatalf("%q.Valid() = false", got)
			}
		})
	}
}

func TestPeriodWindow(t *testing.T) {
	noAnchor := time.Time{}
	anchor31 := utc(2024, time.January, 31, 10, 30, 0, 0)
	anchor15 := utc(2023, time.June, 15, 0, 0, 0, 0)
	anchor30 := utc(2022, time.March, 30, 23, 59, 59, 999_999_999)
	anchor29 := utc(2020, time.February, 29, 12, 0, 0, 0)
	anchor1 := utc(2025, time.April, 1, 0, 0, 0, 0)
	berlin := time.FixedZone("CET", 3600)

	tests := []struct {
		name      string
		period    quota.Period
		anchor    time.Time
		now       time.Time
		wantStart time.Time
		wantEnd   time.Time
	}{
		// Hour.
		{name: "hour middle", period: quota.PeriodHour, now: utc(2025, time.March, 3, 14, 25, 7, 1),
			wantStart: utc(2025, time.March, 3, 14, 0, 0, 0), wantEnd: utc(2025, time.March, 3, 15, 0, 0, 0)},
		{name: "hour at boundary is start", period: quota.PeriodHour, now: utc(2025, time.March, 3, 15, 0, 0, 0),
			wantStart: utc(2025, time.March, 3, 15, 0, 0, 0), wantEnd: utc(2025, time.March, 3, 16, 0, 0, 0)},
		{name: "hour 1ns before boundary", period: quota.PeriodHour, now: utc(2025, time.March, 3, 14, 59, 59, 999_999_999),
			wantStart: utc(2025, time.March, 3, 14, 0, 0, 0), wantEnd: utc(2025, time.March, 3, 15, 0, 0, 0)},
		{name: "hour across year", period: quota.PeriodHour, now: utc(2024, time.December, 31, 23, 30, 0, 0),
			wantStart: utc(2024, time.December, 31, 23, 0, 0, 0), wantEnd: utc(2025, time.January, 1, 0, 0, 0, 0)},
		{name: "hour non-UTC now", period: quota.PeriodHour, now: time.Date(2025, time.March, 3, 0, 30, 0, 0, berlin),
			wantStart: utc(2025, time.March, 2, 23, 0, 0, 0), wantEnd: utc(2025, time.March, 3, 0, 0, 0, 0)},

		// Day.
		{name: "day middle", period: quota.PeriodDay, now: utc(2024, time.February, 29, 13, 0, 0, 0),
			wantStart: utc(2024, time.February, 29, 0, 0, 0, 0), wantEnd: utc(2024, time.March, 1, 0, 0, 0, 0)},
		{name: "day at midnight", period: quota.PeriodDay, now: utc(2024, time.March, 1, 0, 0, 0, 0),
			wantStart: utc(2024, time.March, 1, 0, 0, 0, 0), wantEnd: utc(2024, time.March, 2, 0, 0, 0, 0)},
		{name: "day last ns", period: quota.PeriodDay, now: utc(2025, time.December, 31, 23, 59, 59, 999_999_999),
			wantStart: utc(2025, time.December, 31, 0, 0, 0, 0), wantEnd: utc(2026, time.January, 1, 0, 0, 0, 0)},
		{name: "day uses UTC not now's zone", period: quota.PeriodDay, now: time.Date(2025, time.June, 10, 0, 30, 0, 0, berlin),
			wantStart: utc(2025, time.June, 9, 0, 0, 0, 0), wantEnd: utc(2025, time.June, 10, 0, 0, 0, 0)},

		// Week (Monday 00:00 UTC).
		{name: "week wednesday", period: quota.PeriodWeek, now: utc(2025, time.January, 15, 12, 0, 0, 0),
			wantStart: utc(2025, time.January, 13, 0, 0, 0, 0), wantEnd: utc(2025, time.January, 20, 0, 0, 0, 0)},
		{name: "week monday midnight", period: quota.PeriodWeek, now: utc(2025, time.January, 13, 0, 0, 0, 0),
			wantStart: utc(2025, time.January, 13, 0, 0, 0, 0), wantEnd: utc(2025, time.January, 20, 0, 0, 0, 0)},
		{name: "week sunday last ns", period: quota.PeriodWeek, now: utc(2025, time.January, 19, 23, 59, 59, 999_999_999),
			wantStart: utc(2025, time.January, 13, 0, 0, 0, 0), wantEnd: utc(2025, time.January, 20, 0, 0, 0, 0)},
		{name: "week across year", period: quota.PeriodWeek, now: utc(2025, time.January, 1, 8, 0, 0, 0),
			wantStart: utc(2024, time.December, 30, 0, 0, 0, 0), wantEnd: utc(2025, time.January, 6, 0, 0, 0, 0)},
		{name: "week epoch thursday", period: quota.PeriodWeek, now: utc(1970, time.January, 1, 0, 0, 0, 0),
			wantStart: utc(1969, time.December, 29, 0, 0, 0, 0), wantEnd: utc(1970, time.January, 5, 0, 0, 0, 0)},

		// Month, anchored on the 31st.
		{name: "month 31st jan", period: quota.PeriodMonth, anchor: anchor31, now: utc(2024, time.February, 10, 0, 0, 0, 0),
			wantStart: utc(2024, time.January, 31, 10, 30, 0, 0), wantEnd: utc(2024, time.February, 29, 10, 30, 0, 0)},
		{name: "month 31st leap feb", period: quota.PeriodMonth, anchor: anchor31, now: utc(2024, time.March, 1, 0, 0, 0, 0),
			wantStart: utc(2024, time.February, 29, 10, 30, 0, 0), wantEnd: utc(2024, time.March, 31, 10, 30, 0, 0)},
		{name: "month 31st leap feb before start", period: quota.PeriodMonth, anchor: anchor31, now: utc(2024, time.February, 29, 10, 29, 59, 999_999_999),
			wantStart: utc(2024, time.January, 31, 10, 30, 0, 0), wantEnd: utc(2024, time.February, 29, 10, 30, 0, 0)},
		{name: "month 31st non-leap feb", period: quota.PeriodMonth, anchor: anchor31, now: utc(2025, time.March, 15, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 28, 10, 30, 0, 0), wantEnd: utc(2025, time.March, 31, 10, 30, 0, 0)},
		{name: "month 31st non-leap feb start inclusive", period: quota.PeriodMonth, anchor: anchor31, now: utc(2025, time.February, 28, 10, 30, 0, 0),
			wantStart: utc(2025, time.February, 28, 10, 30, 0, 0), wantEnd: utc(2025, time.March, 31, 10, 30, 0, 0)},
		{name: "month 31st april short", period: quota.PeriodMonth, anchor: anchor31, now: utc(2025, time.May, 1, 0, 0, 0, 0),
			wantStart: utc(2025, time.April, 30, 10, 30, 0, 0), wantEnd: utc(2025, time.May, 31, 10, 30, 0, 0)},
		{name: "month 31st end exclusive", period: quota.PeriodMonth, anchor: anchor31, now: utc(2025, time.May, 31, 10, 30, 0, 0),
			wantStart: utc(2025, time.May, 31, 10, 30, 0, 0), wantEnd: utc(2025, time.June, 30, 10, 30, 0, 0)},
		{name: "month 31st december to january", period: quota.PeriodMonth, anchor: anchor31, now: utc(2026, time.January, 5, 0, 0, 0, 0),
			wantStart: utc(2025, time.December, 31, 10, 30, 0, 0), wantEnd: utc(2026, time.January, 31, 10, 30, 0, 0)},
		{name: "month 31st january 1st wraps to december", period: quota.PeriodMonth, anchor: anchor31, now: utc(2026, time.January, 1, 0, 0, 0, 0),
			wantStart: utc(2025, time.December, 31, 10, 30, 0, 0), wantEnd: utc(2026, time.January, 31, 10, 30, 0, 0)},
		{name: "month 31st now before anchor", period: quota.PeriodMonth, anchor: anchor31, now: utc(2023, time.February, 14, 0, 0, 0, 0),
			wantStart: utc(2023, time.January, 31, 10, 30, 0, 0), wantEnd: utc(2023, time.February, 28, 10, 30, 0, 0)},
		{name: "month 31st leap 2000", period: quota.PeriodMonth, anchor: anchor31, now: utc(2000, time.March, 1, 0, 0, 0, 0),
			wantStart: utc(2000, time.February, 29, 10, 30, 0, 0), wantEnd: utc(2000, time.March, 31, 10, 30, 0, 0)},
		{name: "month 31st non-leap 2100", period: quota.PeriodMonth, anchor: anchor31, now: utc(2100, time.March, 1, 0, 0, 0, 0),
			wantStart: utc(2100, time.February, 28, 10, 30, 0, 0), wantEnd: utc(2100, time.March, 31, 10, 30, 0, 0)},

		// Month, anchored on the 15th.
		{name: "month 15th after day", period: quota.PeriodMonth, anchor: anchor15, now: utc(2025, time.February, 20, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 15, 0, 0, 0, 0), wantEnd: utc(2025, time.March, 15, 0, 0, 0, 0)},
		{name: "month 15th before day", period: quota.PeriodMonth, anchor: anchor15, now: utc(2025, time.February, 14, 23, 59, 59, 0),
			wantStart: utc(2025, time.January, 15, 0, 0, 0, 0), wantEnd: utc(2025, time.February, 15, 0, 0, 0, 0)},
		{name: "month 15th exact boundary", period: quota.PeriodMonth, anchor: anchor15, now: utc(2025, time.February, 15, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 15, 0, 0, 0, 0), wantEnd: utc(2025, time.March, 15, 0, 0, 0, 0)},
		{name: "month 15th december wrap", period: quota.PeriodMonth, anchor: anchor15, now: utc(2025, time.December, 20, 0, 0, 0, 0),
			wantStart: utc(2025, time.December, 15, 0, 0, 0, 0), wantEnd: utc(2026, time.January, 15, 0, 0, 0, 0)},
		{name: "month 15th january wrap back", period: quota.PeriodMonth, anchor: anchor15, now: utc(2026, time.January, 3, 0, 0, 0, 0),
			wantStart: utc(2025, time.December, 15, 0, 0, 0, 0), wantEnd: utc(2026, time.January, 15, 0, 0, 0, 0)},
		{name: "month 15th years before anchor", period: quota.PeriodMonth, anchor: anchor15, now: utc(1999, time.July, 1, 0, 0, 0, 0),
			wantStart: utc(1999, time.June, 15, 0, 0, 0, 0), wantEnd: utc(1999, time.July, 15, 0, 0, 0, 0)},

		// Month, anchored on the 30th with a time of day.
		{name: "month 30th non-leap feb", period: quota.PeriodMonth, anchor: anchor30, now: utc(2023, time.March, 1, 0, 0, 0, 0),
			wantStart: utc(2023, time.February, 28, 23, 59, 59, 999_999_999), wantEnd: utc(2023, time.March, 30, 23, 59, 59, 999_999_999)},
		{name: "month 30th leap feb", period: quota.PeriodMonth, anchor: anchor30, now: utc(2024, time.February, 29, 23, 59, 59, 999_999_999),
			wantStart: utc(2024, time.February, 29, 23, 59, 59, 999_999_999), wantEnd: utc(2024, time.March, 30, 23, 59, 59, 999_999_999)},
		{name: "month 30th 1ns before start", period: quota.PeriodMonth, anchor: anchor30, now: utc(2024, time.March, 30, 23, 59, 59, 999_999_998),
			wantStart: utc(2024, time.February, 29, 23, 59, 59, 999_999_999), wantEnd: utc(2024, time.March, 30, 23, 59, 59, 999_999_999)},
		{name: "month 30th in a 31 day month", period: quota.PeriodMonth, anchor: anchor30, now: utc(2024, time.March, 31, 12, 0, 0, 0),
			wantStart: utc(2024, time.March, 30, 23, 59, 59, 999_999_999), wantEnd: utc(2024, time.April, 30, 23, 59, 59, 999_999_999)},

		// Month, other anchors.
		{name: "month 29th non-leap", period: quota.PeriodMonth, anchor: anchor29, now: utc(2025, time.March, 10, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 28, 12, 0, 0, 0), wantEnd: utc(2025, time.March, 29, 12, 0, 0, 0)},
		{name: "month 1st is calendar month", period: quota.PeriodMonth, anchor: anchor1, now: utc(2025, time.December, 31, 23, 59, 59, 0),
			wantStart: utc(2025, time.December, 1, 0, 0, 0, 0), wantEnd: utc(2026, time.January, 1, 0, 0, 0, 0)},
		{name: "month zero anchor is calendar month", period: quota.PeriodMonth, anchor: noAnchor, now: utc(2025, time.February, 14, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 1, 0, 0, 0, 0), wantEnd: utc(2025, time.March, 1, 0, 0, 0, 0)},
		{name: "month anchor zone converted to UTC", period: quota.PeriodMonth, anchor: time.Date(2025, time.March, 1, 0, 30, 0, 0, berlin),
			now:       utc(2025, time.March, 15, 0, 0, 0, 0),
			wantStart: utc(2025, time.February, 28, 23, 30, 0, 0), wantEnd: utc(2025, time.March, 28, 23, 30, 0, 0)},

		// None.
		{name: "none", period: quota.PeriodNone, anchor: anchor31, now: utc(2025, time.May, 5, 0, 0, 0, 0),
			wantStart: time.Unix(0, 0).UTC(), wantEnd: time.Time{}},
		{name: "none at epoch", period: quota.PeriodNone, now: time.Unix(0, 0),
			wantStart: time.Unix(0, 0).UTC(), wantEnd: time.Time{}},

		// Invalid.
		{name: "invalid period", period: quota.Period("year"), now: utc(2025, time.May, 5, 0, 0, 0, 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, end := tt.period.Window(tt.anchor, tt.now)
			if !start.Equal(tt.wantStart) || !end.Equal(tt.wantEnd) {
				t.Fatalf("%s.Window(%v, %v) = [%v, %v), want [%v, %v)",
					tt.period, tt.anchor, tt.now, start, end, tt.wantStart, tt.wantEnd)
			}
			if !start.IsZero() && start.Location() != time.UTC {
				t.Errorf("start location = %v, want UTC", start.Location())
			}
			if !end.IsZero() && end.Location() != time.UTC {
				t.Errorf("end location = %v, want UTC", end.Location())
			}
		})
	}
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// TestPeriodWindowProperties checks over random anchors and instants that
// periods contain now and tile time without gaps or overlaps.
func TestPeriodWindowProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(0x9e3779b97f4a7c15, 20250101))
	lo := utc(1970, time.January, 1, 0, 0, 0, 0).UnixNano()
	hi := utc(2200, time.January, 1, 0, 0, 0, 0).UnixNano()
	randTime := func() time.Time { return time.Unix(0, lo+rng.Int64N(hi-lo)).UTC() }
	zones := []*time.Location{time.UTC, time.FixedZone("plus5", 5*3600), time.FixedZone("minus930", -(9*3600 + 1800))}

	periods := []quota.Period{quota.PeriodHour, quota.PeriodDay, quota.PeriodWeek, quota.PeriodMonth}
	const iterations = 20000
	for _, p := range periods {
		t.Run(string(p), func(t *testing.T) {
			for i := range iterations {
				anchor := randTime()
				if rng.IntN(2) == 0 {
					// Bias towards the days that get clamped.
					y, m, _ := anchor.Date()
					d := 28 + rng.IntN(4)
					if d > daysIn(y, m) {
						d = daysIn(y, m)
					}
					anchor = time.Date(y, m, d, anchor.Hour(), anchor.Minute(), anchor.Second(), anchor.Nanosecond(), time.UTC)
				}
				now := randTime()
				if rng.IntN(8) == 0 {
					// Land exactly on a period boundary.
					now, _ = p.Window(anchor, now)
				}
				now = now.In(zones[rng.IntN(len(zones))])

				start, end := p.Window(anchor, now)
				if now.Before(start) || !now.Before(end) {
					t.Fatalf("#%d: Window(%v, %v) = [%v, %v) does not contain now", i, anchor, now, start, end)
				}
				if start.Location() != time.UTC || end.Location() != time.UTC {
					t.Fatalf("#%d: Window(%v, %v) = [%v, %v) not in UTC", i, anchor, now, start, end)
				}
				if nextStart, _ := p.Window(anchor, end); !nextStart.Equal(end) {
					t.Fatalf("#%d: anchor %v: period after [%v, %v) starts at %v", i, anchor, start, end, nextStart)
				}
				if _, prevEnd := p.Window(anchor, start.Add(-time.Nanosecond)); !prevEnd.Equal(start) {
					t.Fatalf("#%d: anchor %v: period before [%v, %v) ends at %v", i, anchor, start, end, prevEnd)
				}

				switch p {
				case quota.PeriodHour:
					if start.Truncate(time.Hour) != start || end.Sub(start) != time.Hour {
						t.Fatalf("#%d: hour window [%v, %v)", i, start, end)
					}
				case quota.PeriodDay:
					if start.Hour() != 0 || start.Minute() != 0 || start.Second() != 0 || start.Nanosecond() != 0 ||
						end.Sub(start) != 24*time.Hour {
						t.Fatalf("#%d: day window [%v, %v)", i, start, end)
					}
				case quota.PeriodWeek:
					if start.Weekday() != time.Monday || start.Hour() != 0 || start.Minute() != 0 ||
						start.Second() != 0 || start.Nanosecond() != 0 || end.Sub(start) != 7*24*time.Hour {
						t.Fatalf("#%d: week window [%v, %v)", i, start, end)
					}
				case quota.PeriodMonth:
					a := anchor.UTC()
					if want := min(a.Day(), daysIn(start.Year(), start.Month())); start.Day() != want {
						t.Fatalf("#%d: anchor %v: window [%v, %v) starts on day %d, want %d", i, anchor, start, end, start.Day(), want)
					}
					ah, am, as := a.Clock()
					sh, sm, ss := start.Clock()
					if ah != sh || am != sm || as != ss || a.Nanosecond() != start.Nanosecond() {
						t.Fatalf("#%d: anchor %v: window [%v, %v) starts at another time of day", i, anchor, start, end)
					}
					// The next period starts in the next calendar month.
					if ny, nm, _ := start.AddDate(0, 0, 1-start.Day()).AddDate(0, 1, 0).Date(); end.Year() != ny || end.Month() != nm {
						t.Fatalf("#%d: anchor %v: window [%v, %v) does not end in the next month", i, anchor, start, end)
					}
				}
			}
		})
	}
}

func TestPeriodWindowNoneProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 1000 {
		now := time.Unix(rng.Int64N(7_000_000_000), rng.Int64N(1e9))
		start, end := quota.PeriodNone.Window(time.Time{}, now)
		if !start.Equal(time.Unix(0, 0)) || !end.IsZero() {
			t.Fatalf("#%d: None.Window(_, %v) = [%v, %v)", i, now, start, end)
		}
	}
}

func TestPeriodWindowDoesNotAllocate(t *testing.T) {
	anchor := utc(2024, time.January, 31, 10, 30, 0, 0)
	now := time.Date(2025, time.March, 3, 4, 5, 6, 7, time.FixedZone("x", 3600))
	for _, p := range []quota.Period{quota.PeriodHour, quota.PeriodDay, quota.PeriodWeek, quota.PeriodMonth, quota.PeriodNone} {
		t.Run(string(p), func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() { p.Window(anchor, now) }); n != 0 {
				t.Fatalf("%s.Window allocates %v times per call", p, n)
			}
		})
	}
}

func BenchmarkPeriodWindowMonth(b *testing.B) {
	anchor := utc(2024, time.January, 31, 10, 30, 0, 0)
	now := utc(2025, time.March, 3, 4, 5, 6, 7)
	for b.Loop() {
		quota.PeriodMonth.Window(anchor, now)
	}
}
