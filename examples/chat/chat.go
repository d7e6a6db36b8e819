// Package chat is an example product metered by quotad: a chat service
// whose (fake) model answers each message and reports the tokens it used,
// billed in credits to whoever sent it.
//
// The quota flow is the client package's three lines: the middleware in
// front of POST /chat holds the message's worst-case cost (its prompt and
// the most the model may write) before the model runs, and refuses with
// 429 a caller who is out of credits; the handler commits the usage the
// model reported, priced by quotad; a model that fails releases the hold.
//
// Callers are signed-in users (a bearer token, or an X-User header set by
// an authenticating proxy in front) or anonymous visitors, known by an
// X-Fingerprint header or, for browsers, an "fp" cookie this service
// sets. GET / is a page to chat from that shows the caller's credits
// falling live, from quotad's events stream relayed by GET /me/events.
package chat

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/quota"
)

// Config is what a Server is built from.
type Config struct {
	// Quota is the quotad client (a service key is enough). Required.
	Quota *client.Client
	// Model answers messages; a FakeModel when nil.
	Model Model
	// ModelName is the model quotad prices the usage of:
	// "claude-3-5-sonnet" when empty.
	ModelName string
	// MaxOutputTokens is the most the model may write for one message,
	// and so what a message holds for its answer: 1024 when 0.
	MaxOutputTokens int64
	// Tokens maps bearer tokens to user ids. A real product verifies a
	// session instead; the example keeps a table.
	Tokens map[string]string
	// Logger receives what cannot be answered to a caller; slog.Default()
	// when nil.
	Logger *slog.Logger
}

// Server is the chat service.
type Server struct {
	cfg Config
	log *slog.Logger
	mux *http.ServeMux
	// streams ends the events streams, which never finish on their own,
	// when the server shuts down.
	streams      context.Context
	closeStreams context.CancelFunc
}

// New returns the chat service for cfg.
func New(cfg Config) *Server {
	if cfg.Quota == nil {
		panic("chat: Config.Quota is required")
	}
	if cfg.Model == nil {
		cfg.Model = FakeModel{}
	}
	if cfg.ModelName == "" {
		cfg.ModelName = "claude-3-5-sonnet"
	}
	if cfg.MaxOutputTokens <= 0 {
		cfg.MaxOutputTokens = 1024
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	s.streams, s.closeStreams = context.WithCancel(context.Background())
	if s.log == nil {
		s.log = slog.Default()
	}
	metered := cfg.Quota.Middleware(client.MiddlewareConfig{
		Subject:  s.subject,
		Estimate: s.estimate,
		TTL:      2 * time.Minute, // longer than the slowest model answer
		Logger:   s.log,
	})
	s.mux.Handle("POST /chat", metered(http.HandlerFunc(s.chat)))
	s.mux.HandleFunc("GET /me", s.me)
	s.mux.HandleFunc("GET /me/events", s.events)
	s.mux.HandleFunc("GET /{$}", s.page)
	return s
}

// CloseStreams ends every events stream, so that http.Server.Shutdown
// (which waits for requests to finish) can: register it with
// RegisterOnShutdown.
func (s *Server) CloseStreams() { s.closeStreams() }

// ServeHTTP gives a browser without a fingerprint one (the "fp" cookie)
// before anything else, so that its anonymous allowance follows it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" && r.Header.Get("X-User") == "" && r.Header.Get("X-Fingerprint") == "" {
		if _, err := r.Cookie("fp"); err != nil {
			var b [16]byte
			_, _ = rand.Read(b[:])
			c := &http.Cookie{Name: "fp", Value: hex.EncodeToString(b[:]), Path: "/", HttpOnly: true,
				SameSite: http.SameSiteLaxMode, MaxAge: 365 * 24 * 3600}
			http.SetCookie(w, c)
			r.AddCookie(c)
		}
	}
	s.mux.ServeHTTP(w, r)
}

// subject finds who pays for r: "user:<id>" for a signed-in caller,
// "anon:<hash of the fingerprint>" for a visitor. Hashing keeps any
// fingerprint within quotad's subject alphabet and out of its logs.
func (s *Server) subject(r *http.Request) (string, error) {
	if auth := r.Header.Get("Authorization"); auth != "" {
		token, ok := strings.CutPrefix(auth, "Bearer ")
		user, known := s.cfg.Tokens[token]
		if !ok || !known {
			return "", errors.New("unknown bearer token")
		}
		return "user:" + user, nil
	}
	if user := r.Header.Get("X-User"); user != "" {
		return "user:" + user, nil // quotad refuses a malformed id with a 400 naming the subject
	}
	fp := r.Header.Get("X-Fingerprint")
	if fp == "" {
		if c, err := r.Cookie("fp"); err == nil {
			fp = c.Value
		}
	}
	if fp == "" {
		return "", errors.New("sign in, or send an X-Fingerprint header or the fp cookie")
	}
	sum := sha256.Sum256([]byte(fp))
	return "anon:" + hex.EncodeToString(sum[:12]), nil
}

type chatRequest struct {
	Message string `json:"message"`
}

// chatAnswer is what POST /chat answers.
type chatAnswer struct {
	Subject   string      `json:"subject"`
	Reply     string      `json:"reply"`
	Usage     quota.Usage `json:"usage"`
	Credits   int64       `json:"credits"`   // what the message cost
	Remaining int64       `json:"remaining"` // what the caller has left
}

