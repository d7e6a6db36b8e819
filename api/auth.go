package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/quota"
)

// authenticator checks bearer keys, from the request's headers alone.
//
// Known keys are cached in memory for keyTTL (or until they expire, if
// sooner) so the hot path neither hashes the key nor asks Postgres on
// every request. A revoke empties the cache of every instance (ForgetKeys);
// the TTL bounds how long an instance that missed the message keeps a
// revoked key. Keys Postgres does not know are
// cached as well, for unknownTTL, so a client repeating a bad key costs no
// lookup. A client trying many keys is stopped by the failure limiter:
// each client address may fail failBurst times at once and regains
// failRate failures a second; past that, its requests with a key that is
// not cached are answered 429, without a lookup. Keys cached as valid
// still work from that address.
type authenticator struct {
	keys  Keys
	admin [32]byte // SHA-256 of QUOTAD_ADMIN_KEY
	hasAd bool

	mu      sync.RWMutex
	cache   map[string]cachedKey // by the key itself: no hashing on a hit
	unknown map[string]time.Time // keys Postgres did not know, until when
	gen     uint64               // forgets so far: a lookup older than the last forget is not cached

	fails    *failLimiter
	lookups  prometheus.Counter
	failures *prometheus.CounterVec
}

type cachedKey struct {
	scope   string
	expires time.Time
}

const (
	keyTTL       = time.Minute
	unknownTTL   = 10 * time.Second
	maxKeyCached = 10_000
)

func newAuthenticator(keys Keys, adminKey string, lim Limits, reg *prometheus.Registry) *authenticator {
	a := &authenticator{
		keys:    keys,
		cache:   make(map[string]cachedKey),
		unknown: make(map[string]time.Time),
		fails:   newFailLimiter(lim.AuthFailRate, lim.AuthFailBurst),
		lookups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quotad_auth_key_lookups_total", Help: "API keys looked up in Postgres (not found in the in-memory cache).",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quotad_auth_failures_total", Help: "Requests refused by authentication: no key (missing), a key no store knows (unknown), too many failures from the address (limited).",
		}, []string{"reason"}),
	}
	reg.MustRegister(a.lookups, a.failures)
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
	r := c.Request()
	key, ok := bearer(r.Header.Get(echo.HeaderAuthorization))
	if !ok {
		a.failures.WithLabelValues("missing").Inc()
		return "", problem(http.StatusUnauthorized, "an Authorization: Bearer <key> header is required")
	}
	now := time.Now()
	a.mu.RLock()
	ck, hit := a.cache[key]
	bad, known := a.unknown[key]
	gen := a.gen
	a.mu.RUnlock()
	if hit && now.Before(ck.expires) {
		return ck.scope, nil
	}
	sum := sha256.Sum256([]byte(key))
	if a.hasAd && subtle.ConstantTimeCompare(sum[:], a.admin[:]) == 1 {
		a.remember(key, ScopeAdmin, now)
		return ScopeAdmin, nil
	}
	client := clientAddr(r)
	if wait := a.fails.wait(client, now); wait > 0 {
		a.failures.WithLabelValues("limited").Inc()
		return "", tooManyFailures(wait)
	}
	if known && now.Before(bad) {
		return "", a.failed(client, now)
	}
	a.lookups.Inc()
	k, err := a.keys.LookupKey(r.Context(), sum)
	if errors.Is(err, quota.ErrNotFound) {
		a.mu.Lock()
		if len(a.unknown) >= maxKeyCached {
			clear(a.unknown)
		}
		a.unknown[key] = now.Add(unknownTTL)
		a.mu.Unlock()
		return "", a.failed(client, now)
	}
	if hit && errors.Is(err, quota.ErrUnavailable) {
		return ck.scope, nil // Postgres is down: a key known a while ago still works
	}
	if err != nil {
		return "", err
	}
	expires := now.Add(keyTTL)
	if k.ExpiresAt != nil && k.ExpiresAt.Before(expires) {
		expires = *k.ExpiresAt
	}
	a.mu.Lock()
	if a.gen == gen { // else the key may have been revoked since it was read
		a.store(key, cachedKey{scope: k.Scope, expires: expires})
	}
	a.mu.Unlock()
	return k.Scope, nil
}

