package console_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotad/quotad/console"
)

// These tests cover the console's own rules (sessions, CSRF, cookies)
// with a stand-in for the API that knows one admin key; the browser test
// in cmd/quotad runs the console against a real quotad.

const key = "the-admin-key"

type fakeAPI struct{ calls atomic.Int64 }

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.calls.Add(1)
	if r.Header.Get("Authorization") != "Bearer "+key {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"type":"about:blank","title":"Unauthorized","status":401,"detail":"unknown API key"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/v1/keys":
		_, _ = w.Write([]byte(`{"keys":[]}`))
	case "/v1/plans":
		_, _ = w.Write([]byte(`[{"name":"free","limits":{"credits":{"limit":2500,"period":"month"}}}]`))
	default:
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"status":404,"title":"Not Found"}`))
	}
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(tb testing.TB, body string) string {
	tb.Helper()
	m := csrfRe.FindStringSubmatch(body)
	if m == nil {
		tb.Fatalf("no csrf field in %s", body)
	}
	return m[1]
}

type client struct {
	tb      testing.TB
	h       http.Handler
	cookies map[string]*http.Cookie
	tls     bool
}

func (c *client) do(method, path string, form url.Values) *httptest.ResponseRecorder {
	c.tb.Helper()
	target := path
	if c.tls {
		target = "https://quotad.example" + path // httptest sets req.TLS for https
	}
	var req *http.Request
	if form != nil {
		req = httptest.NewRequest(method, target, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	} else {
		req = httptest.NewRequest(method, target, nil)
	}
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	rec := httptest.NewRecorder()
	c.h.ServeHTTP(rec, req)
	for _, ck := range rec.Result().Cookies() {
		if ck.MaxAge < 0 {
			delete(c.cookies, ck.Name)
		} else {
			c.cookies[ck.Name] = ck
		}
	}
	return rec
}

func (c *client) signIn(k string) *httptest.ResponseRecorder {
	c.tb.Helper()
	page := c.do("GET", "/console/signin", nil)
	return c.do("POST", "/console/signin", url.Values{"csrf": {csrfOf(c.tb, page.Body.String())}, "key": {k}})
}

func newConsole(now func() time.Time) (*console.Console, *fakeAPI) {
	api := &fakeAPI{}
	return console.New(console.Config{API: api, Now: now}), api
}

func TestSignIn(t *testing.T) {
	for _, tc := range []struct {
		name     string
		key      string
		noCookie bool
		status   int
		says     string
	}{
		{name: "admin key", key: key, status: http.StatusSeeOther},
		{name: "unknown key", key: "nope", status: http.StatusUnauthorized, says: "does not know this key"},
		{name: "empty key", key: " ", status: http.StatusBadRequest, says: "Enter an admin API key"},
		{name: "no sign-in cookie", key: key, noCookie: true, status: http.StatusForbidden, says: "CSRF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			con, _ := newConsole(nil)
			c := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}}
			page := c.do("GET", "/console/signin", nil)
			if tc.noCookie {
				clear(c.cookies)
			}
			rec := c.do("POST", "/console/signin", url.Values{"csrf": {csrfOf(t, page.Body.String())}, "key": {tc.key}})
			if rec.Code != tc.status || !strings.Contains(rec.Body.String(), tc.says) {
				t.Fatalf("%d %s", rec.Code, rec.Body)
			}
			_, signedIn := c.cookies["quotad_console"]
			if signedIn != (tc.status == http.StatusSeeOther) {
				t.Errorf("session cookie: %v", signedIn)
			}
		})
	}
}

func TestSessionCookie(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		con, _ := newConsole(nil)
		c := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}, tls: tlsOn}
		c.signIn(key)
		ck := c.cookies["quotad_console"]
		if ck == nil {
			t.Fatal("no session cookie")
		}
		if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure != tlsOn || ck.MaxAge != 8*3600 || ck.Path != "/console" {
			t.Errorf("tls %v: cookie %+v", tlsOn, ck)
		}
	}
}

func TestSessionExpires(t *testing.T) {
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	con, _ := newConsole(func() time.Time { return now })
	c := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}}
	c.signIn(key)
	if rec := c.do("GET", "/console/plans", nil); rec.Code != http.StatusOK {
		t.Fatalf("signed in: %d", rec.Code)
	}
	now = now.Add(8*time.Hour + time.Second)
	if rec := c.do("GET", "/console/plans", nil); rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/console/signin" {
		t.Fatalf("after expiry: %d %s", rec.Code, rec.Header().Get("Location"))
	}
}

func TestFormsNeedTheSessionsToken(t *testing.T) {
	con, api := newConsole(nil)
	c := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}}
	c.signIn(key)
	page := c.do("GET", "/console/plans", nil)
	token := csrfOf(t, page.Body.String())
	other := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}}
	other.signIn(key)
	otherToken := csrfOf(t, other.do("GET", "/console/plans", nil).Body.String())
	for _, tc := range []struct {
		name, token string
	}{{"none", ""}, {"forged", "x"}, {"another session's", otherToken}} {
		t.Run(tc.name, func(t *testing.T) {
			before := api.calls.Load()
			rec := c.do("POST", "/console/plans/free/delete", url.Values{"csrf": {tc.token}})
			if rec.Code != http.StatusForbidden {
				t.Errorf("%d %s", rec.Code, rec.Body)
			}
			if api.calls.Load() != before {
				t.Error("the API was called")
			}
		})
	}
	// Signed out, the token is worth nothing either.
	c.do("POST", "/console/signout", url.Values{"csrf": {token}})
	if rec := c.do("POST", "/console/plans/free/delete", url.Values{"csrf": {token}}); rec.Code != http.StatusForbidden {
		t.Errorf("after sign-out: %d", rec.Code)
	}
}

func TestPagesSendNoInlineCode(t *testing.T) {
	con, _ := newConsole(nil)
	c := &client{tb: t, h: con, cookies: map[string]*http.Cookie{}}
	rec := c.do("GET", "/console/signin", nil)
	csp := rec.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q", csp)
	}
	if strings.Contains(rec.Body.String(), "<script>") || strings.Contains(rec.Body.String(), "style=") {
		t.Error("inline script or style, which the CSP blocks")
	}
	for _, asset := range []string{"console.js", "console.css", "favicon.svg"} {
		if rec := c.do("GET", "/console/assets/"+asset, nil); rec.Code != http.StatusOK {
			t.Errorf("%s: %d", asset, rec.Code)
		}
	}
}