const maxMessage = 16 << 10

// readMessage reads r's message, leaving the body readable again for the
// next reader (the estimate reads it before the handler does).
func readMessage(r *http.Request) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxMessage+1))
	if err != nil {
		return "", fmt.Errorf("read body: %w", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	if len(b) > maxMessage {
		return "", fmt.Errorf("the body must be at most %d bytes", maxMessage)
	}
	var req chatRequest
	if err := json.Unmarshal(b, &req); err != nil || strings.TrimSpace(req.Message) == "" {
		return "", errors.New(`send {"message": "..."}`)
	}
	return req.Message, nil
}

// estimate is a message's worst case: the whole prompt in, the most the
// model may write out. Holding the worst case is what keeps a burst of
// messages from spending past the caller's limit.
func (s *Server) estimate(r *http.Request) (client.Cost, error) {
	msg, err := readMessage(r)
	if err != nil {
		return client.Cost{}, err
	}
	return client.Cost{Usage: &quota.Usage{
		Model:        s.cfg.ModelName,
		InputTokens:  s.cfg.Model.PromptTokens(msg),
		OutputTokens: s.cfg.MaxOutputTokens,
	}}, nil
}

func (s *Server) chat(w http.ResponseWriter, r *http.Request) {
	res := client.ReservationFrom(r.Context())
	msg, err := readMessage(r)
	if err != nil {
		problem(w, http.StatusBadRequest, err.Error())
		return
	}
	out, err := s.cfg.Model.Complete(r.Context(), msg, s.cfg.MaxOutputTokens)
	if err != nil {
		// The middleware releases the hold: nothing to bill.
		s.log.Error("model failed", "err", err)
		problem(w, http.StatusBadGateway, "the model is unavailable; nothing was charged")
		return
	}
	usage := quota.Usage{Model: s.cfg.ModelName, InputTokens: out.InputTokens, OutputTokens: out.OutputTokens}
	cm, err := res.Commit(r.Context(), quota.CommitRequest{Usage: &usage})
	if err != nil {
		// The answer exists and is the caller's; the middleware tries a
		// commit that got no answer once more after this handler.
		s.log.Error("commit usage", "subject", res.Subject(), "err", err)
	}
	writeJSON(w, http.StatusOK, chatAnswer{Subject: res.Subject(), Reply: out.Text, Usage: usage, Credits: cm.Amount, Remaining: cm.Remaining})
}

// meAnswer is the caller's credits.
type meAnswer struct {
	Subject   string     `json:"subject"`
	Plan      string     `json:"plan"`
	Used      int64      `json:"used"`
	Reserved  int64      `json:"reserved"`
	Limit     int64      `json:"limit"`
	Remaining int64      `json:"remaining"`
	ResetsAt  quota.Time `json:"resets_at"`
}

func (s *Server) credits(ctx context.Context, subject string) (meAnswer, error) {
	v, err := s.cfg.Quota.Subject(ctx, subject)
	if err != nil {
		return meAnswer{}, err
	}
	a := meAnswer{Subject: subject, Plan: v.Plan}
	for _, m := range v.Meters {
		if m.Meter == quota.DefaultMeter {
			a.Used, a.Reserved, a.Limit, a.Remaining, a.ResetsAt = m.Used, m.Reserved, m.Limit, m.Remaining, m.ResetsAt
		}
	}
	return a, nil
}

func (s *Server) me(w http.ResponseWriter, r *http.Request) {
	subject, err := s.subject(r)
	if err != nil {
		problem(w, http.StatusUnauthorized, err.Error())
		return
	}
	a, err := s.credits(r.Context(), subject)
	if err != nil {
		s.quotaError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

// events relays quotad's change stream of the caller's subject to the
// caller, as Server-Sent Events: first a "credits" event with the current
// figures (quotad's snapshot, sent once the subscription is live, so no
// change can fall between), then one event per change of the credits
// meter, named for its type. Browsers cannot hold the quotad key, so the
// service subscribes on their behalf.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	subject, err := s.subject(r)
	if err != nil {
		problem(w, http.StatusUnauthorized, err.Error())
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(s.streams, cancel)()
	ev := s.cfg.Quota.Events(ctx, subject)
	defer ev.Close()
	rc := http.NewResponseController(w)
	started := false
	for ev.Next() {
		ch := ev.Change()
		if ch.Meter != "" && ch.Meter != quota.DefaultMeter {
			continue
		}
		name := ch.Type
		if name == client.ChangeSnapshot {
			name = "credits" // also after a gap: the figures start over
		}
		if !started {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("Cache-Control", "no-cache")
			started = true
		}
		b, _ := json.Marshal(ch)
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
	if err := ev.Err(); err != nil && ctx.Err() == nil {
		if !started {
			s.quotaError(w, err)
			return
		}
		s.log.Warn("events stream ended", "subject", subject, "err", err)
	}
}

//go:embed page.html
var page []byte

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(page)
}

func (s *Server) quotaError(w http.ResponseWriter, err error) {
	if client.IsInvalid(err) {
		problem(w, http.StatusBadRequest, "the caller's id is not valid")
		return
	}
	s.log.Error("quotad", "err", err)
	problem(w, http.StatusBadGateway, "the quota service is unavailable")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail})
}
