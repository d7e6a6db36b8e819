package api

import (
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// httpMetrics counts requests and their latency per route template (not
// per raw path, which would give a series per subject).
type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	// Resolved children, so that a request costs a map lookup rather
	// than hashing its label values.
	mu     sync.RWMutex
	counts map[countKey]prometheus.Counter
	timers map[timerKey]prometheus.Observer
}

type countKey struct {
	route, method string
	code          int
}

type timerKey struct{ route, method string }

func newHTTPMetrics(reg *prometheus.Registry) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "quotad_http_requests_total",
			Help: "HTTP requests answered, by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "quotad_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, by route and method.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method"}),
	}
	m.counts, m.timers = map[countKey]prometheus.Counter{}, map[timerKey]prometheus.Observer{}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *httpMetrics) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err) // write the problem now so the status below is the real one
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		method := c.Request().Method
		switch method {
		case "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS":
		default:
			method = "OTHER" // any token is a method; keep the label set bounded
		}
		count, timer := m.children(route, method, c.Response().Status)
		count.Inc()
		timer.Observe(time.Since(start).Seconds())
		return nil
	}
}

func (m *httpMetrics) children(route, method string, code int) (prometheus.Counter, prometheus.Observer) {
	ck, tk := countKey{route, method, code}, timerKey{route, method}
	m.mu.RLock()
	count, ok1 := m.counts[ck]
	timer, ok2 := m.timers[tk]
	m.mu.RUnlock()
	if ok1 && ok2 {
		return count, timer
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.counts) > 10_000 { // routes are templates, so this stays small; bound it anyway
		clear(m.counts)
	}
	count = m.requests.WithLabelValues(route, method, strconv.Itoa(code))
	timer = m.latency.WithLabelValues(route, method)
	m.counts[ck], m.timers[tk] = count, timer
	return count, timer
}
