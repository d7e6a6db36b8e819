package api

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// API keys: mint (the secret shown once), list (never the secrets) and
// revoke. A revoked key stops working on every instance when the revoke
// answers: each one drops its cached keys (Config.KeysChanged).

func (s *Server) keyRoutes() []route {
	return []route{
		{"POST", "/v1/keys", ScopeAdmin, "Mint an API key (the key is in this answer only)", keyRequest{}, keyAnswer{}, 201, s.createKey},
		{"GET", "/v1/keys", ScopeAdmin, "Every API key, without the keys themselves", nil, keyList{}, 200, s.listKeys},
		{"DELETE", "/v1/keys/:id", ScopeAdmin, "Revoke an API key, on every instance before answering", nil, quota.APIKey{}, 200, s.revokeKey},
	}
}

type keyRequest struct {
	Scope     string     `json:"scope"`
	Name      string     `json:"name,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // none: never
}

type keyAnswer struct {
	Key string `json:"key"`
	quota.APIKey
}

type keyList struct {
	Keys []quota.APIKey `json:"keys"`
}

func (s *Server) createKey(c echo.Context) error {
	var req keyRequest
	if err := decode(c, &req); err != nil {
		return err
	}
	if req.Scope != ScopeService && req.Scope != ScopeAdmin {
		return fieldProblem("scope", `must be "service" or "admin"`)
	}
	if err := validKeyName(req.Name); err != nil {
		return err
	}
	if err := validKeyExpiry(req.ExpiresAt, time.Now()); err != nil {
		return err
	}
	k, key, err := s.auth.keys.CreateKey(c.Request().Context(), req.Scope, req.Name, req.ExpiresAt)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, keyAnswer{Key: key, APIKey: k})
}

// ValidKeyName allows a key's label up to 128 characters of UTF-8 text
// without control characters: Postgres text cannot hold a NUL, and a
// label is shown in listings and logs.
func ValidKeyName(name string) bool {
	return utf8.ValidString(name) && utf8.RuneCountInString(name) <= 128 && !strings.ContainsFunc(name, unicode.IsControl)
}

func validKeyName(name string) error {
	if !ValidKeyName(name) {
		return fieldProblem("name", "must be at most 128 characters of text without control characters")
	}
	return nil
}

// validKeyExpiry allows an expiry in the future, before the year 10000.
func validKeyExpiry(t *time.Time, now time.Time) error {
	if t != nil && (!t.After(now) || t.Year() > 9999) {
		return fieldProblem("expires_at", "must be a time in the future (RFC 3339), before the year 10000")
	}
	return nil
}

func (s *Server) listKeys(c echo.Context) error {
	keys, err := s.auth.keys.Keys(c.Request().Context())
	if err != nil {
		return err
	}
	if keys == nil {
		keys = []quota.APIKey{}
	}
	return c.JSON(http.StatusOK, keyList{Keys: keys})
}

func (s *Server) revokeKey(c echo.Context) error {
	raw, err := pathParam(c, "id")
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id < 1 {
		return fieldProblem("id", "must be a key's id, a positive integer")
	}
	k, err := s.auth.keys.RevokeKey(c.Request().Context(), id)
	if err != nil {
		return err
	}
	s.auth.forget()
	if s.keysChanged != nil {
		s.keysChanged(context.WithoutCancel(c.Request().Context()))
	}
	return c.JSON(http.StatusOK, k)
}

// ForgetKeys drops every key this instance has cached, so that each is
// looked up again: a key was revoked (on any instance), or the messages
// saying so may have been missed.
func (s *Server) ForgetKeys() { s.auth.forget() }
