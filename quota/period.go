package quota

import "time"

// Period is how often a quota resets.
type Period string

// The periods a plan can reset on.
const (
	PeriodHour  Period = "hour"  // UTC clock hours
	PeriodDay   Period = "day"   // UTC calendar days
	PeriodWeek  Period = "week"  // UTC weeks starting Monday 00:00
	PeriodMonth Period = "month" // months starting on the anchor's day and time of day
	PeriodNone  Period = "none"  // one lifetime period that never resets
)

// ParsePeriod returns the Period named s ("hour", "day", "week", "month" or
// "none"). An unknown name is an ErrInvalid for the field "period".
func ParsePeriod(s string) (Period, error) {
	if p := Period(s); p.Valid() {
		return p, nil
	}
	return "", Invalid("period", "unknown period %q (want hour, day, week, month or none)", s)
}

// Valid reports whether p is one of the defined periods.
func (p Period) Valid() bool {
	switch p {
	case PeriodHour, PeriodDay, PeriodWeek, PeriodMonth, PeriodNone:
		return true
	}
	return false
}

// Window returns the half-open interval [start, end) of the period that
// contains now. All results are in UTC.
//
// Hour, day and week are UTC calendar periods; weeks start on Monday at
// 00:00 UTC. Month periods start every month on the anchor's day of month
// and time of day in UTC; when a month is shorter than the anchor's day the
// period starts on that month's last day instead, and the next long month
// goes back to the anchor's day (anchor Jan 31: Feb 28 or 29, Mar 31, Apr 30).
// Only the anchor's day and time of day matter, so now may be before the
// anchor; the zero anchor gives calendar months. The anchor is ignored by the
// other periods.
//
// None is the lifetime period: start is the Unix epoch and end is the zero
// time.Time, meaning it never ends. An invalid p returns two zero times.
//
// Window does not allocate.
func (p Period) Window(anchor, now time.Time) (start, end time.Time) {
	now = now.UTC()
	switch p {
	case PeriodHour:
		start = now.Truncate(time.Hour)
		return start, start.Add(time.Hour)
	case PeriodDay:
		// Every day lasts 24h in UTC, and the zero time is a midnight.
		start = now.Truncate(24 * time.Hour)
		return start, start.Add(24 * time.Hour)
	case PeriodWeek:
		day := now.Truncate(24 * time.Hour)
		sinceMonday := (int(day.Weekday()) + 6) % 7
		start = day.Add(-time.Duration(sinceMonday) * 24 * time.Hour)
		return start, start.Add(7 * 24 * time.Hour)
	case PeriodMonth:
		return monthWindow(anchor.UTC(), now)
	case PeriodNone:
		return time.Unix(0, 0).UTC(), time.Time{}
	}
	return time.Time{}, time.Time{}
}

// monthWindow returns the anchored month period containing now. Both times
// are in UTC.
func monthWindow(anchor, now time.Time) (start, end time.Time) {
	// Plain integer calendar arithmetic instead of time.Date: this runs on
	// every check, and time.Date's normalisation was most of its cost.
	_, _, day := anchor.Date()
	_, tod := floorDiv(anchor.Unix(), 86400) // the anchor's time of day, in seconds
	nsec := int64(anchor.Nanosecond())
	at := func(y int, m time.Month) time.Time {
		d := day
		if n := daysInMonth(y, m); d > n {
			d = n
		}
		return time.Unix(daysFromCivil(y, m, d)*86400+tod, nsec).UTC()
	}

	// The period containing now starts either in now's month or, when now
	// is before that month's start, in the month before.
	y, m, _ := now.Date()
	start = at(y, m)
	if now.Before(start) {
		end = start
		if m == time.January {
			y, m = y-1, time.December
		} else {
			m--
		}
		return at(y, m), end
	}
	if m == time.December {
		y, m = y+1, time.January
	} else {
		m++
	}
	return start, at(y, m)
}

// floorDiv returns a/b rounded down and the non-negative remainder.
func floorDiv(a, b int64) (int64, int64) {
	q, r := a/b, a%b
	if r < 0 {
		q, r = q-1, r+b
	}
	return q, r
}

// daysFromCivil returns the number of days from 1970-01-01 to y-m-d in the
// proleptic Gregorian calendar (Howard Hinnant's days_from_civil).
func daysFromCivil(y int, m time.Month, d int) int64 {
	yy := int64(y)
	if m <= time.February {
		yy--
	}
	era := yy / 400
	if yy < 0 && yy%400 != 0 {
		era--
	}
	yoe := yy - era*400                    // [0, 399]
	mp := (int64(m) + 9) % 12              // March = 0
	doy := (153*mp+2)/5 + int64(d) - 1     // [0, 365]
	doe := yoe*365 + yoe/4 - yoe/100 + doy // [0, 146096]
	return era*146097 + doe - 719468
}

// daysInMonth returns the number of days in month m of year y (proleptic
// Gregorian calendar).
func daysInMonth(y int, m time.Month) int {
	switch m {
	case time.February:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case time.April, time.June, time.September, time.November:
		return 30
	}
	return 31
}
