package client

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/quotad/quotad/quota"
)

// Check asks whether req.Amount (default 1) more of req.Meter (default
// "credits") may be spent by req.Subject now. It changes nothing. Under
// FailOpen an unreachable quotad answers Allowed with no figures.
func (c *Client) Check(ctx context.Context, req quota.CheckRequest) (quota.CheckResult, error) {
	var res quota.CheckResult
	err := c.do(ctx, call{op: "check", method: http.MethodPost, path: "/v1/check", body: req, safe: true}, &res)
	if err != nil && c.failOpen("check", req.Subject, err) {
		return quota.CheckResult{Subject: req.Subject, Meter: cmp.Or(req.Meter, quota.DefaultMeter), Allowed: true}, nil
	}
	return res, err
}

// Consume records (mode "record", the default) or enforces (mode
// "enforce": applied only if it fits) usage. A request without an
// idempotency key is given a random one, so that a retry after a lost
// answer counts once; give your own (a message id) to make a retry of
// the whole call count once too. An enforce consume that did not fit
// answers Applied false, not an error. Consume does not fail open:
// pretending usage was recorded would lose it, so the error is returned
// for the caller to keep the usage and record it later.
func (c *Client) Consume(ctx context.Context, req quota.ConsumeRequest) (quota.ConsumeResponse, error) {
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = newIdempotencyKey()
	}
	var res quota.ConsumeResponse
	err := c.do(ctx, call{op: "consume", method: http.MethodPost, path: "/v1/consume", body: req, safe: true}, &res)
	return res, err
}

// BatchResult is the answer to one event of a ConsumeBatch: the consume's
// answer, or Err when quotad refused that event alone (the others are
// applied all the same).
type BatchResult struct {
	quota.ConsumeResponse
	Err *Error
}

