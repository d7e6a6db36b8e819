// Package jsonw appends JSON values to byte slices, for the few answers and
// events on the hot path that are written by hand instead of through
// encoding/json's reflection. Its output decodes to what encoding/json's
// would (it does not escape <, > and &, which JSON does not require).
package jsonw

import (
	"strconv"
	"time"
)

const hex = "0123456789abcdef"

// String appends s as a JSON string.
func String(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, `\u00`...)
			b = append(b, hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// Time appends t as encoding/json does (RFC 3339 with nanoseconds, in t's
// location).
func Time(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// TimeOrNull appends t in UTC to the second, or null for the zero time.
func TimeOrNull(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(b, "null"...)
	}
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339)
	return append(b, '"')
}

// Field appends ,"name": (or "name": first, when b ends with '{').
func Field(b []byte, name string) []byte {
	if len(b) > 0 && b[len(b)-1] != '{' {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	return append(b, '"', ':')
}

// Int appends n.
func Int(b []byte, n int64) []byte { return strconv.AppendInt(b, n, 10) }

// Bool appends v.
func Bool(b []byte, v bool) []byte { return strconv.AppendBool(b, v) }
