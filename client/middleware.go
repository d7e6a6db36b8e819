package client

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// MiddlewareConfig says how the middleware meters a request.
type MiddlewareConfig struct {
	// Subject names who pays for r: "user:<id>" for a signed-in caller,
	// "anon:<fingerprint>" for a visitor. Required. Its error answers 401
	// (or the status of an *Error it returns) without asking quotad.
	Subject func(r *http.Request) (string, error)
	// Meter is the meter the request spends; "credits" when empty.
	Meter string
	// Estimate is what r is expected to cost, held before the handler
	// runs: an amount, or token usage priced by quotad. Nil holds 1. Its
	// error answers 400 with the error's text.
	Estimate func(r *http.Request) (Cost, error)
	// CheckOnly asks whether the estimate fits instead of holding it. It
	// is one read instead of a write, but concurrent requests of one
	// subject can then all pass and overshoot the limit together; the
	// usage committed is recorded as a consume.
	CheckOnly bool
	// TTL is how long a hold lasts if nothing settles it (a process that
	// died mid-request); quotad's default (300 s) when 0. Make it longer
	// than the slowest handler: usage committed after expiry is still
	// recorded, but meanwhile the hold stopped counting.
	TTL time.Duration
	// ReleaseUnsettled makes a handler that succeeded (status below 400)
	// without committing or releasing release its hold. By default the
	// estimate is committed: the work was done, and an estimate is the
	// best figure there is (so a product that bills a fixed amount per
	// request needs no code in its handlers).
	ReleaseUnsettled bool
	// Logger receives what the middleware cannot answer to anyone:
	// settling failures, quotad refusing the product's own key.
	// slog.Default() when nil.
	Logger *slog.Logger
}

// Cost is an amount of the meter, or token usage that quotad prices in
// credits.
type Cost struct {
	Amount int64
	Usage  *quota.Usage
}

// Middleware meters every request of the handler it wraps: before it, a
// hold of the estimate (or a check); a subject out of quota gets 429 with
// a problem+json body saying what is left and when it resets, and a
// Retry-After header. In the handler, ReservationFrom(r.Context()) commits
// the real usage. After it, a hold the handler did not settle is never
// left behind: released when the handler failed (a status of 400 or more,
// or a panic, which goes on after the release), otherwise committed at the
// estimate (see ReleaseUnsettled). When quotad is unreachable the client's
// fail mode decides: 503 problem+json when closed, the request passes
// when open.
func (c *Client) Middleware(cfg MiddlewareConfig) func(http.Handler) http.Handler {
	m := newMeter(c, cfg)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			res, refusal := m.admit(r)
			if refusal != nil {
				refusal.write(w)
				return
			}
			sw := &statusWriter{ResponseWriter: w}
			// A deferred settle without recover: a panic (or
			// runtime.Goexit) releases the hold and then goes on
			// with its own stack.
			done := false
			defer func() {
				if !done {
					m.settle(r, res, false)
				}
			}()
			next.ServeHTTP(sw, r.WithContext(withReservation(r.Context(), res)))
			done = true
			m.settle(r, res, sw.code() < 400)
		})
	}
}

// EchoMiddleware is Middleware for echo. A handler that returns an error
// has failed, whatever its error handler will answer, and releases its
// unsettled hold.
func (c *Client) EchoMiddleware(cfg MiddlewareConfig) echo.MiddlewareFunc {
	m := newMeter(c, cfg)
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(ec echo.Context) error {
			r := ec.Request()
			res, refusal := m.admit(r)
			if refusal != nil {
				for k, v := range refusal.header {
					ec.Response().Header()[k] = v
				}
				return ec.Blob(refusal.problem.Status, problemType, refusal.body())
			}
			ec.SetRequest(r.WithContext(withReservation(r.Context(), res)))
			done := false
			defer func() {
				if !done {
					m.settle(r, res, false)
				}
			}()
			err := next(ec)
			done = true
			m.settle(r, res, err == nil && ec.Response().Status < 400)
			return err
		}
	}
}

const problemType = "application/problem+json"

