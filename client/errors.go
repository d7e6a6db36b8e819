package client

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/quotad/quotad/quota"
)

// Error is an answer of quotad that was not a success: its problem+json
// body (RFC 9457) and HTTP status. Match it with errors.As, or with
// errors.Is against quota's sentinels (ErrInvalid for 400, ErrNotFound
// for 404, ErrConflict for 409, ErrUnavailable for 503), so code written
// against quota.Service reads the same against the client.
type Error struct {
	Status int    `json:"status"`
	Type   string `json:"type,omitempty"`
	Title  string `json:"title"`
	Detail string `json:"detail,omitempty"`
	Field  string `json:"field,omitempty"` // the request field at fault, for 400s
	// RetryAfter is the answer's Retry-After (a 503 of an overloaded
	// quotad says when to come back; nothing was counted); 0 when none.
	RetryAfter time.Duration `json:"-"`
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("quotad: %d %s", e.Status, e.Title)
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Is maps the status to quota's sentinel errors.
func (e *Error) Is(target error) bool {
	switch target {
	case quota.ErrInvalid:
		return e.Status == http.StatusBadRequest
	case quota.ErrNotFound:
		return e.Status == http.StatusNotFound
	case quota.ErrConflict:
		return e.Status == http.StatusConflict
	case quota.ErrUnavailable:
		return e.Status == http.StatusServiceUnavailable
	}
	return false
}

// unavailableError is what a call returns when quotad could not be
// reached (or kept answering 503) through every retry. It is its own type
// so that IsUnavailable matches it without parsing messages, and it keeps
// the last cause for the log.
type unavailableError struct {
	op  string
	err error
}

func (e *unavailableError) Error() string {
	return fmt.Sprintf("quotad unavailable: %s: %v", e.op, e.err)
}

func (e *unavailableError) Unwrap() error { return e.err }

func (e *unavailableError) Is(target error) bool { return target == quota.ErrUnavailable }

// StatusOf returns the HTTP status of err when it is an *Error, and 0
// otherwise (a network error, a canceled context).
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// IsInvalid reports whether quotad refused the request as bad input (400);
// the *Error's Field names the field at fault.
func IsInvalid(err error) bool { return errors.Is(err, quota.ErrInvalid) }

// IsUnauthorized reports whether the API key is missing or unknown (401).
func IsUnauthorized(err error) bool { return StatusOf(err) == http.StatusUnauthorized }

// IsForbidden reports whether the API key lacks the scope (403).
func IsForbidden(err error) bool { return StatusOf(err) == http.StatusForbidden }

// IsNotFound reports whether the reservation, plan, model or API key is
// unknown (404).
func IsNotFound(err error) bool { return errors.Is(err, quota.ErrNotFound) }

// IsConflict reports a 409: an idempotency key reused with a different
// request, a reservation settled the other way (committed, then released,
// or the reverse), or a plan that may not be deleted (a subject has it,
// or new subjects get it).
func IsConflict(err error) bool { return errors.Is(err, quota.ErrConflict) }

// IsUnavailable reports whether quotad could not answer: unreachable
// through every retry, or answering 503 (its stores are down).
func IsUnavailable(err error) bool { return errors.Is(err, quota.ErrUnavailable) }
