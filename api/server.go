// Package api serves quotad's REST contract (the OpenAPI document it serves) with
// echo: routing, auth, problem+json errors, metrics and the OpenAPI document.
package api

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/quotad/quotad/quota"
)

// Keys looks up and manages API keys; persist.Store implements it.
type Keys interface {
	// LookupKey returns the key whose SHA-256 is sum, or
	// quota.ErrNotFound (also for an expired key).
	LookupKey(ctx context.Context, sum [32]byte) (quota.APIKey, error)
	// CreateKey mints a key and returns its description and the key.
	CreateKey(ctx context.Context, scope, name string, expiresAt *time.Time) (quota.APIKey, string, error)
	// Keys lists the keys.
	Keys(ctx context.Context) ([]quota.APIKey, error)
	// RevokeKey deletes a key and returns it, or quota.ErrNotFound.
	RevokeKey(ctx context.Context, id int64) (quota.APIKey, error)
}

// Readiness is what /readyz reports.
type Readiness struct {
	Status string            `json:"status"` // "ok", "degraded" or "unavailable"
	Stores map[string]string `json:"stores"` // store name -> "up" or "down"
	Detail map[string]any    `json:"detail,omitempty"`
}

// Config is what a Server is built from.
type Config struct {
	Service  *quota.Service
	Keys     Keys
	AdminKey string // QUOTAD_ADMIN_KEY; empty disables it
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Ready reports the stores' state for /readyz.
	Ready func(ctx context.Context) Readiness
	// Floor adds POST /v1/floor, a benchmark baseline that decodes and
	// answers a small JSON body with no quota work and no auth
	// (QUOTAD_BENCH_FLOOR). Not part of the contract.
	Floor bool
	// Feed serves the events streams; nil (the Postgres-only tiers)
	// answers them 503.
	Feed Feed
	// EventsHeartbeat is how often a quiet events stream sends a
	// comment: 15 s when 0.
	EventsHeartbeat time.Duration
	// Limits bound what one client can hold (see conns.go).
	Limits Limits
	// OpsScope is the scope a key needs for /metrics and /readyz
	// (QUOTAD_OPS_AUTH); "": none. They expose no secrets.
	OpsScope string
	// KeysChanged tells every instance, this one included, to call
	// ForgetKeys (a key was revoked), and returns once they have; nil:
	// this instance alone.
	KeysChanged func(ctx context.Context)
}

// Limits bound the connections and the time a client can hold.
type Limits struct {
	MaxConns     int           // open connections (QUOTAD_MAX_CONNS); 0: no cap
	MaxInFlight  int           // usage requests handled at once (QUOTAD_MAX_IN_FLIGHT); 0: no bound (see admission)
	ReadTimeout  time.Duration // for the headers, then again for the body (QUOTAD_READ_TIMEOUT); 0: none
	WriteTimeout time.Duration // from the headers to the end of the answer (QUOTAD_WRITE_TIMEOUT); 0: none
	// Failed authentications a client address may make at once
	// (QUOTAD_AUTH_FAIL_BURST), and regains a second
	// (QUOTAD_AUTH_FAIL_RATE; 0: no limit). See authenticator.
	AuthFailBurst int
	AuthFailRate  float64
}

// Server is the HTTP face of a quota.Service.
type Server struct {
	echo        *echo.Echo
	svc         *quota.Service
	auth        *authenticator
	log         *slog.Logger
	ready       func(ctx context.Context) Readiness
	metrics     *httpMetrics
	routes      []route
	events      events
	keysChanged func(ctx context.Context)
	opsScope    string
	limits      Limits
	conns       *connGuard // nil: no cap
	admission   *admission // nil: no bound
}

// Scopes of API keys. An admin key may do everything a service key may.
const (
	ScopeService = "service"
	ScopeAdmin   = "admin"
)

