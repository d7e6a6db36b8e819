package quota

import (
	"errors"
	"fmt"
)

// Domain sentinels. Adapters translate their driver errors into these so
// that api/ can map every error to one HTTP status in one table.
var (
	// ErrInvalid marks bad input; the api answers 400.
	ErrInvalid = errors.New("invalid input")
	// ErrNotFound marks an unknown plan, reservation or key; the api answers 404.
	ErrNotFound = errors.New("not found")
	// ErrConflict marks an idempotency key reused with a different body; 409.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable marks that no store could answer (both down, fail closed); 503.
	ErrUnavailable = errors.New("unavailable")
	// ErrOverloaded marks usage refused because it arrives faster than it
	// can be written to Postgres; 503 with Retry-After. Nothing was
	// counted: the caller retries.
	ErrOverloaded = errors.New("overloaded")
	// ErrEnforceUnavailable marks an enforce consume refused because
	// Redis, where enforcing is exact, is unreachable and quotad is set
	// not to enforce against Postgres alone (which lacks the usage still
	// unflushed in Redis); 503 with Retry-After. Nothing was counted.
	ErrEnforceUnavailable = fmt.Errorf("%w: enforce needs Redis, which is unreachable", ErrUnavailable)
)

// FieldError is an ErrInvalid that names the offending request field.
type FieldError struct {
	Field  string // JSON name of the field, e.g. "subject" or "usage.model"
	Reason string // what is wrong with it, in lower case
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Is makes errors.Is(err, ErrInvalid) true for every FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

// Invalid returns a FieldError for field.
func Invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
