package api

import (
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// The OpenAPI document is generated from the route table and the Go types
// the handlers decode and encode, so it cannot drift from them.

func (s *Server) openapi(c echo.Context) error {
	return c.JSON(http.StatusOK, s.OpenAPI())
}

// OpenAPI returns the OpenAPI 3.0 document of the routes.
func (s *Server) OpenAPI() map[string]any {
	return s.openapiWith(newSchemaGen())
}

func (s *Server) openapiWith(g *schemaGen) map[string]any {
	problem := map[string]any{"application/problem+json": map[string]any{"schema": g.schema(reflect.TypeOf(Problem{}))}}
	others := map[string]any{"application/problem+json": problem["application/problem+json"],
		"text/plain": map[string]any{"schema": map[string]any{"type": "string"}}}
	paths := map[string]map[string]any{}
	for _, r := range s.routes {
		key := r.method + " " + r.path
		op := map[string]any{
			"summary":     r.summary,
			"operationId": operationID(r.method, r.path),
		}
		var params []any
		for _, seg := range strings.Split(r.path, "/") {
			if name, ok := strings.CutPrefix(seg, ":"); ok {
				schema := map[string]any{"type": "string", "minLength": 1}
				if rl, ok := rules["path:"+name]; ok {
					maps.Copy(schema, rl.schema)
					g.use("path:" + name)
				}
				params = append(params, map[string]any{"name": name, "in": "path", "required": true, "schema": schema})
			}
		}
		if q, ok := queries[key]; ok {
			params = append(params, g.queryParams(reflect.TypeOf(q))...)
		}
		if params != nil {
			op["parameters"] = params
		}
		if d, ok := descriptions[key]; ok {
			op["description"] = d
		}
		if r.body != nil {
			op["requestBody"] = map[string]any{
				"required":    !optionalBody[key],
				"description": fmt.Sprintf("JSON, at most %d bytes (64 KiB); unknown fields are refused", MaxBody),
				"content":     map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(r.body))}},
			}
		}
		responses := map[string]any{
			"default": map[string]any{"description": otherErrors, "content": others},
		}
		for _, status := range append([]int{r.status}, alsoAnswers[key]...) {
			responses[strconv.Itoa(status)] = map[string]any{
				"description": http.StatusText(status),
				"content":     map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(r.answer))}},
			}
		}
		addErrors(responses, errorStatuses(r), problem)
		op["responses"] = responses
		if _, ok := r.answer.(eventStream); ok {
			describeStream(op, g)
		}
		if r.scope != "" {
			op["security"] = []any{map[string]any{"bearer": []string{}}}
			op["x-scope"] = r.scope
		}
		p := openapiPath(r.path)
		if paths[p] == nil {
			paths[p] = map[string]any{}
		}
		paths[p][strings.ToLower(r.method)] = op
	}
	readiness := map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(Readiness{}))}}
	for p, responses := range map[string]map[string]any{
		"/healthz": {"200": map[string]any{"description": "The process serves", "content": map[string]any{"application/json": map[string]any{
			"schema": map[string]any{"type": "object", "required": []string{"status"}, "additionalProperties": false,
				"properties": map[string]any{"status": map[string]any{"type": "string", "enum": []string{"ok"}}}}}}}},
		"/readyz": {
			"200": map[string]any{"description": "Ready: both stores up (ok), or one down and served around (degraded)", "content": readiness},
			"503": map[string]any{"description": "Not ready: no store can answer (unavailable)", "content": readiness},
		},
		"/metrics":      {"200": map[string]any{"description": "Prometheus metrics", "content": map[string]any{"text/plain": map[string]any{"schema": map[string]any{"type": "string"}}}}},
		"/openapi.json": {"200": map[string]any{"description": "This document", "content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"type": "object"}}}}},
	} {
		responses["default"] = map[string]any{"description": otherErrors, "content": others}
		paths[p] = map[string]any{"get": map[string]any{"operationId": operationID("GET", p), "responses": responses}}
	}
	if s.opsScope != "" { // QUOTAD_OPS_AUTH
		for _, p := range []string{"/readyz", "/metrics"} {
			op := paths[p]["get"].(map[string]any)
			op["security"] = []any{map[string]any{"bearer": []string{}}}
			op["x-scope"] = s.opsScope
			addErrors(op["responses"].(map[string]any), errorStatuses(route{method: http.MethodGet, path: p, scope: s.opsScope}), problem)
		}
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info": map[string]any{"title": "quotad", "version": "1", "description": "Quota and credits service. " +
			"Errors are application/problem+json (RFC 9457). Counts are exact integers up to their maximum. " +
			fmt.Sprintf("Request bodies are JSON of at most %d bytes.", MaxBody)},
		"paths": paths,
		"components": map[string]any{
			"schemas":         g.schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
}

// addErrors documents the error statuses of an operation in responses.
func addErrors(responses map[string]any, statuses []int, problem map[string]any) {
	for _, status := range statuses {
		if old, ok := responses[strconv.Itoa(status)].(map[string]any); ok {
			// Already documented with a body of its own (/readyz's 503):
			// the problem is one more content type.
			content := maps.Clone(old["content"].(map[string]any))
			maps.Copy(content, problem)
			old["content"] = content
			continue
		}
		resp := map[string]any{"description": errorDescriptions[status], "content": problem}
		switch status {
		case http.StatusUnauthorized:
			resp["headers"] = map[string]any{"WWW-Authenticate": map[string]any{"required": true, "schema": map[string]any{"type": "string"}}}
		case http.StatusTooManyRequests:
			resp["headers"] = map[string]any{"Retry-After": map[string]any{"required": true, "schema": map[string]any{"type": "integer"}}}
		}
		responses[strconv.Itoa(status)] = resp
	}
}

// otherErrors describes the errors every operation may answer besides its
// own.
const otherErrors = "Any other error: 404 no such route, 405 a method the path does not serve, " +
	"503 the stores cannot answer; 500 is a bug (no input should cause one). Requests Go's HTTP server " +
	"refuses before quotad reads them (400 a malformed request line or header, 431 headers over 1 MB, " +
	"501 an unknown transfer encoding) are answered in problem+json too"

var errorDescriptions = map[int]string{
	http.StatusBadRequest:            "Bad input; field names the request field at fault",
	http.StatusUnauthorized:          "No key, or not a valid one",
	http.StatusForbidden:             "The key lacks the admin scope",
	http.StatusNotFound:              "No such resource",
	http.StatusConflict:              "An idempotency key reused with a different request, a settled reservation, or a plan in use",
	http.StatusRequestTimeout:        "The body did not arrive within the read timeout",
	http.StatusTooManyRequests:       "Too many failed authentications from this address; retry after Retry-After seconds",
	http.StatusRequestEntityTooLarge: fmt.Sprintf("The body is over %d bytes", MaxBody),
	http.StatusUnsupportedMediaType:  "The body is not application/json",
	http.StatusServiceUnavailable:    "The stores cannot answer; retry later",
}

// errorStatuses lists the error statuses of a route: what its input can
// get wrong, its auth, and what it looks up.
func errorStatuses(r route) []int {
	var out []int
	params := strings.Contains(r.path, "/:")
	if _, query := queries[r.method+" "+r.path]; r.body != nil || params || query {
		out = append(out, http.StatusBadRequest)
	}
	if r.scope != "" {
		// Keys are looked up in Postgres: an authenticated route can be a 503.
		// An address that failed too often is refused before its key is
		// looked up.
		out = append(out, http.StatusUnauthorized, http.StatusTooManyRequests, http.StatusServiceUnavailable)
	}
	if r.scope == ScopeAdmin {
		out = append(out, http.StatusForbidden)
	}
	// A named resource other than a subject (subjects exist implicitly)
	// can be unknown, except to the PUT that creates it.
	for _, seg := range strings.Split(r.path, "/") {
		if strings.HasPrefix(seg, ":") && seg != ":subject" && r.method != http.MethodPut {
			out = append(out, http.StatusNotFound)
			break
		}
	}
	if conflicts[r.method+" "+r.path] || (r.body != nil && hasField(reflect.TypeOf(r.body), "idempotency_key")) {
		out = append(out, http.StatusConflict)
	}
	if r.body != nil {
		out = append(out, http.StatusRequestTimeout, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType)
	}
	return out
}

// conflicts lists the operations that answer 409 for a state they cannot
// change, besides those that take an idempotency key.
var conflicts = map[string]bool{
	"POST /v1/reservations/:id/commit": true, // released
	"DELETE /v1/reservations/:id":      true, // committed
	"DELETE /v1/plans/:name":           true, // a default plan, or one subjects have
}

func hasField(t reflect.Type, name string) bool {
	for _, f := range JSONFields(t) {
		if f.Name == name {
			return true
		}
	}
	return false
}

// optionalBody lists the operations whose body may be left out: a reset
// of every meter, a commit of the held amount.
var optionalBody = map[string]bool{
	"POST /v1/subjects/:subject/reset": true,
	"POST /v1/reservations/:id/commit": true,
}

// alsoAnswers lists operations that answer their schema with more 2xx
// statuses than their route's: a refused reservation is a 200.
var alsoAnswers = map[string][]int{
	"POST /v1/reservations": {http.StatusOK},
}

// OpenAPIPath turns an echo path (/v1/plans/:name) into an OpenAPI one
// (/v1/plans/{name}).
func openapiPath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if name, ok := strings.CutPrefix(s, ":"); ok {
			segs[i] = "{" + name + "}"
		}
	}
	return strings.Join(segs, "/")
}