// New builds a Server with every route of the contract.
func New(cfg Config) *Server {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	s := &Server{
		echo:        e,
		svc:         cfg.Service,
		auth:        newAuthenticator(cfg.Keys, cfg.AdminKey, cfg.Limits, cfg.Registry),
		log:         cfg.Logger,
		ready:       cfg.Ready,
		metrics:     newHTTPMetrics(cfg.Registry),
		events:      newEvents(cfg),
		limits:      cfg.Limits,
		keysChanged: cfg.KeysChanged,
		opsScope:    cfg.OpsScope,
	}
	if cfg.Limits.MaxConns > 0 {
		s.conns = newConnGuard(cfg.Limits.MaxConns, cfg.Registry)
	}
	if cfg.Limits.MaxInFlight > 0 {
		s.admission = newAdmission(cfg.Limits.MaxInFlight, cfg.Registry)
	}
	e.HTTPErrorHandler = s.handleError
	e.Pre(s.guard)
	e.Use(s.metrics.middleware)
	s.routes = s.table()
	for _, r := range s.routes {
		h := r.handler
		if usageRoutes[r.method+" "+r.path] {
			h = s.admission.wrap(h)
		}
		if r.scope != "" {
			h = s.auth.require(r.scope, h)
		}
		e.Add(r.method, r.path, h)
		if _, stream := r.answer.(eventStream); r.method == http.MethodGet && !stream {
			e.Add(http.MethodHead, r.path, h) // net/http writes no body for a HEAD
		}
	}
	ops := func(h echo.HandlerFunc) echo.HandlerFunc {
		if cfg.OpsScope == "" {
			return h
		}
		return s.auth.require(cfg.OpsScope, h)
	}
	get := func(path string, h echo.HandlerFunc) {
		e.GET(path, h)
		e.HEAD(path, h)
	}
	get("/healthz", func(c echo.Context) error { return c.JSON(http.StatusOK, map[string]string{"status": "ok"}) })
	get("/readyz", ops(s.readyz))
	get("/metrics", ops(echo.WrapHandler(promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{Registry: cfg.Registry}))))
	get("/openapi.json", s.openapi)
	if cfg.Floor {
		e.POST("/v1/floor", s.floor)
	}
	return s
}

type floorBody struct {
	Subject string `json:"subject"`
	Amount  int64  `json:"amount,omitempty"`
}

type floorAnswer struct {
	Subject string `json:"subject"`
	Amount  int64  `json:"amount"`
	OK      bool   `json:"ok"`
}

// floor is the HTTP and JSON cost with nothing else: the bench's baseline.
func (s *Server) floor(c echo.Context) error {
	var b floorBody
	if err := decode(c, &b); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, floorAnswer{Subject: b.Subject, Amount: b.Amount, OK: true})
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.echo.ServeHTTP(w, r) }

// Echo returns the echo instance, for tests that list its routes.
func (s *Server) Echo() *echo.Echo { return s.echo }

// Mount serves h at prefix and below (the admin console), behind the same
// connection guard, time limits and metrics as the API; a path of h
// ending in /events is a stream, as the API's are. h sees the whole path.
func (s *Server) Mount(prefix string, h http.Handler) {
	wrapped := echo.WrapHandler(h)
	s.echo.Any(prefix, wrapped)
	s.echo.Any(prefix+"/*", wrapped)
	s.echo.GET(prefix+"/events", wrapped)
}

// route is one row of the contract: it registers the handler and describes
// the operation in the OpenAPI document, so the two cannot drift apart.
type route struct {
	method, path string
	scope        string // "" for no auth
	summary      string
	body         any // request body type for the OpenAPI document, nil for none
	answer       any // 2xx answer type
	status       int // 2xx status
	handler      echo.HandlerFunc
}

