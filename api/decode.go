package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// MaxBody is the largest request body quotad reads.
const MaxBody = 64 << 10

// decode reads a JSON body into v. It answers 415 for another content type,
// 413 for a body over MaxBody, and 400 naming the field for everything a
// client can get wrong: bad JSON, wrong types, unknown fields, a field
// given twice, trailing data.
func decode(c echo.Context, v any) error {
	b, err := readJSON(c)
	if err != nil {
		return err
	}
	return decodeBytes(b, v)
}

// readJSON reads a JSON request's whole body (see decode for its answers).
func readJSON(c echo.Context) ([]byte, error) {
	r := c.Request()
	mt, _, err := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return nil, problem(http.StatusUnsupportedMediaType, "the body must be application/json")
	}
	if r.ContentLength > MaxBody {
		return nil, problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body must be at most %d bytes", MaxBody))
	}
	b, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, MaxBody))
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return nil, problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body must be at most %d bytes", MaxBody))
	case err != nil:
		return nil, bodyReadError(err)
	}
	return b, nil
}

// decodeReader is decode for a body from r.
func decodeReader(r io.Reader, v any) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return bodyReadError(err)
	}
	return decodeBytes(b, v)
}

func decodeBytes(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, b, reflect.TypeOf(v))
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil {
			return decodeError(err, b, reflect.TypeOf(v))
		}
		return fieldProblem("body", "the body must hold one JSON object and nothing after it")
	}
	// encoding/json keeps the last of a field given twice (and matches
	// names regardless of case): a client that sent two must hear which.
	if field := duplicateField(b); field != "" {
		return fieldProblem(field, "is given twice; give each field once")
	}
	return nil
}

// decodeError answers a body b that encoding/json could not decode into
// t. Beyond JSON's syntax, encoding/json does not reliably say which field
// is at fault (a nested unknown field, a map's key, a time or a decimal
// that does not parse), so locate finds it.
func decodeError(err error, b []byte, t reflect.Type) error {
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return fieldProblem("body", "the body is empty; a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fieldProblem("body", "the body is truncated JSON")
	case errors.As(err, &syntaxErr):
		return fieldProblem("body", fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset))
	}
	if field, reason := locate(t, b, ""); field != "" {
		return fieldProblem(field, reason)
	}
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return fieldProblem(typeErr.Field, fmt.Sprintf("must be %s, not JSON %s", jsonKind(typeErr.Type), typeErr.Value))
	}
	return fieldProblem("body", "does not match the request's schema (see /openapi.json)")
}

// bodyReadError answers a body that could not be read: 408 when it did
// not arrive within the read timeout, else the client left before
// sending all of it.
func bodyReadError(err error) error {
	if isTimeout(err) {
		return problem(http.StatusRequestTimeout, "the body did not arrive in time")
	}
	return clientGone()
}

// statusClientClosed is the status of a request whose client left before
// its answer (nginx's 499): it is counted, not logged as an error.
const statusClientClosed = 499

func clientGone() error {
	err := problem(statusClientClosed, "the client closed the connection before the answer").(*problemError)
	err.p.Title = "Client Closed Request"
	return err
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// locate finds the first field of raw, in document order, that does not
// decode into its place in t, and says why: its path ("usage.model",
// "limits.credits.limit", "events[2].amount") and a reason. It answers
// "" when every field decodes.
func locate(t reflect.Type, raw []byte, path string) (field, reason string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if string(bytes.TrimSpace(raw)) == "null" {
		return "", "" // encoding/json leaves the value as it is
	}
	at := func(name string) string {
		if path == "" {
			return name
		}
		return path + "." + name
	}
	whole := func() (string, string) {
		if err := json.Unmarshal(raw, reflect.New(t).Interface()); err != nil {
			return cmpOr(path, "body"), fieldReason(t, err)
		}
		return "", ""
	}
	if t == timeType || reflect.PointerTo(t).Implements(unmarshalerType) {
		return whole()
	}
	switch t.Kind() {
	case reflect.Struct:
		keys, vals, ok := members(raw)
		if !ok {
			return cmpOr(path, "body"), "must be an object, not JSON " + jsonValueKind(raw)
		}
		fields := JSONFields(t)
		for i, k := range keys {
			f, found := fieldNamed(fields, k)
			if !found {
				return at(k), fmt.Sprintf("unknown field %q", k)
			}
			if field, reason := locate(f.Type, vals[i], at(f.Name)); field != "" {
				return field, reason
			}
		}
	case reflect.Map:
		keys, vals, ok := members(raw)
		if !ok {
			return cmpOr(path, "body"), "must be an object, not JSON " + jsonValueKind(raw)
		}
		for i, k := range keys {
			if field, reason := locate(t.Elem(), vals[i], at(k)); field != "" {
				return field, reason
			}
		}
	case reflect.Slice:
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			return cmpOr(path, "body"), "must be an array, not JSON " + jsonValueKind(raw)
		}
		for i, item := range items {
			if field, reason := locate(t.Elem(), item, cmpOr(path, "body")+"["+strconv.Itoa(i)+"]"); field != "" {
				return field, reason
			}
		}
	default:
		return whole()
	}
	return "", ""
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// fieldNamed finds the field encoding/json would decode key into: the
// exact name first, else one that differs only in case.
func fieldNamed(fields []JSONField, key string) (JSONField, bool) {
	for _, f := range fields {
		if f.Name == key {
			return f, true
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f.Name, key) {
			return f, true
		}
	}
	return JSONField{}, false
}

// fieldReason says why a value did not decode into t, in the API's
// words rather than Go's (no Go type names, no time layouts).
func fieldReason(t reflect.Type, err error) string {
	var typeErr *json.UnmarshalTypeError
	var fe *quota.FieldError
	switch {
	case t == timeType:
		return "must be an RFC 3339 time, such as 2026-01-15T00:00:00Z"
	case errors.As(err, &fe):
		return fe.Reason
	case errors.As(err, &typeErr):
		return fmt.Sprintf("must be %s, not JSON %s", jsonKind(t), typeErr.Value)
	}
	return "is not a valid value here"
}

// members lists the members of a JSON object in document order.
func members(raw []byte) (keys []string, vals []json.RawMessage, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, false
		}
		keys, vals = append(keys, tok.(string)), append(vals, v)
	}
	return keys, vals, true
}

