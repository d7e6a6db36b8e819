package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// BenchmarkConsolePage measures the server time of each console page (the
// whole request path: the console, its in-process API calls, Redis and
// Postgres) with 100,000 subjects, each with a counter this month and the
// month before, and 90 days of ledger for the subject shown.
func BenchmarkConsolePage(b *testing.B) {
	h, store := consoleServer(b)
	seedConsole(b, store, 100_000)
	cookie := consoleSignIn(b, h)
	get := func(page string) string {
		req := httptest.NewRequest(http.MethodGet, page, nil)
		req.RemoteAddr = "192.0.2.9:1234"
		req.Header.Set("Cookie", cookie)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%s: %d %s", page, rec.Code, rec.Body)
		}
		return rec.Body.String()
	}
	for _, bc := range []struct{ page, holds string }{
		{"/console/overview", "Flush lag"},
		{"/console/subjects", `href="/console/subjects/anon:000003"`},
		{"/console/subjects?order=share", "Next page"},
		{"/console/subjects?order=used&prefix=user:0123", `href="/console/subjects/user:012301"`},
		{"/console/subjects/user:000001", "msg-1<"},
		{"/console/subjects/user:000001?days=90", "over 90 days"},
		{"/console/plans", "anonymous"},
		{"/console/pricing", "gpt-4o"},
		{"/console/keys", "Mint a key"},
	} {
		// The page shows what it is measured for.
		if body := get(bc.page); !strings.Contains(body, bc.holds) {
			b.Fatalf("%s does not hold %q:\n%s", bc.page, bc.holds, body)
		}
		b.Run(strings.TrimPrefix(bc.page, "/console/"), func(b *testing.B) {
			for b.Loop() {
				get(bc.page)
			}
		})
	}
}

// consoleServer builds quotad's request path, console included, over a
// database and a Redis database of its own, as serve does.
func consoleServer(tb testing.TB) (http.Handler, *persist.Store) {
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
	margin, _ := quota.ParseDecimal(cfg.Margin)
	bg, stop := context.WithCancel(ctx)
	srv, t, err := newServer(ctx, bg, cfg, store, margin, prometheus.NewRegistry(), slog.New(slog.NewJSONHandler(io.Discard, nil)))
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
	return srv, store
}

// seedConsole stores n subjects ("anon:" or "user:" and six digits) with
// usage of credits this month and the month before, and 20 ledger events a
// day over 90 days for user:000001.
func seedConsole(tb testing.TB, st *persist.Store, n int) {
	tb.Helper()
	ctx := context.Background()
	now := time.Now().UTC()
	start := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO subjects (subject, plan, cycle_anchor)
			SELECT (CASE i % 3 WHEN 0 THEN 'anon:' ELSE 'user:' END) || lpad(i::text, 6, '0'),
				(CASE i % 3 WHEN 0 THEN 'anonymous' WHEN 1 THEN 'free' ELSE 'pro' END), $1
			FROM generate_series(1, $2::int) AS i ON CONFLICT DO NOTHING`, []any{start, n}},
		{`INSERT INTO counters (subject, meter, period_start, period_end, used)
			SELECT subject, 'credits', $1, $2, abs(hashtext(subject)) % 3000 FROM subjects ON CONFLICT DO NOTHING`, []any{start, start.AddDate(0, 1, 0)}},
		{`INSERT INTO counters (subject, meter, period_start, period_end, used)
			SELECT subject, 'credits', $1, $2, abs(hashtext(subject || 'x')) % 3000 FROM subjects ON CONFLICT DO NOTHING`, []any{start.AddDate(0, -1, 0), start}},
		{`INSERT INTO usage_ledger (event_id, kind, subject, meter, period_start, amount, mode, idempotency_key, created_at)
			SELECT 'bench-' || i, 'consume', 'user:000001', 'credits', $1, 1 + i % 17, 'record', 'msg-' || i,
				$2::timestamptz - make_interval(secs => i * 3888)
			FROM generate_series(1, 1800) AS i ON CONFLICT DO NOTHING`, []any{start, now}},
	} {
		if _, err := st.Pool().Exec(ctx, s.sql, s.args...); err != nil {
			tb.Fatal(err)
		}
	}
	// The counters written here go into the listing's rollup as quotad's
	// would.
	if err := st.RollupSince(ctx, time.Now().Add(-time.Hour)); err != nil {
		tb.Fatal(err)
	}
	if _, err := st.Pool().Exec(ctx, `ANALYZE subjects, counters, subject_usage, usage_ledger`); err != nil {
		tb.Fatal(err)
	}
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// consoleSignIn signs in with the admin key and returns the session's
// Cookie header.
func consoleSignIn(tb testing.TB, h http.Handler) string {
	tb.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/console/signin", nil))
	m := csrfInput.FindStringSubmatch(rec.Body.String())
	if m == nil {
		tb.Fatalf("no csrf token in %s", rec.Body)
	}
	form := url.Values{"csrf": {m[1]}, "key": {fuzzAdminKey}}
	req := httptest.NewRequest(http.MethodPost, "/console/signin", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, c := range rec.Result().Cookies() {
		req.AddCookie(c)
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	for _, c := range rec.Result().Cookies() {
		if c.Name == "quotad_console" && c.Value != "" {
			return c.Name + "=" + c.Value
		}
	}
	tb.Fatalf("sign-in: %d %s", rec.Code, rec.Body)
	return ""
}
