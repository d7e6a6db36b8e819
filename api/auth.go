package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// authenticator checks bearer keys. Known keys are cached in memory for
// keyTTL so the hot path neither hashes the key nor asks Postgres on every
// request; a revoked key therefore works for at most keyTTL more. Only
// keys that were valid are cached, so a flood of bad keys cannot fill it
// with garbage (it does cost a Postgres lookup each).
type authenticator struct {
	keys  Keys
	admin [32]byte // SHA-256 of QUOTAD_ADMIN_KEY
	hasAd bool

	mu    sync.RWMutex
	cache map[string]cachedKey // by the key itself: no hashing on a hit
}

type cachedKey struct {
	scope   string
	expires time.Time
}

const (
	keyTTL       = time.Minute
	maxKeyCached = 10_000
)

func newAuthenticator(keys Keys, adminKey string) *authenticator {
	a := &authenticator{keys: keys, cache: make(map[string]cachedKey)}
	if adminKey != "" {
		a.admin, a.hasAd = sha256.Sum256([]byte(adminKey)), true
	}
	return a
}

// require wraps h so that it runs only for a key with scope (or admin).
func (a *authenticator) require(scope string, h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		got, err := a.scope(c)
		if err != nil {
			return err
		}
		if scope == ScopeAdmin && got != ScopeAdmin {
			return problem(http.StatusForbidden, "this operation needs a key with the admin scope")
		}
		return h(c)
	}
}

func (a *authenticator) scope(c echo.Context) (string, error) {
	h := c.Request().Header.Get(echo.HeaderAuthorization)
	key, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || key == "" {
		return "", problem(http.StatusUnauthorized, "an Authorization: Bearer <key> header is required")
	}
	now := time.Now()
	a.mu.RLock()
	ck, hit := a.cache[key]
	a.mu.RUnlock()
	if hit && now.Before(ck.expires) {
		return ck.scope, nil
	}
	sum := sha256.Sum256([]byte(key))
	if a.hasAd && subtle.ConstantTimeCompare(sum[:], a.admin[:]) == 1 {
		a.remember(key, ScopeAdmin, now)
		return ScopeAdmin, nil
	}
	scope, err := a.keys.KeyScope(c.Request().Context(), sum)
	if errors.Is(err, quota.ErrNotFound) {
		return "", problem(http.StatusUnauthorized, "unknown API key")
	}
	if hit && errors.Is(err, quota.ErrUnavailable) {
		return ck.scope, nil // Postgres is down: a key known a while ago still works
	}
	if err != nil {
		return "", err
	}
	a.remember(key, scope, now)
	return scope, nil
}

func (a *authenticator) remember(key, scope string, now time.Time) {
	a.mu.Lock()
	if len(a.cache) >= maxKeyCached {
		clear(a.cache) // crude but bounded; real deployments have few keys
	}
	a.cache[key] = cachedKey{scope: scope, expires: now.Add(keyTTL)}
	a.mu.Unlock()
}