// duplicateField returns the path of the first member of an object in b
// whose name an earlier member of the same object has (in any case, as
// encoding/json matches names), or "". b is valid JSON (it decoded): a
// scan over its bytes, which allocates only for a key with escapes and
// for the answer (encoding/json's token walk cost as much as the decode).
func duplicateField(b []byte) string {
	d := dupScanner{b: b}
	path, dup := d.value()
	if !dup {
		return ""
	}
	var out strings.Builder
	for i := len(path) - 1; i >= 0; i-- { // innermost first
		switch p := path[i]; {
		case strings.HasPrefix(p, "["):
			if out.Len() == 0 {
				out.WriteString("body")
			}
			out.WriteString(p)
		case out.Len() == 0:
			out.WriteString(p)
		default:
			out.WriteString("." + p)
		}
	}
	return out.String()
}

// dupScanner walks valid JSON for duplicateField; keys holds the names of
// the members seen so far in each object being walked.
type dupScanner struct {
	b    []byte
	i    int
	keys [][]byte
}

func (d *dupScanner) ws() {
	for d.i < len(d.b) && (d.b[d.i] == ' ' || d.b[d.i] == '\t' || d.b[d.i] == '\n' || d.b[d.i] == '\r') {
		d.i++
	}
}

// str reads the string at d.i and answers its text, unescaped.
func (d *dupScanner) str() []byte {
	start, escaped := d.i+1, false
	i := start
	for d.b[i] != '"' {
		if d.b[i] == '\\' {
			escaped = true
			i++
		}
		i++
	}
	d.i = i + 1
	if !escaped {
		return d.b[start:i]
	}
	var s string
	_ = json.Unmarshal(d.b[start-1:i+1], &s) // valid JSON: it decodes
	return []byte(s)
}

// value walks one value and answers the path (innermost first) of a
// member named twice in an object.
func (d *dupScanner) value() ([]string, bool) {
	d.ws()
	switch d.b[d.i] {
	case '{':
		d.i++
		base := len(d.keys)
		defer func() { d.keys = d.keys[:base] }()
		d.ws()
		if d.b[d.i] == '}' {
			d.i++
			return nil, false
		}
		for {
			d.ws()
			k := d.str()
			for _, seen := range d.keys[base:] {
				if bytes.EqualFold(seen, k) {
					return []string{string(k)}, true
				}
			}
			d.keys = append(d.keys, k)
			d.ws()
			d.i++ // ':'
			if p, dup := d.value(); dup {
				return append(p, string(k)), true
			}
			d.ws()
			if d.b[d.i] == ',' {
				d.i++
				continue
			}
			d.i++ // '}'
			return nil, false
		}
	case '[':
		d.i++
		d.ws()
		if d.b[d.i] == ']' {
			d.i++
			return nil, false
		}
		for n := 0; ; n++ {
			if p, dup := d.value(); dup {
				return append(p, "["+strconv.Itoa(n)+"]"), true
			}
			d.ws()
			if d.b[d.i] == ',' {
				d.i++
				continue
			}
			d.i++ // ']'
			return nil, false
		}
	case '"':
		d.str()
	default: // a number, true, false or null
		for d.i < len(d.b) && bytes.IndexByte([]byte(",}] \t\n\r"), d.b[d.i]) < 0 {
			d.i++
		}
	}
	return nil, false
}

// jsonKind names the JSON a Go type takes.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "a value"
}

// jsonValueKind names the kind of a JSON value.
func jsonValueKind(raw []byte) string {
	switch s := bytes.TrimSpace(raw); {
	case len(s) == 0:
		return "nothing"
	case s[0] == '"':
		return "string"
	case s[0] == '{':
		return "object"
	case s[0] == '[':
		return "array"
	case s[0] == 't' || s[0] == 'f':
		return "boolean"
	default:
		return "number"
	}
}

func jsonEncode(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
