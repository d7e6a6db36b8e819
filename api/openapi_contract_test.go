package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quotad/quotad/quota"
)

// TestOpenAPIValid: the document is valid OpenAPI 3.0 (as kin-openapi,
// the validator the end-to-end tests hold quotad to it with, reads it),
// every rule of rules names a field or parameter it has, and no
// operationId has a character a code generator would choke on.
func TestOpenAPIValid(t *testing.T) {
	s := New(Config{Service: quota.NewService(quota.Stores{}, nil, quota.DefaultMargin()), Registry: prometheus.NewRegistry(),
		Logger: slog.New(slog.DiscardHandler), Ready: func(context.Context) Readiness { return Readiness{Status: "ok"} }})
	raw, err := json.Marshal(s.OpenAPI())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("the document is not valid OpenAPI: %v", err)
	}
	g := newSchemaGen()
	s.openapiWith(g)
	var unused []string
	for key := range rules {
		if !g.used[key] {
			unused = append(unused, key)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("rules that name no field: %v", unused)
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			for _, c := range op.OperationID {
				if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
					t.Errorf("%s %s: operationId %q", method, path, op.OperationID)
					break
				}
			}
		}
	}
}
