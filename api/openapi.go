package api

import (
	"net/http"
	"reflect"
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
	g := &schemaGen{schemas: map[string]any{}}
	problemRef := g.schema(reflect.TypeOf(Problem{}))
	paths := map[string]map[string]any{}
	for _, r := range s.routes {
		op := map[string]any{
			"summary":     r.summary,
			"operationId": operationID(r.method, r.path),
		}
		var params []any
		for _, seg := range strings.Split(r.path, "/") {
			if name, ok := strings.CutPrefix(seg, ":"); ok {
				params = append(params, map[string]any{"name": name, "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
			}
		}
		if params != nil {
			op["parameters"] = params
		}
		if r.body != nil {
			op["requestBody"] = map[string]any{
				"required": !optionalBody[r.method+" "+r.path],
				"content":  map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(r.body))}},
			}
		}
		responses := map[string]any{
			"default": map[string]any{
				"description": "An error (400, 401, 403, 404, 409, 413, 415, 503)",
				"content":     map[string]any{"application/problem+json": map[string]any{"schema": problemRef}},
			},
		}
		for _, status := range append([]int{r.status}, alsoAnswers[r.method+" "+r.path]...) {
			responses[strconv.Itoa(status)] = map[string]any{
				"description": http.StatusText(status),
				"content":     map[string]any{"application/json": map[string]any{"schema": g.schema(reflect.TypeOf(r.answer))}},
			}
		}
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
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.json"} {
		paths[p] = map[string]any{"get": map[string]any{
			"operationId": operationID("GET", p),
			"responses":   map[string]any{"200": map[string]any{"description": "OK"}},
		}}
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info":    map[string]any{"title": "quotad", "version": "1", "description": "Quota and credits service"},
		"paths":   paths,
		"components": map[string]any{
			"schemas":         g.schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
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

func operationID(method, path string) string {
	id := strings.ToLower(method)
	for _, s := range strings.Split(path, "/") {
		s = strings.Trim(s, ":.{}")
		if s != "" {
			id += strings.ToUpper(s[:1]) + s[1:]
		}
	}
	return id
}

type schemaGen struct{ schemas map[string]any }

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
		return map[string]any{"type": "number", "description": "exact decimal"}
	case periodType:
		return map[string]any{"type": "string", "enum": []string{"hour", "day", "week", "month", "none"}}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return g.schema(t.Elem())
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
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
		if _, done := g.schemas[name]; !done {
			g.schemas[name] = nil // break cycles
			props := map[string]any{}
			var required []string
			for _, f := range JSONFields(t) {
				props[f.Name] = g.schema(f.Type)
				if !f.Optional {
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
