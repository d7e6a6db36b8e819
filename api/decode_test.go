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

// TestDecodeNamesTheField: every 400 of the decoder names the field at
// fault by its path in the body, and says what is wrong in the API's
// words (no Go type names or time layouts).
func TestDecodeNamesTheField(t *testing.T) {
	e := echo.New()
	for _, tt := range []struct {
		name, body string
		target     any
		field      string
	}{
		{"field twice", `{"subject":"user:1","subject":"user:2"}`, new(quota.CheckRequest), "subject"},
		{"field twice, other case", `{"Subject":"user:1","subject":"user:2"}`, new(quota.CheckRequest), "subject"},
		{"nested field twice", `{"subject":"user:1","usage":{"model":"m","model":"n"}}`, new(quota.ConsumeRequest), "usage.model"},
		{"map key twice", `{"limits":{"credits":{"limit":1,"period":"day"},"credits":{"limit":2,"period":"day"}}}`, new(quota.SubjectUpdate), "limits.credits"},
		{"time", `{"cycle_anchor":"yesterday"}`, new(quota.SubjectUpdate), "cycle_anchor"},
		{"time as a number", `{"cycle_anchor":5}`, new(quota.SubjectUpdate), "cycle_anchor"},
		{"nested unknown field", `{"subject":"user:1","usage":{"foo":1}}`, new(quota.ConsumeRequest), "usage.foo"},
		{"map value's field", `{"limits":{"credits":{"limit":"x"}}}`, new(quota.SubjectUpdate), "limits.credits.limit"},
		{"huge price", `{"input":1e308,"output":1,"cache_write":0,"cache_read":0}`, new(quota.Price), "input"},
		{"array item's field", `{"events":[{"subject":"user:1"},{"amount":"1"}]}`, new(batchRequest), "events[1].amount"},
		{"number too large", `{"amount":1e400}`, new(quota.CheckRequest), "amount"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest("POST", "/", strings.NewReader(tt.body))
			req.Header.Set("Content-Type", "application/json")
			err := decode(e.NewContext(req, httptest.NewRecorder()), tt.target)
			var pe *problemError
			if !errors.As(err, &pe) || pe.p.Status != 400 || pe.p.Field != tt.field {
				t.Fatalf("%s: %v (%+v), want a 400 on %s", tt.body, err, pe, tt.field)
			}
			t.Logf("%s -> %s: %s", tt.body, pe.p.Field, pe.p.Detail)
			for _, leak := range []string{"2006", "Go", "int64", "quota.", "json:"} {
				if strings.Contains(pe.p.Detail, leak) {
					t.Errorf("detail %q shows %q", pe.p.Detail, leak)
				}
			}
		})
	}
}

// TestDuplicateFieldPaths: the scanner names the member given twice by
// its path, through arrays, escapes and case, and finds none where there
// is none.
func TestDuplicateFieldPaths(t *testing.T) {
	for _, c := range []struct{ body, want string }{
		{`{"a":1,"b":{"c":[1,{"d":2,"D":3}]}}`, "b.c[1].D"},
		{`[{"x":1},{"y":1,"y":2}]`, "body[1].y"},
		{`{"amount":1,"\u0061mount":2}`, "amount"},
		{`{"s":"a\"b","t":"{\"u\":1,\"u\":2}","e":{},"f":[],"n":null,"m":-1.5e3}`, ""},
		{`{"events":[{"subject":"user:1"},{"subject":"user:2","amount":1,"Amount":2}]}`, "events[1].Amount"},
	} {
		if got := duplicateField([]byte(c.body)); got != c.want {
			t.Errorf("%s: %q, want %q", c.body, got, c.want)
		}
	}
}

func BenchmarkDuplicateField(b *testing.B) {
	body := []byte(`{"subject":"user:hot-42","meter":"credits","amount":1,"usage":{"model":"claude-3-5-sonnet","input_tokens":1000,"output_tokens":200},"idempotency_key":"k-123456"}`)
	b.ReportAllocs()
	for b.Loop() {
		if duplicateField(body) != "" {
			b.Fatal("found a duplicate")
		}
	}
}
