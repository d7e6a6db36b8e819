package api

import (
	"net/http"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// admission bounds the usage requests (consumes, batches, reservations,
// commits, releases) handled at once. Past the bound a request is
// answered 503 with Retry-After at once, before any work: when requests
// arrive faster than the core can answer them, the ones in hand stay fast
// and the rest learn at once to come back, instead of every request
// waiting in a queue that only grows (the open loop past the closed
// loop's rate answered after seconds, or never). The flusher's own bound
// is separate (Counter.admit: usage refused while it is behind).
type admission struct {
	max      int64
	inFlight atomic.Int64
	shed     prometheus.Counter
}

func newAdmission(max int, reg *prometheus.Registry) *admission {
	a := &admission{max: int64(max), shed: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "quotad_http_shed_total", Help: "Usage requests answered 503 at once because QUOTAD_MAX_IN_FLIGHT were being handled."})}
	if reg != nil {
		reg.MustRegister(a.shed)
	}
	return a
}

// usageRoutes are the routes admission bounds.
var usageRoutes = map[string]bool{
	"POST /v1/consume":                 true,
	"POST /v1/consume/batch":           true,
	"POST /v1/reservations":            true,
	"POST /v1/reservations/:id/commit": true,
	"DELETE /v1/reservations/:id":      true,
}

// wrap bounds next; a nil admission bounds nothing.
func (a *admission) wrap(next echo.HandlerFunc) echo.HandlerFunc {
	if a == nil {
		return next
	}
	return func(c echo.Context) error {
		if a.inFlight.Add(1) > a.max {
			a.inFlight.Add(-1)
			a.shed.Inc()
			c.Response().Header().Set("Retry-After", retryAfterOverloaded)
			return &problemError{p: Problem{Type: "about:blank", Title: http.StatusText(http.StatusServiceUnavailable), Status: http.StatusServiceUnavailable,
				Detail: "quotad is handling as many usage requests as it can; nothing was counted, retry after Retry-After seconds"}}
		}
		defer a.inFlight.Add(-1)
		return next(c)
	}
}