// operationID names an operation in lower camel case from its method and
// path: POST /v1/consume/batch is postV1ConsumeBatch, GET /openapi.json
// getOpenapiJson (letters and digits only, for code generators).
func operationID(method, path string) string {
	id := strings.ToLower(method)
	words := strings.FieldsFunc(path, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	})
	for _, w := range words {
		id += strings.ToUpper(w[:1]) + w[1:]
	}
	return id
}

type schemaGen struct {
	schemas map[string]any
	used    map[string]bool // the rules applied, for TestOpenAPIValid
	// shape: types only (schemas named <Type>Shape), without rules and
	// with nothing required, for values a handler checks one item at a
	// time (see rule.shape).
	shape bool
}

func newSchemaGen() *schemaGen { return &schemaGen{schemas: map[string]any{}, used: map[string]bool{}} }

var (
	timeType    = reflect.TypeOf(time.Time{})
	qtimeType   = reflect.TypeOf(quota.Time{})
	decimalType = reflect.TypeOf(quota.Decimal{})
	periodType  = reflect.TypeOf(quota.Period(""))
)

// schema returns the schema of t, as a $ref for named structs.
func (g *schemaGen) schema(t reflect.Type) map[string]any {
	switch t {
	case timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	case qtimeType:
		return map[string]any{"type": "string", "format": "date-time", "nullable": true}
	case decimalType:
		// Read exactly, never through a float: a JSON number, or a string
		// holding one; answered as a number.
		return map[string]any{"description": "exact decimal", "anyOf": []any{
			map[string]any{"type": "number"},
			map[string]any{"type": "string", "pattern": `^[0-9]+(\.[0-9]+)?$`},
		}}
	case periodType:
		return map[string]any{"type": "string", "enum": []string{"hour", "day", "week", "month", "none"}}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schema(t.Elem())
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Int, reflect.Int64, reflect.Int32:
		return map[string]any{"type": "integer", "format": "int64"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice:
		return map[string]any{"type": "array", "items": g.schema(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": g.schema(t.Elem())}
	case reflect.Struct:
		name := t.Name()
		if g.shape {
			name += "Shape"
		}
		if _, done := g.schemas[name]; !done {
			g.schemas[name] = nil // break cycles
			props := map[string]any{}
			var required []string
			for _, f := range JSONFields(t) {
				ps, optional := g.schema(f.Type), f.Optional || g.shape
				for _, key := range []string{f.Name, name + "." + f.Name} { // the type's own rule last
					if rl, ok := rules[key]; ok && !g.shape {
						if rl.shape {
							ps = (&schemaGen{schemas: g.schemas, used: g.used, shape: true}).schema(f.Type)
						}
						ps, optional = withRule(ps, rl.schema), optional || rl.optional
						g.use(key)
					}
				}
				props[f.Name] = ps
				if !optional {
					required = append(required, f.Name)
				}
			}
			s := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
			if required != nil {
				s["required"] = required
			}
			g.schemas[name] = s
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

func (g *schemaGen) use(rule string) { g.used[rule] = true }

// queryParams describes the fields of struct t as optional query
// parameters, each with its rule ("<Type>.<field>") if it has one.
func (g *schemaGen) queryParams(t reflect.Type) []any {
	var out []any
	for _, f := range JSONFields(t) {
		schema := g.schema(f.Type)
		if rl, ok := rules[t.Name()+"."+f.Name]; ok {
			schema = withRule(schema, rl.schema)
			g.use(t.Name() + "." + f.Name)
		}
		out = append(out, map[string]any{"name": f.Name, "in": "query", "required": false, "schema": schema})
	}
	return out
}

// withRule returns schema s with a rule's keywords added: beside a $ref
// (which OpenAPI 3.0 reads alone) through allOf, and numeric bounds of a
// decimal on its number form.
func withRule(s, rule map[string]any) map[string]any {
	if _, ok := s["$ref"]; ok {
		s = map[string]any{"allOf": []any{s}}
	}
	out := maps.Clone(s)
	forms, decimal := s["anyOf"].([]any)
	if decimal {
		forms = slices.Clone(forms)
		forms[0] = maps.Clone(forms[0].(map[string]any))
		out["anyOf"] = forms
	}
	for k, v := range rule {
		if decimal && (k == "minimum" || k == "maximum") {
			forms[0].(map[string]any)[k] = v
		} else {
			out[k] = v
		}
	}
	return out
}

// JSONField is one field of a struct as encoding/json sees it.
type JSONField struct {
	Name     string
	Type     reflect.Type
	Optional bool // omitempty or omitzero
}

// JSONFields lists the JSON fields of struct type t.
func JSONFields(t reflect.Type) []JSONField {
	var out []JSONField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		if et := f.Type; f.Anonymous && tag == "" {
			// encoding/json inlines an untagged embedded struct's fields;
			// through a pointer they may all be missing.
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for _, inner := range JSONFields(et) {
					inner.Optional = inner.Optional || f.Type.Kind() == reflect.Pointer
					out = append(out, inner)
				}
				continue
			}
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		out = append(out, JSONField{Name: name, Type: f.Type, Optional: strings.Contains(opts, "omit")})
	}
	return out
}
