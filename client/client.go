package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// FailMode says what Check and Reserve answer when quotad cannot be
// reached through every retry.
type FailMode int

const (
	// FailClosed returns the error: a product that cannot ask refuses
	// the work (the middleware answers 503). The default, because the
	// quota is what keeps a product's bill bounded.
	FailClosed FailMode = iota
	// FailOpen answers as if quotad had said yes: Check is allowed and
	// Reserve granted with an empty id, whose Commit and Release do
	// nothing. Each such answer is reported to the OnFailOpen hook.
	FailOpen
)

// Retry defaults: quotad answers in milliseconds, so a few quick tries
// ride out a restart or a dropped connection without holding a product's
// request for long.
const (
	DefaultMaxTries       = 4
	DefaultInitialBackoff = 50 * time.Millisecond
	DefaultMaxBackoff     = time.Second
	DefaultAttemptTimeout = 5 * time.Second
)

// maxAnswer bounds how much of an answer the client reads.
const maxAnswer = 16 << 20

// Client calls one quotad. It is safe for concurrent use; make one per
// process and share it.
type Client struct {
	base           string
	key            string
	hc             *http.Client
	maxTries       uint
	initialBackoff time.Duration
	maxBackoff     time.Duration
	attemptTimeout time.Duration
	failMode       FailMode
	onFailOpen     func(op, subject string, err error)
	userAgent      string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient makes the client send through hc. Leave its Timeout
// unset: it would also cut Events streams, whose tries WithAttemptTimeout
// bounds only until the stream's headers arrive.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithRetry sets how many times a call is tried in all (1: never retried)
// and the exponential backoff between tries, from initial up to maxBackoff.
func WithRetry(maxTries int, initial, maxBackoff time.Duration) Option {
	return func(c *Client) {
		c.maxTries = uint(max(1, maxTries))
		c.initialBackoff, c.maxBackoff = initial, maxBackoff
	}
}

// WithAttemptTimeout bounds each try of a call (0: no bound besides the
// caller's context). A try that times out after its request left may have
// been applied; it is retried only where that is safe (see Client).
func WithAttemptTimeout(d time.Duration) Option { return func(c *Client) { c.attemptTimeout = d } }

// WithFailMode sets what Check and Reserve answer when quotad is
// unreachable; FailClosed by default.
func WithFailMode(m FailMode) Option { return func(c *Client) { c.failMode = m } }

// OnFailOpen sets a hook called for every answer FailOpen made up (op is
// "check" or "reserve"), so that a product logs and counts the work it let
// through unmetered.
func OnFailOpen(f func(op, subject string, err error)) Option {
	return func(c *Client) { c.onFailOpen = f }
}

// WithUserAgent sets the User-Agent of every request.
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client of the quotad at baseURL ("http://quotad:8080")
// that authenticates with apiKey.
//
// Calls are retried on network errors and on 503 only, with backoff, up to
// DefaultMaxTries tries. A try that failed after its request may have
// reached quotad ("sent, outcome unknown": a timeout, a connection cut
// before the answer) is retried only because every call that changes usage
// is idempotent: Consume, each ConsumeBatch event and Reserve carry an
// idempotency key (a random one when the caller gave none, reused by every
// try of that call), and Commit and Release name their reservation.
// Reads change nothing. Deletes (DeletePlan, DeletePrice, RevokeKey) are
// retried too: a retry after the first try was applied answers 404, the
// thing being gone either way. Reset and CreateKey are not idempotent, so
// they are retried only when the request never left.
func New(baseURL, apiKey string, opts ...Option) *Client {
	c := &Client{
		base:           strings.TrimRight(baseURL, "/"),
		key:            apiKey,
		maxTries:       DefaultMaxTries,
		initialBackoff: DefaultInitialBackoff,
		maxBackoff:     DefaultMaxBackoff,
		attemptTimeout: DefaultAttemptTimeout,
		userAgent:      "quotad-go-client",
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// A product calls quotad on every request: keep as many idle
		// connections as it has requests in flight, not Go's 2.
		t.MaxIdleConnsPerHost = 256
		c.hc = &http.Client{Transport: t}
	}
	return c
}

// call is one operation of the contract.
type call struct {
	op     string // for errors and the fail-open hook
	method string
	path   string // escaped
	body   any    // nil: no body
	// safe says that a try that may have reached quotad can be tried
	// again without counting twice.
	safe bool
}

// transportError is a try that got no answer. sent says whether the
// request may have reached quotad.
type transportError struct {
	sent bool
	err  error
}

func (e *transportError) Error() string { return e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// do runs cl with retries and decodes a 2xx answer into out (when not nil).
// Errors: *Error for an answer that is not a success; an error matching
// quota.ErrUnavailable when quotad could not be reached through every try;
// the context's error when ctx ends first.
func (c *Client) do(ctx context.Context, cl call, out any) error {
	var body []byte
	if cl.body != nil {
		var err error
		if body, err = json.Marshal(cl.body); err != nil {
			return fmt.Errorf("quotad %s: encode request: %w", cl.op, err)
		}
	}
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := c.once(ctx, cl, body, out)
		if err == nil || ctx.Err() != nil {
			return struct{}{}, err
		}
		var e *Error
		if errors.As(err, &e) {
			if e.Status != http.StatusServiceUnavailable {
				return struct{}{}, backoff.Permanent(err)
			}
			if e.RetryAfter > 0 {
				// quotad said when; never wait longer than the
				// backoff's bound, which bounds the caller's wait.
				return struct{}{}, &retryLater{e, backoff.RetryAfterError{Duration: min(e.RetryAfter, c.maxBackoff)}}
			}
			return struct{}{}, err
		}
		var te *transportError
		if errors.As(err, &te) && (!te.sent || cl.safe) {
			return struct{}{}, err
		}
		return struct{}{}, backoff.Permanent(err)
	}, backoff.WithBackOff(c.backoff()), backoff.WithMaxTries(c.maxTries), backoff.WithMaxElapsedTime(0))
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("quotad %s: %w", cl.op, ctxErr)
	}
	var te *transportError
	if errors.As(err, &te) {
		return &unavailableError{op: cl.op, err: te.err}
	}
	var e *Error
	if errors.As(err, &e) {
		return e // not the retryLater around it
	}
	return err
}