// meter is a MiddlewareConfig put to work.
type meter struct {
	c   *Client
	cfg MiddlewareConfig
	log *slog.Logger
}

func newMeter(c *Client, cfg MiddlewareConfig) *meter {
	if cfg.Subject == nil {
		panic("client: MiddlewareConfig.Subject is required")
	}
	cfg.Meter = cmp.Or(cfg.Meter, quota.DefaultMeter)
	return &meter{c: c, cfg: cfg, log: cmp.Or(cfg.Logger, slog.Default())}
}

// settleTimeout bounds the settling of a hold after the handler. It does
// not depend on the request's context, which ends when the caller hangs
// up: a hold must be settled all the same.
const settleTimeout = 10 * time.Second

// admit holds (or checks) r's estimate. It returns the reservation, or
// the answer that refuses r.
func (m *meter) admit(r *http.Request) (*Reservation, *refusal) {
	subject, err := m.cfg.Subject(r)
	if err != nil {
		status := cmp.Or(StatusOf(err), http.StatusUnauthorized)
		return nil, newRefusal(status, err.Error())
	}
	est := Cost{Amount: 1}
	if m.cfg.Estimate != nil {
		if est, err = m.cfg.Estimate(r); err != nil {
			return nil, newRefusal(http.StatusBadRequest, err.Error())
		}
	}
	ctx := r.Context()
	res := &Reservation{c: m.c, subject: subject, meter: m.cfg.Meter, estimate: est, key: newIdempotencyKey()}
	if m.cfg.CheckOnly {
		amount := est.Amount
		if est.Usage != nil {
			cost, err := m.c.Cost(ctx, *est.Usage)
			if err != nil {
				return nil, m.refuseError(r, err)
			}
			amount = cost.Credits
		}
		ck, err := m.c.Check(ctx, quota.CheckRequest{Subject: subject, Meter: m.cfg.Meter, Amount: amount})
		if err != nil {
			return nil, m.refuseError(r, err)
		}
		if !ck.Allowed {
			return nil, exhausted(subject, ck.Meter, amount, ck.Used, ck.Reserved, ck.Limit, ck.Remaining, ck.ResetsAt.Time)
		}
		res.checkOnly, res.remaining = true, ck.Remaining
		return res, nil
	}
	rv, err := m.c.Reserve(ctx, quota.ReserveRequest{
		Subject:        subject,
		Meter:          m.cfg.Meter,
		Amount:         est.Amount,
		Usage:          est.Usage,
		TTLSeconds:     int64(math.Ceil(m.cfg.TTL.Seconds())),
		IdempotencyKey: res.key,
	})
	if err != nil {
		return nil, m.refuseError(r, err)
	}
	if !rv.Granted {
		return nil, exhausted(subject, rv.Meter, rv.Amount, rv.Used, rv.Reserved, rv.Limit, rv.Remaining, rv.ResetsAt.Time)
	}
	res.id, res.held, res.remaining = rv.ID, rv.Amount, rv.Remaining
	if rv.ExpiresAt != nil {
		res.expiresAt = rv.ExpiresAt.Time
	}
	return res, nil
}

// refuseError answers a request quotad could not meter. Only the
// caller's own mistakes are told to the caller; a product's bad key or a
// client bug is logged and answered 500, as quotad answers internals.
func (m *meter) refuseError(r *http.Request, err error) *refusal {
	var e *Error
	switch {
	case IsUnavailable(err):
		m.log.Warn("quotad unavailable; refusing the request (fail closed)", "path", r.URL.Path, "err", err)
		return newRefusal(http.StatusServiceUnavailable, "the quota service is unavailable; retry later")
	case errors.As(err, &e) && e.Status == http.StatusBadRequest:
		ref := newRefusal(http.StatusBadRequest, e.Detail)
		ref.problem.Field = e.Field
		return ref
	case r.Context().Err() != nil:
		// The caller went away; nobody reads this answer.
		return newRefusal(http.StatusServiceUnavailable, "the request was canceled")
	}
	m.log.Error("quotad refused the middleware's request", "path", r.URL.Path, "err", err)
	return newRefusal(http.StatusInternalServerError, "internal error")
}

