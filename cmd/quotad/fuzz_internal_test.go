package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

const fuzzAdminKey = "fuzz-admin-key-0123456789abcdef"

// FuzzHTTP sends whole HTTP requests (method, target, headers, body) to
// quotad's request path as serve builds it (newServer: full tiers over a
// real Postgres and Redis of its own, started once per fuzz process):
// no request may panic or be answered 500, and every error is a
// problem+json. What net/http itself refuses to parse never reaches a
// handler and is skipped (conns.go answers it).
func FuzzHTTP(f *testing.F) {
	h := fuzzServer(f)
	auth := "Authorization: Bearer " + fuzzAdminKey + "\r\n"
	ct := "Content-Type: application/json\r\n"
	for _, s := range []struct{ method, target, headers, body string }{
		{"POST", "/v1/check", auth + ct, `{"subject":"user:1","amount":5}`},
		{"POST", "/v1/consume", auth + ct, `{"subject":"user:1","usage":{"model":"gpt-4o","input_tokens":10,"output_tokens":3},"mode":"enforce","idempotency_key":"k"}`},
		{"POST", "/v1/consume/batch", auth + ct, `{"events":[{"subject":"anon:a","amount":1},{"subject":"user:2","amount":0}]}`},
		{"POST", "/v1/reservations", auth + ct, `{"subject":"user:1","amount":3,"ttl_seconds":5}`},
		{"POST", "/v1/reservations/rsv_x/commit", auth + ct, `{"amount":2}`},
		{"DELETE", "/v1/reservations/rsv_x", auth, ``},
		{"GET", "/v1/subjects/user:1", auth, ``},
		{"PUT", "/v1/subjects/user:1", auth + ct, `{"plan":"pro","limits":{"tokens":{"limit":9,"period":"hour"}},"cycle_anchor":"2026-01-31T00:00:00Z"}`},
		{"POST", "/v1/subjects/user:1/reset", auth + ct, `{"meter":"credits"}`},
		{"GET", "/v1/subjects?prefix=user:&order=usage&limit=5", auth, ``},
		{"GET", "/v1/subjects/user:1/usage?from=2026-01-01&to=2026-02-01", auth, ``},
		{"GET", "/v1/subjects/user:1/ledger?limit=3", auth, ``},
		{"PUT", "/v1/plans/team", auth + ct, `{"limits":{"credits":{"limit":50,"period":"day","overage":true}}}`},
		{"DELETE", "/v1/plans/team", auth, ``},
		{"GET", "/v1/plans/free", auth, ``},
		{"PUT", "/v1/pricing/m1", auth + ct, `{"input":"1.5","output":2,"cache_write":0,"cache_read":0}`},
		{"DELETE", "/v1/pricing/m1", auth, ``},
		{"POST", "/v1/cost", auth + ct, `{"model":"claude-3-5-sonnet","input_tokens":1000000}`},
		{"POST", "/v1/keys", auth + ct, `{"scope":"service","name":"n","expires_at":"2030-01-01T00:00:00Z"}`},
		{"GET", "/v1/keys", auth, ``},
		{"DELETE", "/v1/keys/1", auth, ``},
		{"GET", "/v1/subjects/user:1/events", auth + "Last-Event-ID: 1-0\r\n", ``},
		{"HEAD", "/v1/plans", "authorization: bearer " + fuzzAdminKey + "\r\n", ``},
		{"GET", "/readyz", "", ``},
		{"GET", "/openapi.json", "", ``},
		{"POST", "/v1/check", "Authorization: Bearer nope\r\n" + ct, `{"subject":"user:1"}`},
		{"PATCH", "/v1/check%zz", auth + "Content-Type: text/plain\r\n", `{}`},
	} {
		f.Add(s.method, s.target, s.headers, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, method, target, headers string, body []byte) {
		raw := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: quotad\r\n%sContent-Length: %d\r\n\r\n", method, target, headers, len(body))
		req, err := http.ReadRequest(bufio.NewReader(io.MultiReader(strings.NewReader(raw), strings.NewReader(string(body)))))
		if err != nil {
			return // net/http answers it before any handler
		}
		// An events stream runs until its client leaves.
		wait := time.Second
		if strings.Contains(req.URL.Path, "events") {
			wait = 50 * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		req = req.WithContext(ctx)
		req.RemoteAddr = "192.0.2.7:4321"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", method, target, rec.Code, rec.Body)
		}
		if rec.Code >= 400 && rec.Header().Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%s %s: %d as %q", method, target, rec.Code, rec.Header().Get("Content-Type"))
		}
	})
}

// fuzzServer builds quotad's request path over a database and a Redis
// database of its own, as serve does.
func fuzzServer(tb testing.TB) http.Handler {
	tb.Helper()
	cfg, err := parseEnv(map[string]string{
		"QUOTAD_POSTGRES_URL": testenv.PostgresURL(tb),
		"QUOTAD_REDIS_URL":    testenv.RedisURL(tb),
		"QUOTAD_ADMIN_KEY":    fuzzAdminKey,
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	store, err := persist.Open(ctx, cfg.PostgresURL, int32(cfg.PostgresConns))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(store.Close)
	if err := store.Migrate(ctx); err != nil {
		tb.Fatal(err)
	}
	if err := store.Seed(ctx, quota.DefaultPlans(), quota.DefaultPrices()); err != nil {
		tb.Fatal(err)
	}
	margin, err := quota.ParseDecimal(cfg.Margin)
	if err != nil {
		tb.Fatal(err)
	}
	bg, stop := context.WithCancel(ctx)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	srv, t, err := newServer(ctx, bg, cfg, store, margin, prometheus.NewRegistry(), log)
	tb.Cleanup(func() {
		stop()
		if t.flusherDone != nil {
			<-t.flusherDone
		}
		t.close()
	})
	if err != nil {
		tb.Fatal(err)
	}
	return srv
}