// retryLater is a 503 that said when to retry: backoff waits that long
// (it finds the RetryAfterError), callers see the *Error.
type retryLater struct {
	err   *Error
	after backoff.RetryAfterError
}

func (r *retryLater) Error() string   { return r.err.Error() }
func (r *retryLater) Unwrap() []error { return []error{r.err, &r.after} }

// backoff returns the waits between tries: exponential from the initial
// backoff, doubling, up to the maximum, each randomized by ±50 % so that
// clients that failed together do not retry together.
func (c *Client) backoff() *backoff.ExponentialBackOff {
	bo := &backoff.ExponentialBackOff{
		InitialInterval:     c.initialBackoff,
		RandomizationFactor: 0.5,
		Multiplier:          2,
		MaxInterval:         c.maxBackoff,
	}
	bo.Reset()
	return bo
}

// once is one try of cl.
func (c *Client) once(ctx context.Context, cl call, body []byte, out any) error {
	if c.attemptTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.attemptTimeout)
		defer cancel()
	}
	// A try that never got a connection never reached quotad: the one
	// case where any call may be tried again.
	var gotConn atomic.Bool
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) { gotConn.Store(true) },
	})
	req, err := c.newRequest(ctx, cl.method, cl.path, body)
	if err != nil {
		return fmt.Errorf("quotad %s: %w", cl.op, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return &transportError{sent: gotConn.Load(), err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return &transportError{sent: true, err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return problemFrom(resp, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("quotad %s: decode answer: %w", cl.op, err)
		}
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, body []byte) (*http.Request, error) {
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, r)
	if err != nil {
		return nil, err
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	return req, nil
}

// problemFrom turns an answer that is not a success into an *Error: its
// problem+json body when it has one, else the status alone (a proxy's
// HTML page says nothing a caller can use).
func problemFrom(resp *http.Response, body []byte) *Error {
	e := &Error{}
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt == "application/problem+json" || mt == "application/json" {
		_ = json.Unmarshal(body, e)
	}
	e.Status = resp.StatusCode
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
		e.RetryAfter = time.Duration(secs) * time.Second
	}
	if e.Title == "" {
		e.Title = http.StatusText(resp.StatusCode)
	}
	return e
}

// newIdempotencyKey returns a random key for a call that came without one,
// so that its retries count once.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand crashes the program instead)
	return "qc-" + hex.EncodeToString(b[:])
}

// failOpen reports whether an unreachable quotad may be answered for, and
// tells the hook.
func (c *Client) failOpen(op, subject string, err error) bool {
	if c.failMode != FailOpen || !IsUnavailable(err) {
		return false
	}
	if c.onFailOpen != nil {
		c.onFailOpen(op, subject, err)
	}
	return true
}