func (s *Server) table() []route {
	rows := []route{
		{"POST", "/v1/check", ScopeService, "Ask whether an amount may be spent now", quota.CheckRequest{}, quota.CheckResult{}, 200, s.check},
		{"POST", "/v1/consume", ScopeService, "Record or enforce usage", quota.ConsumeRequest{}, quota.ConsumeResponse{}, 200, s.consume},
		{"GET", "/v1/subjects/:subject", ScopeService, "A subject's plan and usage per meter", nil, quota.SubjectView{}, 200, s.getSubject},
		{"PUT", "/v1/subjects/:subject", ScopeAdmin, "Change a subject's plan, limits or cycle anchor", quota.SubjectUpdate{}, quota.SubjectView{}, 200, s.putSubject},
		{"POST", "/v1/subjects/:subject/reset", ScopeAdmin, "Set a subject's current-period usage to 0", resetRequest{}, quota.SubjectView{}, 200, s.reset},
		{"GET", "/v1/plans", ScopeService, "Every plan", nil, []quota.Plan{}, 200, s.plans},
		{"GET", "/v1/plans/:name", ScopeService, "One plan", nil, quota.Plan{}, 200, s.plan},
		{"PUT", "/v1/plans/:name", ScopeAdmin, "Create or replace a plan", quota.Plan{}, quota.Plan{}, 200, s.putPlan},
		{"DELETE", "/v1/plans/:name", ScopeAdmin, "Delete a plan no subject has (409 otherwise, and for the default plans)", nil, quota.Plan{}, 200, s.deletePlan},
		{"POST", "/v1/cost", ScopeService, "Price token usage in credits", quota.Usage{}, quota.CostResult{}, 200, s.cost},
		{"GET", "/v1/pricing", ScopeService, "The cost book", nil, pricing{}, 200, s.pricing},
		{"PUT", "/v1/pricing/:model", ScopeAdmin, "Create or replace a model's price", quota.Price{}, quota.Price{}, 200, s.putPrice},
		{"DELETE", "/v1/pricing/:model", ScopeAdmin, "Delete a model's price: its usage is refused like an unknown model's", nil, quota.Price{}, 200, s.deletePrice},
	}
	rows = append(rows, s.keyRoutes()...)
	rows = append(rows, s.flowRoutes()...)
	rows = append(rows, s.subjectRoutes()...)
	return append(rows, s.eventRoutes()...)
}

type resetRequest struct {
	Meter string `json:"meter,omitempty"`
}

type pricing struct {
	Margin quota.Decimal `json:"margin"`
	Prices []quota.Price `json:"prices"`
}

func (s *Server) check(c echo.Context) error {
	return hot(c, fastCheck, explicitAmount, s.svc.Check, appendCheck)
}

func (s *Server) consume(c echo.Context) error {
	return hot(c, fastConsume, nil, s.svc.Consume, appendConsume)
}

// explicitAmount refuses a check's amount given as 0 (or -0), which
// decodes like none (1): the amount is 1 to 10^12 when given.
func explicitAmount(body []byte, req *quota.CheckRequest) error {
	if req.Amount == 0 && bytes.Contains(body, []byte(`"amount"`)) {
		if keys, _, ok := members(body); ok && slices.ContainsFunc(keys, func(k string) bool { return strings.EqualFold(k, "amount") }) {
			return quota.Invalid("amount", "must be between 1 and %d (1 when left out)", quota.MaxAmount)
		}
	}
	return nil
}

// hot serves a hot-path operation: the body is read by readHot, run
// answers, and writeHot writes the answer with status 200.
func hot[Req, Res any](c echo.Context, fast func([]byte, *Req) bool, slow func([]byte, *Req) error,
	run func(context.Context, Req) (Res, error), appendRes func([]byte, *Res) []byte) error {
	var req Req
	if err := readHot(c, fast, slow, &req); err != nil {
		return err
	}
	res, err := run(c.Request().Context(), req)
	if err != nil {
		return err
	}
	return writeHot(c, http.StatusOK, appendRes, &res)
}

