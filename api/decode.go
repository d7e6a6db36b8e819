package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// MaxBody is the largest request body quotad reads.
const MaxBody = 64 << 10

// decode reads a JSON body into v. It answers 415 for another content type,
// 413 for a body over MaxBody, and 400 naming the field for everything a
// client can get wrong: bad JSON, wrong types, unknown fields, trailing data.
func decode(c echo.Context, v any) error {
	r := c.Request()
	mt, _, err := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return problem(http.StatusUnsupportedMediaType, "the body must be application/json")
	}
	if r.ContentLength > MaxBody {
		return problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body must be at most %d bytes", MaxBody))
	}
	return decodeReader(http.MaxBytesReader(c.Response(), r.Body, MaxBody), v)
}

// decodeFrom is decode for a body readBody already read (nil: not read).
func decodeFrom(c echo.Context, body []byte, v any) error {
	if body == nil {
		return decode(c, v)
	}
	return decodeReader(bytes.NewReader(body), v)
}

func decodeReader(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil {
			return decodeError(err)
		}
		return fieldProblem("body", "the body must hold one JSON object and nothing after it")
	}
	return nil
}

func decodeError(err error) error {
	var maxErr *http.MaxBytesError
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case isTimeout(err):
		return bodyReadError(err)
	case errors.As(err, &maxErr):
		return problem(http.StatusRequestEntityTooLarge, fmt.Sprintf("the body must be at most %d bytes", MaxBody))
	case errors.Is(err, io.EOF):
		return fieldProblem("body", "the body is empty; a JSON object is required")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fieldProblem("body", "the body is truncated JSON")
	case errors.As(err, &syntaxErr):
		return fieldProblem("body", fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset))
	case errors.As(err, &typeErr):
		field := typeErr.Field
		if field == "" {
			field = "body"
		}
		return fieldProblem(field, fmt.Sprintf("must be %s, not JSON %s", jsonKind(typeErr.Type.Kind().String()), typeErr.Value))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		field := name
		if field == "" {
			field = "body"
		}
		return fieldProblem(field, fmt.Sprintf("unknown field %q", name))
	default:
		// Errors from UnmarshalJSON methods (times, decimals, periods).
		return fieldProblem("body", err.Error())
	}
}

// bodyReadError answers a body that could not be read: 408 when it did
// not arrive within the read timeout.
func bodyReadError(err error) error {
	if isTimeout(err) {
		return problem(http.StatusRequestTimeout, "the body did not arrive in time")
	}
	return fieldProblem("body", "the body could not be read")
}

func jsonKind(goKind string) string {
	switch goKind {
	case "int64", "int", "int32", "uint64":
		return "an integer"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "map", "struct", "ptr":
		return "an object"
	case "slice":
		return "an array"
	}
	return "a " + goKind
}

func jsonEncode(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}
