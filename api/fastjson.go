package api

// The hot path's JSON. Check and consume bodies are flat objects of a few
// strings and integers (a consume's usage is one more such object inside);
// a small scanner reads them without reflection,
// and the answers are appended by hand. Anything the scanner is not sure
// about (escapes, nested objects, nulls, floats, unknown fields) makes it
// give up, and the request goes through decode (encoding/json, strict),
// so errors and edge cases behave exactly as on the slow path.

import (
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/internal/jsonw"
	"github.com/quotad/quotad/quota"
)

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// readBody reads a JSON request's body into a pooled buffer, answering
// 415 and 413 like decode. put returns the buffer.
func readBody(c echo.Context) (body []byte, put func(), err error) {
	r := c.Request()
	if ct := r.Header.Get(echo.HeaderContentType); ct != "application/json" {
		return nil, nil, nil // let decode judge the content type
	}
	if r.ContentLength > MaxBody {
		return nil, nil, nil
	}
	bp := bodyPool.Get().(*[]byte)
	b := (*bp)[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Body.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if len(b) > MaxBody {
			*bp = b[:0]
			bodyPool.Put(bp)
			return nil, nil, problem(http.StatusRequestEntityTooLarge, "the body must be at most 65536 bytes")
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			*bp = b[:0]
			bodyPool.Put(bp)
			return nil, nil, bodyReadError(err)
		}
	}
	return b, func() { *bp = b[:0]; bodyPool.Put(bp) }, nil
}

// flatScanner walks a JSON object of strings, integers and (where the
// caller takes them) objects of the same.
type flatScanner struct {
	b []byte
	i int
}

func (s *flatScanner) ws() {
	for s.i < len(s.b) && (s.b[s.i] == ' ' || s.b[s.i] == '\t' || s.b[s.i] == '\n' || s.b[s.i] == '\r') {
		s.i++
	}
}

// str reads a string without escapes; ok is false otherwise.
func (s *flatScanner) str() ([]byte, bool) {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, false
	}
	start := s.i + 1
	for j := start; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return s.b[start:j], true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, false
		}
	}
	return nil, false
}

// int reads a JSON integer that fits int64 with room to spare.
func (s *flatScanner) int() (int64, bool) {
	j := s.i
	neg := j < len(s.b) && s.b[j] == '-'
	if neg {
		j++
	}
	start := j
	var n int64
	for j < len(s.b) && s.b[j] >= '0' && s.b[j] <= '9' {
		if j-start >= 18 {
			return 0, false
		}
		n = n*10 + int64(s.b[j]-'0')
		j++
	}
	if j == start || (s.b[start] == '0' && j-start > 1) {
		return 0, false
	}
	if j < len(s.b) && (s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E') {
		return 0, false
	}
	s.i = j
	if neg {
		n = -n
	}
	return n, true
}

// fields scans a body that is one object {"k": v, ...} (see object).
func (s *flatScanner) fields(set func(key []byte, str []byte, num int64, isStr bool) bool, obj func(key []byte) bool) bool {
	s.ws()
	if !s.object(set, obj) {
		return false
	}
	s.ws()
	return s.i == len(s.b)
}

// object scans {"k": v, ...} from s.i, calling set for each string or
// integer value; set answers false for a key or value kind it does not
// take. A value that is an object goes to obj (nil: none is taken), which
// must scan it with s.object and answer whether it took it.
func (s *flatScanner) object(set func(key []byte, str []byte, num int64, isStr bool) bool, obj func(key []byte) bool) bool {
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		return true
	}
	for {
		s.ws()
		key, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		switch {
		case s.i < len(s.b) && s.b[s.i] == '"':
			v, ok := s.str()
			if !ok || !set(key, v, 0, true) {
				return false
			}
		case s.i < len(s.b) && s.b[s.i] == '{':
			if obj == nil || !obj(key) {
				return false
			}
		default:
			n, ok := s.int()
			if !ok || !set(key, nil, n, false) {
				return false
			}
		}
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ',' {
			s.i++
			continue
		}
		if s.i < len(s.b) && s.b[s.i] == '}' {
			s.i++
			return true
		}
		return false
	}
}

// once records that the field with bit was seen, and answers false the
// second time: a field given twice is for the slow path to refuse.
func once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// setStr takes a string field's value into dst; false for another kind of
// value, or the field's second time (see once).
func setStr(dst *string, str []byte, isStr bool, seen *uint8, bit uint8) bool {
	*dst = string(str)
	return isStr && once(seen, bit)
}

// setInt takes an integer field's value into dst, like setStr.
func setInt(dst *int64, num int64, isStr bool, seen *uint8, bit uint8) bool {
	*dst = num
	return !isStr && once(seen, bit)
}