// settle settles what the handler left open: committed at the estimate
// when ok (unless ReleaseUnsettled), released when not; a commit whose
// outcome the handler could not learn is tried once more.
func (m *meter) settle(r *http.Request, res *Reservation, ok bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), settleTimeout)
	defer cancel()
	res.mu.Lock()
	defer res.mu.Unlock()
	var err error
	switch {
	case res.state == stateCommitUnknown:
		_, err = res.commitLocked(ctx, res.pending)
	case res.state != stateOpen:
		return
	case ok && !m.cfg.ReleaseUnsettled:
		_, err = res.commitLocked(ctx, quota.CommitRequest{})
	default:
		err = res.releaseLocked(ctx)
	}
	if err != nil {
		m.log.Error("quotad: settling a reservation after the handler",
			"subject", res.subject, "reservation", res.id, "path", r.URL.Path, "err", err)
	}
}

// Reservation is a request's hold on its subject's quota, made by the
// middleware before the handler ran. The handler commits what the work
// really cost, or releases it; whatever it leaves open the middleware
// settles. Its methods are safe for concurrent use.
type Reservation struct {
	c         *Client
	subject   string
	meter     string
	estimate  Cost
	key       string // idempotency key of the reserve, and of a consume standing for the commit
	checkOnly bool
	id        string
	held      int64
	remaining int64
	expiresAt time.Time

	mu      sync.Mutex
	state   settleState
	pending quota.CommitRequest // the commit whose outcome is unknown
}

type settleState int

const (
	stateOpen          settleState = iota
	stateCommitUnknown             // a commit failed without a definite answer
	stateCommitted
	stateReleased
)

type reservationKey struct{}

func withReservation(ctx context.Context, r *Reservation) context.Context {
	return context.WithValue(ctx, reservationKey{}, r)
}

// ReservationFrom returns the reservation the middleware made for the
// request whose context ctx is, or nil outside the middleware.
func ReservationFrom(ctx context.Context) *Reservation {
	r, _ := ctx.Value(reservationKey{}).(*Reservation)
	return r
}

// ID returns the reservation's id in quotad: empty when the middleware
// only checked (CheckOnly) or the client failed open.
func (r *Reservation) ID() string { return r.id }

// Subject returns who pays.
func (r *Reservation) Subject() string { return r.subject }

// Meter returns the meter spent.
func (r *Reservation) Meter() string { return r.meter }

// Held returns the amount held (0 when nothing is).
func (r *Reservation) Held() int64 { return r.held }

// Remaining returns what the subject had left once the hold was made.
func (r *Reservation) Remaining() int64 { return r.remaining }

// ExpiresAt returns when an unsettled hold stops counting (zero when
// nothing is held).
func (r *Reservation) ExpiresAt() time.Time { return r.expiresAt }

// Commit records what the work really cost (req.Amount or req.Usage;
// neither: the estimate), even above the estimate, and frees the hold.
// A second Commit answers again without counting twice. Without a hold in
// quotad (CheckOnly, or a fail-open reservation) the usage is recorded as
// a consume, so it is billed all the same. Errors: IsConflict after
// Release; others as Client.Commit.
func (r *Reservation) Commit(ctx context.Context, req quota.CommitRequest) (quota.CommitResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == stateReleased {
		return quota.CommitResponse{}, fmt.Errorf("commit reservation: already released: %w", quota.ErrConflict)
	}
	return r.commitLocked(ctx, req)
}

func (r *Reservation) commitLocked(ctx context.Context, req quota.CommitRequest) (quota.CommitResponse, error) {
	var res quota.CommitResponse
	var err error
	if r.id != "" {
		res, err = r.c.Commit(ctx, r.id, req)
	} else {
		cr := quota.ConsumeRequest{Subject: r.subject, Meter: r.meter, Amount: req.Amount, Usage: req.Usage, IdempotencyKey: r.key}
		if cr.Amount == 0 && cr.Usage == nil {
			cr.Amount, cr.Usage = r.estimate.Amount, r.estimate.Usage
		}
		res.ConsumeResponse, err = r.c.Consume(ctx, cr)
		res.Reservation = quota.ReservationCommitted
	}
	switch {
	case err == nil:
		r.state = stateCommitted
	case StatusOf(err) != 0 && !IsUnavailable(err):
		// quotad answered: the commit was refused and nothing was
		// recorded, so the hold is still open for the middleware.
	default:
		// No answer: the commit may have landed. Trying it again is
		// safe (a commit names its reservation, a consume carries its
		// key), and releasing instead could lose billed usage.
		r.state, r.pending = stateCommitUnknown, req
	}
	return res, err
}