// readHot reads a hot-path request's body into req: scanned by fast,
// falling back to strict decoding (then slow's checks when not nil) when
// fast gives up, so that errors and edge cases answer as on the slow
// path.
func readHot[Req any](c echo.Context, fast func([]byte, *Req) bool, slow func([]byte, *Req) error, req *Req) error {
	body, put, err := readBody(c)
	if err != nil {
		return err
	}
	if body == nil || !fast(body, req) {
		var zero Req
		*req = zero
		if body == nil {
			body, err = readJSON(c)
		}
		if err == nil {
			err = decodeBytes(body, req)
		}
		if err == nil && slow != nil {
			err = slow(body, req)
		}
	}
	if put != nil {
		put()
	}
	return err
}

// writeHot writes res, appended by hand into a pooled buffer.
func writeHot[Res any](c echo.Context, status int, appendRes func([]byte, *Res) []byte, res *Res) error {
	bp := bodyPool.Get().(*[]byte)
	*bp = appendRes((*bp)[:0], res)
	err := writeJSON(c, status, *bp)
	bodyPool.Put(bp)
	return err
}

func (s *Server) getSubject(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	v, err := s.svc.Subject(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) putSubject(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	var u quota.SubjectUpdate
	if err := decode(c, &u); err != nil {
		return err
	}
	v, err := s.svc.PutSubject(c.Request().Context(), id, u)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) reset(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	var req resetRequest
	if c.Request().ContentLength != 0 { // the body is optional
		if err := decode(c, &req); err != nil {
			return err
		}
	}
	if req.Meter != "" {
		if err := quota.ValidMeter(req.Meter); err != nil {
			return err
		}
	}
	v, err := s.svc.Reset(c.Request().Context(), id, req.Meter)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) plans(c echo.Context) error {
	ps, err := s.svc.Plans(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, ps)
}

func (s *Server) plan(c echo.Context) error {
	name, err := pathParam(c, "name")
	if err != nil {
		return err
	}
	p, err := s.svc.Plan(c.Request().Context(), name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) putPlan(c echo.Context) error {
	name, err := pathParam(c, "name")
	if err != nil {
		return err
	}
	var p quota.Plan
	if err := decode(c, &p); err != nil {
		return err
	}
	if p.Name != "" && p.Name != name {
		return fieldProblem("name", "must match the plan name in the path")
	}
	p.Name = name
	p, err = s.svc.PutPlan(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) cost(c echo.Context) error {
	var u quota.Usage
	if err := decode(c, &u); err != nil {
		return err
	}
	res, err := s.svc.Cost(u)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func (s *Server) pricing(c echo.Context) error {
	prices, margin := s.svc.Pricing()
	return c.JSON(http.StatusOK, pricing{Margin: margin, Prices: prices})
}

func (s *Server) deletePlan(c echo.Context) error {
	name, err := pathParam(c, "name")
	if err != nil {
		return err
	}
	p, err := s.svc.DeletePlan(c.Request().Context(), name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) deletePrice(c echo.Context) error {
	model, err := pathParam(c, "model")
	if err != nil {
		return err
	}
	p, err := s.svc.DeletePrice(c.Request().Context(), model)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) putPrice(c echo.Context) error {
	model, err := pathParam(c, "model")
	if err != nil {
		return err
	}
	var p quota.Price
	if err := decode(c, &p); err != nil {
		return err
	}
	if p.Model != "" && p.Model != model {
		return fieldProblem("model", "must match the model in the path")
	}
	p.Model = model
	p, err = s.svc.PutPrice(c.Request().Context(), p)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	r := s.ready(ctx)
	status := http.StatusOK
	if r.Status == "unavailable" {
		status = http.StatusServiceUnavailable
	}
	return c.JSON(status, r)
}

// pathParam returns the unescaped path parameter name.
func pathParam(c echo.Context, name string) (string, error) {
	v, err := url.PathUnescape(c.Param(name))
	if err != nil {
		return "", fieldProblem(name, "bad escaping in the path")
	}
	return v, nil
}