// UnmarshalJSON reads a result as quotad writes it: a consume answer, or
// {"error": problem}.
func (r *BatchResult) UnmarshalJSON(b []byte) error {
	var probe struct {
		Error *Error `json:"error"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return err
	}
	if probe.Error != nil {
		*r = BatchResult{Err: probe.Error}
		return nil
	}
	*r = BatchResult{}
	return json.Unmarshal(b, &r.ConsumeResponse)
}

type batchRequest struct {
	Events []quota.ConsumeRequest `json:"events"`
}

type batchAnswer struct {
	Results []BatchResult `json:"results"`
}

// ConsumeBatch applies events (at most 1,000) in one request and returns
// their results in the same order. Events without an idempotency key are
// given random ones (the caller's slice is not changed), so that a retry
// of the batch counts each event once. Events quotad refused with 503
// (shed while it is overloaded, or its stores failed: nothing counted)
// are sent again, alone, within the client's retries; those still refused
// keep their 503. The error is for the batch as a whole (bad request,
// unreachable); an event refused for itself is its result's Err.
func (c *Client) ConsumeBatch(ctx context.Context, events []quota.ConsumeRequest) ([]BatchResult, error) {
	evs := make([]quota.ConsumeRequest, len(events))
	for i, e := range events {
		if e.IdempotencyKey == "" {
			e.IdempotencyKey = newIdempotencyKey()
		}
		evs[i] = e
	}
	results := make([]BatchResult, len(evs))
	todo := make([]int, len(evs)) // indexes of the events to send
	for i := range todo {
		todo[i] = i
	}
	bo := c.backoff()
	for try := uint(1); ; try++ {
		send := make([]quota.ConsumeRequest, len(todo))
		for j, i := range todo {
			send[j] = evs[i]
		}
		var res batchAnswer
		err := c.do(ctx, call{op: "consume batch", method: http.MethodPost, path: "/v1/consume/batch", body: batchRequest{Events: send}, safe: true}, &res)
		if err != nil {
			if try == 1 {
				return nil, err
			}
			return results, nil // the events not sent again keep their 503
		}
		if len(res.Results) != len(send) {
			return nil, fmt.Errorf("quotad consume batch: %d results for %d events", len(res.Results), len(send))
		}
		var again []int
		for j, i := range todo {
			results[i] = res.Results[j]
			if r := res.Results[j].Err; r != nil && r.Status == http.StatusServiceUnavailable {
				again = append(again, i)
			}
		}
		if len(again) == 0 || try >= c.maxTries {
			return results, nil
		}
		todo = again
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return results, nil
		}
	}
}

// Reserve holds req.Amount (or req.Usage, priced) of a meter before
// expensive work, for req.TTLSeconds (default 300). A hold that does not
// fit answers Granted false with the subject's figures, not an error. A
// request without an idempotency key is given a random one, so that a
// retry after a lost answer holds once. Under FailOpen an unreachable
// quotad answers Granted with an empty ID, whose Commit and Release do
// nothing.
func (c *Client) Reserve(ctx context.Context, req quota.ReserveRequest) (quota.ReserveResponse, error) {
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = newIdempotencyKey()
	}
	var res quota.ReserveResponse
	err := c.do(ctx, call{op: "reserve", method: http.MethodPost, path: "/v1/reservations", body: req, safe: true}, &res)
	if err != nil && c.failOpen("reserve", req.Subject, err) {
		return quota.ReserveResponse{Granted: true, Subject: req.Subject, Meter: cmp.Or(req.Meter, quota.DefaultMeter), Amount: req.Amount}, nil
	}
	return res, err
}

// Commit records the actual cost of reservation id's work (req.Amount or
// req.Usage; neither: the held amount), even above the hold or after its
// expiry, and frees the hold. A second commit answers the first one, which
// is what makes retries safe. Errors: IsNotFound for an unknown id,
// IsConflict when it was released. An empty id (a fail-open reservation)
// does nothing.
func (c *Client) Commit(ctx context.Context, id string, req quota.CommitRequest) (quota.CommitResponse, error) {
	var res quota.CommitResponse
	if id == "" {
		return res, nil
	}
	err := c.do(ctx, call{op: "commit", method: http.MethodPost, path: "/v1/reservations/" + url.PathEscape(id) + "/commit", body: req, safe: true}, &res)
	return res, err
}

// Release frees reservation id's hold without recording usage. A second
// release answers Duplicate. Errors: IsNotFound for an unknown id,
// IsConflict when it was committed. An empty id does nothing.
func (c *Client) Release(ctx context.Context, id string) (quota.ReleaseResponse, error) {
	var res quota.ReleaseResponse
	if id == "" {
		return res, nil
	}
	err := c.do(ctx, call{op: "release", method: http.MethodDelete, path: "/v1/reservations/" + url.PathEscape(id), safe: true}, &res)
	return res, err
}

// Subject returns a subject's plan and the usage of each of its meters. A
// subject never seen answers from its kind's default plan.
func (c *Client) Subject(ctx context.Context, subject string) (quota.SubjectView, error) {
	var res quota.SubjectView
	err := c.do(ctx, call{op: "subject", method: http.MethodGet, path: subjectPath(subject), safe: true}, &res)
	return res, err
}

// PutSubject changes a subject's plan, limits or cycle anchor (admin key).
func (c *Client) PutSubject(ctx context.Context, subject string, u quota.SubjectUpdate) (quota.SubjectView, error) {
	var res quota.SubjectView
	err := c.do(ctx, call{op: "put subject", method: http.MethodPut, path: subjectPath(subject), body: u, safe: true}, &res)
	return res, err
}

type resetRequest struct {
	Meter string `json:"meter,omitempty"`
}

// Reset sets the current-period usage of meter (every meter when empty)
// to 0 (admin key). It is not retried once the request may have reached
// quotad: a second reset would also wipe usage recorded between the two.
func (c *Client) Reset(ctx context.Context, subject, meter string) (quota.SubjectView, error) {
	var res quota.SubjectView
	err := c.do(ctx, call{op: "reset", method: http.MethodPost, path: subjectPath(subject) + "/reset", body: resetRequest{Meter: meter}}, &res)
	return res, err
}

// Plans returns every plan.
func (c *Client) Plans(ctx context.Context) ([]quota.Plan, error) {
	var res []quota.Plan
	err := c.do(ctx, call{op: "plans", method: http.MethodGet, path: "/v1/plans", safe: true}, &res)
	return res, err
}

// Plan returns the plan called name. Errors: IsNotFound.
func (c *Client) Plan(ctx context.Context, name string) (quota.Plan, error) {
	var res quota.Plan
	err := c.do(ctx, call{op: "plan", method: http.MethodGet, path: "/v1/plans/" + url.PathEscape(name), safe: true}, &res)
	return res, err
}

// PutPlan creates or replaces plan p (admin key).
func (c *Client) PutPlan(ctx context.Context, p quota.Plan) (quota.Plan, error) {
	var res quota.Plan
	err := c.do(ctx, call{op: "put plan", method: http.MethodPut, path: "/v1/plans/" + url.PathEscape(p.Name), body: p, safe: true}, &res)
	return res, err
}

// DeletePlan deletes the plan called name and returns it (admin key).
// Errors: IsNotFound for an unknown plan; IsConflict for a plan some
// subject has, or a kind's default plan (new subjects get it). A retry
// after a lost answer may answer IsNotFound: the plan is gone either way.
func (c *Client) DeletePlan(ctx context.Context, name string) (quota.Plan, error) {
	var res quota.Plan
	err := c.do(ctx, call{op: "delete plan", method: http.MethodDelete, path: "/v1/plans/" + url.PathEscape(name), safe: true}, &res)
	return res, err
}

// Cost prices u in credits (and US dollars) with quotad's cost book.
// Errors: IsInvalid for an unknown model.
func (c *Client) Cost(ctx context.Context, u quota.Usage) (quota.CostResult, error) {
	var res quota.CostResult
	err := c.do(ctx, call{op: "cost", method: http.MethodPost, path: "/v1/cost", body: u, safe: true}, &res)
	return res, err
}

// Pricing is quotad's cost book.
type Pricing struct {
	Margin quota.Decimal `json:"margin"`
	Prices []quota.Price `json:"prices"`
}

// Pricing returns the cost book: every model's price and the margin.
func (c *Client) Pricing(ctx context.Context) (Pricing, error) {
	var res Pricing
	err := c.do(ctx, call{op: "pricing", method: http.MethodGet, path: "/v1/pricing", safe: true}, &res)
	return res, err
}

// PutPrice creates or replaces the price of p.Model (admin key).
func (c *Client) PutPrice(ctx context.Context, p quota.Price) (quota.Price, error) {
	var res quota.Price
	err := c.do(ctx, call{op: "put price", method: http.MethodPut, path: "/v1/pricing/" + url.PathEscape(p.Model), body: p, safe: true}, &res)
	return res, err
}

// DeletePrice deletes the price of model and returns it (admin key);
// usage of the model is then refused like an unknown model's. Errors:
// IsNotFound for a model without a price, IsInvalid for a malformed name.
// A retry after a lost answer may answer IsNotFound: the price is gone
// either way.
func (c *Client) DeletePrice(ctx context.Context, model string) (quota.Price, error) {
	var res quota.Price
	err := c.do(ctx, call{op: "delete price", method: http.MethodDelete, path: "/v1/pricing/" + url.PathEscape(model), safe: true}, &res)
	return res, err
}

// Key is a minted API key: the secret, shown only once, here, and the
// key's description, whose ID is what RevokeKey takes.
type Key struct {
	Key string `json:"key"`
	quota.APIKey
}

// Scopes of API keys: a service key checks, consumes, reserves and reads;
// an admin key does everything.
const (
	ScopeService = "service"
	ScopeAdmin   = "admin"
)

// KeySpec describes an API key to mint.
type KeySpec struct {
	Scope     string     `json:"scope"`                // ScopeService or ScopeAdmin
	Name      string     `json:"name,omitempty"`       // optional
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // nil: never; else in the future
}

// CreateKey mints an API key with scope (ScopeService or ScopeAdmin) and
// an optional name that never expires (admin key); MintKey sets an
// expiry. It is not retried once the request may have reached quotad,
// which would mint a second key.
func (c *Client) CreateKey(ctx context.Context, scope, name string) (Key, error) {
	return c.MintKey(ctx, KeySpec{Scope: scope, Name: name})
}

// MintKey mints the API key spec describes (admin key); quotad refuses
// it from its ExpiresAt on. Errors: IsInvalid naming the field for a bad
// scope, name or expiry. Not retried, as CreateKey.
func (c *Client) MintKey(ctx context.Context, spec KeySpec) (Key, error) {
	var res Key
	err := c.do(ctx, call{op: "create key", method: http.MethodPost, path: "/v1/keys", body: spec}, &res)
	return res, err
}

type keyList struct {
	Keys []quota.APIKey `json:"keys"`
}

// Keys lists every API key by id, expired ones too until revoked, without
// the secrets (admin key).
func (c *Client) Keys(ctx context.Context) ([]quota.APIKey, error) {
	var res keyList
	err := c.do(ctx, call{op: "keys", method: http.MethodGet, path: "/v1/keys", safe: true}, &res)
	return res.Keys, err
}

// RevokeKey deletes the API key id and returns what it was (admin key).
// When it answers, no instance of quotad accepts the key any more.
// Errors: IsNotFound for an unknown id. A retry after a lost answer may
// answer IsNotFound: the key is gone either way.
func (c *Client) RevokeKey(ctx context.Context, id int64) (quota.APIKey, error) {
	var res quota.APIKey
	err := c.do(ctx, call{op: "revoke key", method: http.MethodDelete, path: "/v1/keys/" + strconv.FormatInt(id, 10), safe: true}, &res)
	return res, err
}

func subjectPath(subject string) string { return "/v1/subjects/" + url.PathEscape(subject) }
