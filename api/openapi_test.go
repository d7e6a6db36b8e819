package api_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/quota"
)

func newServer() *api.Server {
	svc := quota.NewService(quota.Stores{}, nil, quota.DefaultMargin())
	return api.New(api.Config{Service: svc, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
		Ready: func(ctx context.Context) api.Readiness { return api.Readiness{Status: "ok"} }})
}

// TestOpenAPIMatchesRoutes keeps the document and the router in step: every
// route echo serves is documented and every documented operation is served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	s := newServer()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest("GET", "/openapi.json", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /openapi.json: %d", rec.Code)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	for _, r := range s.Echo().Routes() {
		if r.Method == "echo_route_not_found" || r.Method == "HEAD" { // a HEAD answers as its GET, which the document has
			continue
		}
		path := r.Path
		segs := strings.Split(path, "/")
		for i, seg := range segs {
			if strings.HasPrefix(seg, ":") {
				segs[i] = "{" + seg[1:] + "}"
			}
		}
		served = append(served, r.Method+" "+strings.Join(segs, "/"))
	}
	sort.Strings(documented)
	sort.Strings(served)
	if strings.Join(documented, "\n") != strings.Join(served, "\n") {
		t.Fatalf("documented:\n%s\n\nserved:\n%s", strings.Join(documented, "\n"), strings.Join(served, "\n"))
	}
	for _, want := range []string{"POST /v1/check", "POST /v1/consume", "GET /v1/subjects/{subject}", "PUT /v1/subjects/{subject}",
		"POST /v1/subjects/{subject}/reset", "GET /v1/plans", "GET /v1/plans/{name}", "PUT /v1/plans/{name}", "POST /v1/cost",
		"GET /v1/pricing", "PUT /v1/pricing/{model}", "GET /healthz", "GET /readyz", "GET /metrics", "GET /openapi.json"} {
		if sort.SearchStrings(served, want) == len(served) || served[sort.SearchStrings(served, want)] != want {
			t.Errorf("contract route %s is not served", want)
		}
	}
}

// TestOpenAPISchemas checks the answer schemas name exactly the JSON fields
// of the types the handlers encode.
func TestOpenAPISchemas(t *testing.T) {
	doc := newServer().OpenAPI()
	schemas := doc["components"].(map[string]any)["schemas"].(map[string]any)
	for name, v := range map[string]any{"CheckResult": quota.CheckResult{}, "ConsumeResponse": quota.ConsumeResponse{}, "SubjectView": quota.SubjectView{}, "MeterStatus": quota.MeterStatus{}, "Problem": api.Problem{}} {
		s, ok := schemas[name].(map[string]any)
		if !ok {
			t.Fatalf("no schema %s", name)
		}
		props := s["properties"].(map[string]any)
		fields := api.JSONFields(reflectType(v))
		if len(props) != len(fields) {
			t.Errorf("%s: %d properties, %d fields", name, len(props), len(fields))
		}
		for _, f := range fields {
			if _, ok := props[f.Name]; !ok {
				t.Errorf("%s: field %s undocumented", name, f.Name)
			}
		}
	}
}

func TestUnauthenticated(t *testing.T) {
	s := newServer()
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/check", strings.NewReader(`{"subject":"user:1"}`))
	req.Header.Set("Content-Type", "application/json")
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnauthorized || rec.Header().Get("WWW-Authenticate") == "" || rec.Header().Get("Content-Type") != "application/problem+json" {
		t.Fatalf("no key: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
}

func reflectType(v any) reflect.Type { return reflect.TypeOf(v) }
