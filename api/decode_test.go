package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// FuzzDecode feeds arbitrary bodies to the request decoder: it must never
// panic, and every rejection must be a 4xx problem, never a 500.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"subject":"user:1","amount":5}`,
		`{"subject":"user:1","usage":{"model":"gpt-4o","input_tokens":10,"output_tokens":3}}`,
		`{"subject":`, `[]`, `null`, `{"amount":1e400}`, `{"amount":"1"}`, `{"x":1}`, `{}{}`, "",
		`{"plan":"free","limits":{"credits":{"limit":5,"period":"day"}},"cycle_anchor":"2026-01-31T00:00:00Z"}`,
		`{"cycle_anchor":"yesterday"}`, `{"input":"abc"}`, `{"input":1e-5000}`,
	} {
		f.Add(s)
	}
	e := echo.New()
	f.Fuzz(func(t *testing.T, body string) {
		for _, target := range []func() any{
			func() any { return new(quota.CheckRequest) },
			func() any { return new(quota.ConsumeRequest) },
			func() any { return new(quota.SubjectUpdate) },
			func() any { return new(quota.Plan) },
			func() any { return new(quota.Price) },
		} {
			req := httptest.NewRequest("POST", "/", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			c := e.NewContext(req, httptest.NewRecorder())
			err := decode(c, target())
			if err == nil {
				continue
			}
			var pe *problemError
			if !errors.As(err, &pe) || pe.p.Status < 400 || pe.p.Status >= 500 {
				t.Fatalf("decode(%q) = %v, want a 4xx problem", body, err)
			}
			if pe.p.Status == http.StatusBadRequest && pe.p.Field == "" {
				t.Fatalf("decode(%q) = 400 without a field", body)
			}
		}
	})
}
