// Package console is quotad's admin console: HTML pages served under
// /console for the people who run a product on quotad, signed in with an
// admin key.
//
// The console holds no data of its own and reaches no store: every page
// is built from quotad's public REST API, called in-process through the
// API's own http.Handler with the signed-in key as the bearer and the
// browser's address as the client, so the API's authentication, scopes,
// validation, failed-auth limit and metrics apply to the console exactly
// as to any API user, and nothing it shows is unavailable to one. The
// live subject page relays the API's events stream the same way.
//
// Sessions live in the memory of the instance that signed the browser in:
// behind a balancer with several instances, route /console stickily (or
// sign in again when a request lands elsewhere).
package console

import (
	"embed"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Config is what a Console is built from.
type Config struct {
	// API is quotad's API handler, which the console calls in-process.
	API http.Handler
	// Prefix is where the console is mounted: "/console" when "".
	Prefix string
	// SessionTTL is how long a sign-in lasts: 8 h when 0.
	SessionTTL time.Duration
	// Now is the clock: time.Now when nil.
	Now    func() time.Time
	Logger *slog.Logger
}

// Console serves the admin console's pages.
type Console struct {
	api      http.Handler
	prefix   string
	now      func() time.Time
	log      *slog.Logger
	sessions *sessions
	pages    map[string]*template.Template
	mux      *http.ServeMux
	traffic  *traffic
}

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// New builds a Console.
func New(cfg Config) *Console {
	c := &Console{
		api:    cfg.API,
		prefix: strings.TrimSuffix(cfg.Prefix, "/"),
		now:    cfg.Now,
		log:    cfg.Logger,
	}
	if c.prefix == "" {
		c.prefix = "/console"
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	ttl := cfg.SessionTTL
	if ttl <= 0 {
		ttl = 8 * time.Hour
	}
	c.sessions = newSessions(ttl, c.now)
	c.traffic = newTraffic(c.now)
	c.pages = parsePages(c.prefix)
	c.routes()
	return c
}

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Nothing outside quotad: no CDN, no frames, no inline code but what
	// the page's own nonce-free files hold.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	c.mux.ServeHTTP(w, r)
}

func (c *Console) routes() {
	m := http.NewServeMux()
	p := c.prefix
	assets, _ := fs.Sub(assetFS, "assets")
	files := http.StripPrefix(p+"/assets/", http.FileServerFS(assets))
	m.Handle("GET "+p+"/assets/", cacheFor(time.Hour, files))
	m.HandleFunc("GET "+p+"/{$}", c.home)
	m.HandleFunc("GET "+p, c.home)
	m.HandleFunc("GET "+p+"/signin", c.signinPage)
	m.HandleFunc("POST "+p+"/signin", c.signin)
	m.HandleFunc("POST "+p+"/signout", c.signedIn(c.signout))
	m.HandleFunc("GET "+p+"/overview", c.signedIn(c.overview))
	m.HandleFunc("GET "+p+"/overview/traffic.svg", c.signedIn(c.trafficChart))
	m.HandleFunc("GET "+p+"/subjects", c.signedIn(c.subjects))
	m.HandleFunc("GET "+p+"/subjects/{subject}", c.signedIn(c.subject))
	m.HandleFunc("GET "+p+"/subjects/{subject}/view", c.signedIn(c.subjectView))
	m.HandleFunc("POST "+p+"/subjects/{subject}/settings", c.signedIn(c.subjectSettings))
	m.HandleFunc("POST "+p+"/subjects/{subject}/reset", c.signedIn(c.subjectReset))
	// The route ends in /events: quotad's request time limits treat it as
	// a stream, as they do the API's events routes.
	m.HandleFunc("GET "+p+"/events", c.signedIn(c.events))
	m.HandleFunc("GET "+p+"/plans", c.signedIn(c.plans))
	m.HandleFunc("POST "+p+"/plans", c.signedIn(c.putPlan))
	m.HandleFunc("POST "+p+"/plans/{name}/delete", c.signedIn(c.deletePlan))
	m.HandleFunc("GET "+p+"/pricing", c.signedIn(c.pricing))
	m.HandleFunc("POST "+p+"/pricing", c.signedIn(c.putPrice))
	m.HandleFunc("POST "+p+"/pricing/{model}/delete", c.signedIn(c.deletePrice))
	m.HandleFunc("GET "+p+"/keys", c.signedIn(c.keys))
	m.HandleFunc("POST "+p+"/keys", c.signedIn(c.createKey))
	m.HandleFunc("POST "+p+"/keys/{id}/revoke", c.signedIn(c.revokeKey))
	c.mux = m
}

func cacheFor(d time.Duration, h http.Handler) http.Handler {
	v := "private, max-age=" + itoa(int64(d/time.Second))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", v)
		h.ServeHTTP(w, r)
	})
}
