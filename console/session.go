package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// Sign-in: the browser posts an admin key once; the console checks it
// against the API (an admin-only read with that key, from the browser's
// address, so a wrong key counts in the API's failed-auth limit) and
// answers a session cookie, a random id the key is kept under in memory.
// Every form carries the session's CSRF token, compared in constant time
// with the one kept; the sign-in form, before any session, carries the
// token of a short-lived pre-session cookie (double submit). Cookies are
// HttpOnly, SameSite=Strict, Secure over TLS, and end with the session.

const (
	sessionCookie = "quotad_console"
	signinCookie  = "quotad_console_signin"
	csrfField     = "csrf"
	// maxSessions bounds the memory sign-ins take; the oldest go first.
	maxSessions = 10_000
)

type session struct {
	id      string
	key     string // the admin key, the bearer of the session's API calls
	csrf    string
	expires time.Time
}

type sessions struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*session
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, m: make(map[string]*session)}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *sessions) create(key string) *session {
	now := s.now()
	ss := &session{id: randomToken(), key: key, csrf: randomToken(), expires: now.Add(s.ttl)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		var oldest *session
		for id, o := range s.m {
			if now.After(o.expires) {
				delete(s.m, id)
			} else if oldest == nil || o.expires.Before(oldest.expires) {
				oldest = o
			}
		}
		if len(s.m) >= maxSessions && oldest != nil {
			delete(s.m, oldest.id)
		}
	}
	s.m[ss.id] = ss
	return ss
}

func (s *sessions) get(id string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.m[id]
	if ss != nil && s.now().After(ss.expires) {
		delete(s.m, id)
		return nil
	}
	return ss
}

func (s *sessions) drop(id string) {
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}

// any returns a live session's key, for background reads: "" when no one
// is signed in.
func (s *sessions) anyKey() string {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ss := range s.m {
		if now.After(ss.expires) {
			delete(s.m, id)
			continue
		}
		return ss.key
	}
	return ""
}

// dropKey ends every session signed in with key: the API no longer
// accepts it (revoked or expired).
func (s *sessions) dropKey(key string) {
	s.mu.Lock()
	for id, ss := range s.m {
		if ss.key == key {
			delete(s.m, id)
		}
	}
	s.mu.Unlock()
}

func sameToken(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (c *Console) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{
		Name: name, Value: value, Path: c.prefix, MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil,
	}
}

// session returns the request's session, or nil.
func (c *Console) session(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return nil
	}
	return c.sessions.get(ck.Value)
}

type sessionHandler func(w http.ResponseWriter, r *http.Request, s *session)

// signedIn runs h for a signed-in browser: a page without a session goes
// to the sign-in page, a form without its CSRF token is refused (403).
func (c *Console) signedIn(h sessionHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.session(r)
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, c.prefix+"/signin", http.StatusSeeOther)
				return
			}
			c.refuse(w, r, http.StatusForbidden, "Your session has ended: sign in again.")
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if !sameToken(r.PostFormValue(csrfField), s.csrf) {
				c.refuse(w, r, http.StatusForbidden, "This form was refused: its CSRF token is missing or wrong. Reload the page and try again.")
				return
			}
		}
		h(w, r, s)
	}
}
