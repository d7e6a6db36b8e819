package cache

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/quotad/quotad/quota"
)

// Events travel through the pending stream as one string of fields
// separated by the ASCII unit separator (0x1f), in a fixed order. None of
// the fields can hold that byte: subjects, meters, models and plans are
// validated to printable characters, idempotency keys may not hold control
// characters, ids and hashes are ours. It is written once per consume on
// the hot path and read once per event by the flusher, so it costs a
// fraction of JSON both ways.
//
// Version 2 added the reservation a consume committed as a last field;
// version 1 events (without it) are still read.
const (
	eventVersion = "2"
	sep          = '\x1f'
	eventFields  = 20
)

// A pending stream entry holds one or more records, separated by the ASCII
// record separator (0x1e): the events of the consumes one script call
// counted, in the order it counted them, or the one event of a reset or a
// provision. A record is an encoded event, the unit separator and the
// counter's value right after the event (0 for resets and provisions).
// Entries written before records existed have the event in field "e" and
// the value in field "used"; decodeEntry still reads them.
const recordSep = '\x1e'

// records counts the records of one entry's "e" field.
func records(s string) int { return strings.Count(s, string(recordSep)) + 1 }

// appendRecords appends the events of the records of one entry's "e"
// field to events; on an error it answers events as they were.
func appendRecords(events []quota.Event, s string) ([]quota.Event, error) {
	n := len(events)
	for rec := range strings.SplitSeq(s, string(recordSep)) {
		i := strings.LastIndexByte(rec, sep)
		if i < 0 {
			return events[:n], fmt.Errorf("record %q: no counter value", rec)
		}
		used, err := strconv.ParseInt(rec[i+1:], 10, 64)
		if err != nil {
			return events[:n], fmt.Errorf("record %q: counter value: %w", rec, err)
		}
		ev, err := decodeEvent(rec[:i])
		if err != nil {
			return events[:n], err
		}
		ev.Used = used
		events = append(events, ev)
	}
	return events, nil
}

// appendEvent appends e, encoded.
func appendEvent(b []byte, e *quota.Event) []byte {
	b = append(b, eventVersion...)
	field := func(s string) { b = append(append(b, sep), s...) }
	num := func(n int64) { b = strconv.AppendInt(append(b, sep), n, 10) }
	instant := func(t time.Time) {
		b = append(b, sep)
		if !t.IsZero() {
			b = strconv.AppendInt(b, t.UnixNano(), 10)
		}
	}
	field(e.ID)
	field(string(e.Kind))
	field(e.Subject)
	field(e.Meter)
	instant(e.Start)
	instant(e.End)
	num(e.Amount)
	if e.Enforce {
		field("1")
	} else {
		field("")
	}
	if u := e.Usage; u != nil {
		field(u.Model)
		num(u.InputTokens)
		num(u.OutputTokens)
		num(u.CacheWriteTokens)
		num(u.CacheReadTokens)
	} else {
		b = append(b, sep, sep, sep, sep, sep)
	}
	field(e.IdempotencyKey)
	field(e.RequestHash)
	instant(e.At)
	if s := e.Settings; s != nil {
		field(s.Plan)
		instant(s.CycleAnchor)
	} else {
		b = append(b, sep, sep)
	}
	field(e.Reservation)
	return b
}

// appendConsumeEvent appends the event of a consume op.
func appendConsumeEvent(b []byte, op *quota.ConsumeOp) []byte {
	return appendEvent(b, &quota.Event{
		ID: op.EventID, Kind: quota.EventConsume, Subject: op.Key.Subject, Meter: op.Key.Meter,
		Start: op.Key.Start, End: op.Key.End, Amount: op.Amount, Enforce: op.Enforce, Usage: op.Usage,
		IdempotencyKey: op.IdempotencyKey, RequestHash: op.RequestHash, At: op.At,
	})
}

// decodeEvent reads what appendEvent wrote.
func decodeEvent(s string) (quota.Event, error) {
	var f [eventFields]string
	n := 0
	for n < eventFields-1 {
		i := strings.IndexByte(s, sep)
		if i < 0 {
			break
		}
		f[n], s = s[:i], s[i+1:]
		n++
	}
	f[n] = s
	v1 := n == eventFields-2 && f[0] == "1" // no reservation field
	if (n != eventFields-1 || f[0] != eventVersion) && !v1 || strings.IndexByte(s, sep) >= 0 {
		return quota.Event{}, fmt.Errorf("event %q: not a version %s event of %d fields", s, eventVersion, eventFields)
	}
	var err error
	integer := func(s string) int64 {
		if s == "" || err != nil {
			return 0
		}
		var v int64
		v, err = strconv.ParseInt(s, 10, 64)
		return v
	}
	instant := func(s string) time.Time {
		if s == "" {
			return time.Time{}
		}
		return time.Unix(0, integer(s)).UTC()
	}
	e := quota.Event{
		ID: f[1], Kind: quota.EventKind(f[2]), Subject: f[3], Meter: f[4],
		Start: instant(f[5]), End: instant(f[6]), Amount: integer(f[7]), Enforce: f[8] == "1",
		IdempotencyKey: f[14], RequestHash: f[15], At: instant(f[16]), Reservation: f[19],
	}
	if f[9] != "" {
		e.Usage = &quota.Usage{Model: f[9], InputTokens: integer(f[10]), OutputTokens: integer(f[11]),
			CacheWriteTokens: integer(f[12]), CacheReadTokens: integer(f[13])}
	}
	if f[17] != "" {
		e.Settings = &quota.Subject{ID: e.Subject, Plan: f[17], CycleAnchor: instant(f[18])}
	}
	if err != nil {
		return quota.Event{}, fmt.Errorf("event %s: %w", e.ID, err)
	}
	return e, nil
}