// fastCheck reads a CheckRequest; ok is false when the slow path must
// (an amount of 0 given, too: only the slow path tells it from none).
func fastCheck(b []byte, req *quota.CheckRequest) bool {
	s := flatScanner{b: b}
	var seen uint8
	return s.fields(func(key, str []byte, num int64, isStr bool) bool {
		switch string(key) {
		case "subject":
			return setStr(&req.Subject, str, isStr, &seen, 1)
		case "meter":
			return setStr(&req.Meter, str, isStr, &seen, 2)
		case "amount":
			req.Amount = num
			return !isStr && num != 0 && once(&seen, 4)
		}
		return false
	}, nil)
}

// usage scans a usage object into *dst (a Usage, priced by the cost
// book) for the field "usage"; it answers false for any other field, or
// a second "usage" (encoding/json merges it into the first: left to it).
func (s *flatScanner) usage(key []byte, dst **quota.Usage) bool {
	if string(key) != "usage" || *dst != nil {
		return false
	}
	u := &quota.Usage{}
	*dst = u
	var seen uint8
	return s.object(func(key, str []byte, num int64, isStr bool) bool {
		switch string(key) {
		case "model":
			return setStr(&u.Model, str, isStr, &seen, 1)
		case "input_tokens":
			return setInt(&u.InputTokens, num, isStr, &seen, 2)
		case "output_tokens":
			return setInt(&u.OutputTokens, num, isStr, &seen, 4)
		case "cache_write_tokens":
			return setInt(&u.CacheWriteTokens, num, isStr, &seen, 8)
		case "cache_read_tokens":
			return setInt(&u.CacheReadTokens, num, isStr, &seen, 16)
		}
		return false
	}, nil)
}

// fastConsume reads a ConsumeRequest, usage included (the priced consume
// of an LLM message is the common one); ok is false when the slow path
// must.
func fastConsume(b []byte, req *quota.ConsumeRequest) bool {
	s := flatScanner{b: b}
	return s.fields(consumeFields(req), func(key []byte) bool { return s.usage(key, &req.Usage) })
}

// consumeFields takes a consume's flat fields into req.
func consumeFields(req *quota.ConsumeRequest) func(key, str []byte, num int64, isStr bool) bool {
	var seen uint8
	return func(key, str []byte, num int64, isStr bool) bool {
		switch string(key) {
		case "subject":
			return setStr(&req.Subject, str, isStr, &seen, 1)
		case "meter":
			return setStr(&req.Meter, str, isStr, &seen, 2)
		case "mode":
			return setStr(&req.Mode, str, isStr, &seen, 4)
		case "idempotency_key":
			return setStr(&req.IdempotencyKey, str, isStr, &seen, 8)
		case "amount":
			return setInt(&req.Amount, num, isStr, &seen, 16)
		}
		return false
	}
}

// fastReserve reads a ReserveRequest; ok is false when the slow path
// must.
func fastReserve(b []byte, req *quota.ReserveRequest) bool {
	s := flatScanner{b: b}
	var seen uint8
	return s.fields(func(key, str []byte, num int64, isStr bool) bool {
		switch string(key) {
		case "subject":
			return setStr(&req.Subject, str, isStr, &seen, 1)
		case "meter":
			return setStr(&req.Meter, str, isStr, &seen, 2)
		case "idempotency_key":
			return setStr(&req.IdempotencyKey, str, isStr, &seen, 4)
		case "amount":
			return setInt(&req.Amount, num, isStr, &seen, 8)
		case "ttl_seconds":
			return setInt(&req.TTLSeconds, num, isStr, &seen, 16)
		}
		return false
	}, func(key []byte) bool { return s.usage(key, &req.Usage) })
}

// fastCommit reads a CommitRequest; ok is false when the slow path must.
func fastCommit(b []byte, req *quota.CommitRequest) bool {
	s := flatScanner{b: b}
	var seen uint8
	return s.fields(func(key, str []byte, num int64, isStr bool) bool {
		if string(key) == "amount" {
			return setInt(&req.Amount, num, isStr, &seen, 1)
		}
		return false
	}, func(key []byte) bool { return s.usage(key, &req.Usage) })
}

// fastBatch reads a batch body, {"events":[consume, ...]}; ok is false
// when the slow path must.
func fastBatch(b []byte, req *batchRequest) bool {
	s := flatScanner{b: b}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return false
	}
	s.i++
	s.ws()
	if key, ok := s.str(); !ok || string(key) != "events" {
		return false
	}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != ':' {
		return false
	}
	s.i++
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '[' {
		return false
	}
	s.i++
	s.ws()
	req.Events = make([]quota.ConsumeRequest, 0, 100)
	for s.i < len(s.b) && s.b[s.i] != ']' {
		req.Events = append(req.Events, quota.ConsumeRequest{})
		item := &req.Events[len(req.Events)-1]
		if !s.object(consumeFields(item), func(key []byte) bool { return s.usage(key, &item.Usage) }) {
			return false
		}
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == ',' {
			s.i++
			s.ws()
			if s.i < len(s.b) && s.b[s.i] == ']' {
				return false // a trailing comma
			}
		}
	}
	if s.i >= len(s.b) {
		return false
	}
	s.i++ // ]
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '}' {
		return false
	}
	s.i++
	s.ws()
	return s.i == len(s.b)
}