// bearer reads the key of an Authorization header, whose scheme names
// are case-insensitive (RFC 9110, 11.1): "Bearer", "bearer", "BEARER".
func bearer(h string) (string, bool) {
	scheme, key, ok := strings.Cut(h, " ")
	key = strings.TrimLeft(key, " ")
	return key, ok && strings.EqualFold(scheme, "Bearer") && key != ""
}

// failed counts a failed authentication from client and answers it.
func (a *authenticator) failed(client netip.Prefix, now time.Time) error {
	a.fails.fail(client, now)
	a.failures.WithLabelValues("unknown").Inc()
	return problem(http.StatusUnauthorized, "unknown API key")
}

func tooManyFailures(wait time.Duration) error {
	secs := int(math.Ceil(wait.Seconds()))
	err := problem(http.StatusTooManyRequests, "too many failed authentications from this address; retry after "+strconv.Itoa(secs)+" s").(*problemError)
	err.retryAfter = strconv.Itoa(secs)
	return err
}

func (a *authenticator) remember(key, scope string, now time.Time) {
	a.mu.Lock()
	a.store(key, cachedKey{scope: scope, expires: now.Add(keyTTL)})
	a.mu.Unlock()
}

// store caches a valid key; the caller holds the lock.
func (a *authenticator) store(key string, ck cachedKey) {
	if len(a.cache) >= maxKeyCached {
		clear(a.cache) // crude but bounded; real deployments have few keys
	}
	a.cache[key] = ck
}

// forget drops every cached key, valid or unknown.
func (a *authenticator) forget() {
	a.mu.Lock()
	clear(a.cache)
	clear(a.unknown)
	a.gen++
	a.mu.Unlock()
}

// clientAddr is who a failure is counted against: the peer's address (an
// IPv6 client by its /64, which one host usually has whole). quotad does
// not read X-Forwarded-For: behind a proxy every client is the proxy.
func clientAddr(r *http.Request) netip.Prefix {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	addr := ap.Addr().Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p
	}
	return netip.PrefixFrom(addr, 32)
}

// failLimiter is a token bucket of failures per client address.
type failLimiter struct {
	rate, burst float64 // tokens a second, and at most; rate 0: no limit

	mu    sync.Mutex
	addrs map[netip.Prefix]bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

// maxLimited bounds the addresses the limiter remembers.
const maxLimited = 100_000

func newFailLimiter(rate float64, burst int) *failLimiter {
	return &failLimiter{rate: rate, burst: float64(max(burst, 1)), addrs: make(map[netip.Prefix]bucket)}
}

// level is b's tokens at now.
func (l *failLimiter) level(b bucket, now time.Time) float64 {
	return min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
}

// wait answers how long client must wait before a failure is allowed
// again: 0 when it may fail now.
func (l *failLimiter) wait(client netip.Prefix, now time.Time) time.Duration {
	if l.rate <= 0 {
		return 0
	}
	l.mu.Lock()
	b, ok := l.addrs[client]
	l.mu.Unlock()
	if !ok {
		return 0
	}
	if t := l.level(b, now); t < 1 {
		return time.Duration((1 - t) / l.rate * float64(time.Second))
	}
	return 0
}

// fail takes a token from client's bucket.
func (l *failLimiter) fail(client netip.Prefix, now time.Time) {
	if l.rate <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.addrs[client]
	if !ok {
		b = bucket{tokens: l.burst, at: now}
		if len(l.addrs) >= maxLimited {
			for p, old := range l.addrs { // forget the addresses whose bucket is full again
				if l.level(old, now) >= l.burst {
					delete(l.addrs, p)
				}
			}
			if len(l.addrs) >= maxLimited {
				clear(l.addrs)
			}
		}
	}
	l.addrs[client] = bucket{tokens: l.level(b, now) - 1, at: now}
}