// Release frees the hold without recording usage, for work that was not
// done. Releasing twice is not an error. Errors: IsConflict after Commit.
func (r *Reservation) Release(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateReleased:
		return nil
	case stateCommitted, stateCommitUnknown:
		return fmt.Errorf("release reservation: already committed: %w", quota.ErrConflict)
	}
	return r.releaseLocked(ctx)
}

func (r *Reservation) releaseLocked(ctx context.Context) error {
	if r.id != "" {
		if _, err := r.c.Release(ctx, r.id); err != nil {
			return err
		}
	}
	r.state = stateReleased
	return nil
}

// refusal is an answer the middleware gives instead of the handler's.
type refusal struct {
	problem exhaustedProblem
	header  http.Header
}

// exhaustedProblem is a problem+json body, with what is left of the quota
// when it was exhausted (RFC 9457 extension members).
type exhaustedProblem struct {
	Type      string      `json:"type"`
	Title     string      `json:"title"`
	Status    int         `json:"status"`
	Detail    string      `json:"detail,omitempty"`
	Field     string      `json:"field,omitempty"`
	Subject   string      `json:"subject,omitempty"`
	Meter     string      `json:"meter,omitempty"`
	Requested *int64      `json:"requested,omitempty"`
	Used      *int64      `json:"used,omitempty"`
	Reserved  *int64      `json:"reserved,omitempty"`
	Limit     *int64      `json:"limit,omitempty"`
	Remaining *int64      `json:"remaining,omitempty"`
	ResetsAt  *quota.Time `json:"resets_at,omitempty"`
}

func newRefusal(status int, detail string) *refusal {
	return &refusal{
		problem: exhaustedProblem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail},
		header:  http.Header{},
	}
}

// exhausted is the 429 of a subject whose quota cannot cover the estimate.
func exhausted(subject, meter string, requested, used, reserved, limit, remaining int64, resetsAt time.Time) *refusal {
	detail := fmt.Sprintf("%s has %d %s left of %d", subject, remaining, meter, limit)
	if reserved > 0 {
		detail += fmt.Sprintf(" (%d held by requests in flight)", reserved)
	}
	detail += fmt.Sprintf("; this request needs %d", requested)
	if !resetsAt.IsZero() {
		detail += "; the quota resets at " + resetsAt.UTC().Format(time.RFC3339)
	}
	ref := newRefusal(http.StatusTooManyRequests, detail)
	p := &ref.problem
	p.Subject, p.Meter = subject, meter
	p.Requested, p.Used, p.Reserved, p.Limit, p.Remaining = &requested, &used, &reserved, &limit, &remaining
	if !resetsAt.IsZero() {
		p.ResetsAt = &quota.Time{Time: resetsAt}
		// Retry-After only where waiting helps: until the period
		// resets. A lifetime quota never does, and gets none.
		secs := int64(math.Ceil(time.Until(resetsAt).Seconds()))
		ref.header.Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	}
	return ref
}

func (f *refusal) body() []byte {
	b, _ := json.Marshal(f.problem) // plain fields: cannot fail
	return b
}

func (f *refusal) write(w http.ResponseWriter) {
	for k, v := range f.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Type", problemType)
	w.WriteHeader(f.problem.Status)
	_, _ = w.Write(f.body())
}

// statusWriter remembers the status the handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming handlers (server-sent events, a model's tokens as
// they come) flush through the middleware.
func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the writer underneath.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// code is the status the handler answered: 200 when it wrote nothing.
func (w *statusWriter) code() int { return cmp.Or(w.status, http.StatusOK) }