var jsonContentType = []string{"application/json"}

// writeJSON writes an appended JSON answer.
func writeJSON(c echo.Context, status int, b []byte) error {
	w := c.Response()
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_, err := w.Write(b)
	return err
}

// appendUsage appends the usage fields check and consume answers share.
func appendUsage(b []byte, used, reserved, limit, remaining int64) []byte {
	b = append(b, `,"used":`...)
	b = strconv.AppendInt(b, used, 10)
	b = append(b, `,"reserved":`...)
	b = strconv.AppendInt(b, reserved, 10)
	b = append(b, `,"limit":`...)
	b = strconv.AppendInt(b, limit, 10)
	b = append(b, `,"remaining":`...)
	return strconv.AppendInt(b, remaining, 10)
}

func appendCheck(b []byte, r *quota.CheckResult) []byte {
	b = append(b, `{"subject":`...)
	b = jsonw.String(b, r.Subject)
	b = append(b, `,"meter":`...)
	b = jsonw.String(b, r.Meter)
	b = append(b, `,"allowed":`...)
	b = strconv.AppendBool(b, r.Allowed)
	b = appendUsage(b, r.Used, r.Reserved, r.Limit, r.Remaining)
	b = append(b, `,"resets_at":`...)
	b = jsonw.TimeOrNull(b, r.ResetsAt.Time)
	b = append(b, `,"plan":`...)
	b = jsonw.String(b, r.Plan)
	return append(b, "}\n"...)
}

func appendConsume(b []byte, r *quota.ConsumeResponse) []byte {
	return append(appendConsumeFields(append(b, '{'), r), "}\n"...)
}

// appendConsumeFields appends a consume answer's fields, without braces
// (a commit's answer embeds them).
func appendConsumeFields(b []byte, r *quota.ConsumeResponse) []byte {
	b = append(b, `"applied":`...)
	b = strconv.AppendBool(b, r.Applied)
	b = append(b, `,"duplicate":`...)
	b = strconv.AppendBool(b, r.Duplicate)
	b = append(b, `,"amount":`...)
	b = strconv.AppendInt(b, r.Amount, 10)
	b = appendUsage(b, r.Used, r.Reserved, r.Limit, r.Remaining)
	b = append(b, `,"exceeded":`...)
	b = strconv.AppendBool(b, r.Exceeded)
	b = append(b, `,"resets_at":`...)
	return jsonw.TimeOrNull(b, r.ResetsAt.Time)
}

func appendReserve(b []byte, r *quota.ReserveResponse) []byte {
	b = append(b, '{')
	if r.ID != "" {
		b = append(b, `"id":`...)
		b = jsonw.String(b, r.ID)
		b = append(b, ',')
	}
	b = append(b, `"granted":`...)
	b = strconv.AppendBool(b, r.Granted)
	b = append(b, `,"duplicate":`...)
	b = strconv.AppendBool(b, r.Duplicate)
	b = append(b, `,"subject":`...)
	b = jsonw.String(b, r.Subject)
	b = append(b, `,"meter":`...)
	b = jsonw.String(b, r.Meter)
	b = append(b, `,"amount":`...)
	b = strconv.AppendInt(b, r.Amount, 10)
	if r.ExpiresAt != nil {
		b = append(b, `,"expires_at":`...)
		b = jsonw.TimeOrNull(b, r.ExpiresAt.Time)
	}
	b = appendUsage(b, r.Used, r.Reserved, r.Limit, r.Remaining)
	b = append(b, `,"resets_at":`...)
	b = jsonw.TimeOrNull(b, r.ResetsAt.Time)
	return append(b, "}\n"...)
}

func appendCommit(b []byte, r *quota.CommitResponse) []byte {
	b = appendConsumeFields(append(b, '{'), &r.ConsumeResponse)
	b = append(b, `,"id":`...)
	b = jsonw.String(b, r.ID)
	b = append(b, `,"reservation":`...)
	b = jsonw.String(b, r.Reservation)
	return append(b, "}\n"...)
}

func appendBatch(b []byte, r *batchAnswer) []byte {
	b = append(b, `{"results":[`...)
	for i := range r.Results {
		if i > 0 {
			b = append(b, ',')
		}
		item := &r.Results[i]
		b = append(b, '{')
		if item.ConsumeResponse != nil {
			b = appendConsumeFields(b, item.ConsumeResponse)
		}
		if p := item.Error; p != nil {
			if item.ConsumeResponse != nil {
				b = append(b, ',')
			}
			b = append(b, `"error":{"type":`...)
			b = jsonw.String(b, p.Type)
			b = append(b, `,"title":`...)
			b = jsonw.String(b, p.Title)
			b = append(b, `,"status":`...)
			b = strconv.AppendInt(b, int64(p.Status), 10)
			if p.Detail != "" {
				b = append(b, `,"detail":`...)
				b = jsonw.String(b, p.Detail)
			}
			if p.Field != "" {
				b = append(b, `,"field":`...)
				b = jsonw.String(b, p.Field)
			}
			b = append(b, '}')
		}
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}
