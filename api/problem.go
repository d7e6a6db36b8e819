package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// Problem is an RFC 9457 problem+json body.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Field  string `json:"field,omitempty"` // the request field at fault, for 400s
}

// problemError is an error that already knows its answer.
type problemError struct {
	p          Problem
	retryAfter string // the Retry-After header, seconds; "" for none
}

func (e *problemError) Error() string { return e.p.Detail }

func problem(status int, detail string) error {
	return &problemError{p: Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail}}
}

func fieldProblem(field, detail string) error {
	err := problem(http.StatusBadRequest, detail).(*problemError)
	err.p.Field = field
	return err
}

// retryAfterOverloaded is the Retry-After of a request refused because
// the flusher is behind, in seconds: about one flush.
const retryAfterOverloaded = "1"

// retryLater says whether err refused usage that is worth sending again
// in a moment (Retry-After): the flusher was behind, or Redis, where
// enforcing is exact, was unreachable (its probe looks again several
// times a second).
func retryLater(err error) bool {
	return errors.Is(err, quota.ErrOverloaded) || errors.Is(err, quota.ErrEnforceUnavailable)
}

// errorStatus is the one table from domain errors to HTTP statuses.
var errorStatus = []struct {
	err    error
	status int
}{
	{quota.ErrInvalid, http.StatusBadRequest},
	{quota.ErrNotFound, http.StatusNotFound},
	{quota.ErrConflict, http.StatusConflict},
	{quota.ErrUnavailable, http.StatusServiceUnavailable},
	{context.DeadlineExceeded, http.StatusServiceUnavailable},
}

// toProblem turns any error a handler returned into the answer. Errors that
// are not in the table are logged and answered with a generic 500, so that
// internals never leak.
func toProblem(err error, log *slog.Logger, r *http.Request) Problem {
	var pe *problemError
	if errors.As(err, &pe) {
		return pe.p
	}
	var fe *quota.FieldError
	if errors.As(err, &fe) {
		return Problem{Type: "about:blank", Title: http.StatusText(400), Status: 400, Detail: fe.Error(), Field: fe.Field}
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		detail := http.StatusText(he.Code)
		if m, ok := he.Message.(string); ok {
			detail = m
		}
		return Problem{Type: "about:blank", Title: http.StatusText(he.Code), Status: he.Code, Detail: detail}
	}
	if errors.Is(r.Context().Err(), context.Canceled) {
		// The client left (its request's context ends with its
		// connection): what failed was waiting for it, not quotad.
		return clientGone().(*problemError).p
	}
	if errors.Is(err, quota.ErrEnforceUnavailable) { // expected during an outage: not logged per request
		return Problem{Type: "about:blank", Title: http.StatusText(http.StatusServiceUnavailable), Status: http.StatusServiceUnavailable,
			Detail: "Redis, where enforce consumes are counted exactly, is unreachable; nothing was counted, retry after Retry-After seconds (record consumes are still taken)"}
	}
	if errors.Is(err, quota.ErrOverloaded) { // expected under overload: not logged per request
		return Problem{Type: "about:blank", Title: http.StatusText(http.StatusServiceUnavailable), Status: http.StatusServiceUnavailable,
			Detail: "usage arrives faster than quotad writes it to Postgres; nothing was counted, retry after Retry-After seconds"}
	}
	for _, e := range errorStatus {
		if errors.Is(err, e.err) {
			detail := err.Error()
			if e.status == http.StatusServiceUnavailable {
				log.Warn("store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
				detail = "the quota stores are unavailable; retry later"
			}
			return Problem{Type: "about:blank", Title: http.StatusText(e.status), Status: e.status, Detail: detail}
		}
	}
	log.Error("internal error", "method", r.Method, "path", r.URL.Path, "err", err)
	return Problem{Type: "about:blank", Title: http.StatusText(500), Status: 500, Detail: "internal error"}
}

func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	p := toProblem(err, s.log, c.Request())
	if linger, unread := unreadBody(c.Request()); unread {
		// Answer now, rather than after the rest of a body that may come
		// slowly or never, and close.
		c.Response().Header().Set("Connection", "close")
		linger()
	}
	if p.Status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="quotad"`)
	}
	if retryLater(err) {
		c.Response().Header().Set("Retry-After", retryAfterOverloaded)
	}
	if pe := (*problemError)(nil); errors.As(err, &pe) && pe.retryAfter != "" {
		c.Response().Header().Set("Retry-After", pe.retryAfter)
	}
	c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
	c.Response().WriteHeader(p.Status)
	if c.Request().Method != http.MethodHead {
		_ = jsonEncode(c.Response(), p)
	}
}
