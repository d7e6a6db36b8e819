package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// The OpenAPI document is the contract, and these tests hold quotad to it:
// every request the end-to-end tests send through do (so call, exact...),
// consume and check, and every answer they get back, is validated against
// the /openapi.json quotad serves, with kin-openapi's openapi3filter. A
// failure fails the test that made the request. The rules:
//
//   - every answer is documented for its operation: its status, its content
//     type, its body's schema and its required headers;
//   - a request the document refuses (a field out of its bounds, a missing
//     key, another content type, an unknown route or method) is refused by
//     quotad too, with a 4xx: an unknown path is a 404 and a method the
//     path does not serve a 405, each a problem+json;
//   - no answer is a 500.
//
// A request the document allows may still be refused (an unknown plan, a
// limit the subject's plan lacks): the document cannot know the state.

// spec is the document, read from the first quotad a test asks (every
// quotad of a test binary is the same build).
var spec struct {
	once   sync.Once
	doc    *openapi3.T
	router routers.Router
	err    error
}

func (q *quotad) contract() (*openapi3.T, routers.Router, error) {
	spec.once.Do(func() {
		spec.err = func() error {
			resp, err := http.Get("http://" + q.addr + "/openapi.json")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			if err != nil {
				return err
			}
			doc, err := openapi3.NewLoader().LoadFromData(raw)
			if err != nil {
				return fmt.Errorf("load /openapi.json: %w", err)
			}
			// NewRouter validates the document itself first.
			router, err := legacy.NewRouter(doc)
			if err != nil {
				return fmt.Errorf("/openapi.json: %w", err)
			}
			spec.doc, spec.router = doc, router
			return nil
		}()
	})
	return spec.doc, spec.router, spec.err
}

// holdToContract fails tb unless one exchange with quotad keeps to its
// document; sent is the request's body (nil for none), got the answer's.
func (q *quotad) holdToContract(tb testing.TB, req *http.Request, sent []byte, status int, header http.Header, got []byte) {
	tb.Helper()
	if err := q.checkContract(req, sent, status, header, got); err != nil {
		tb.Errorf("breaks the OpenAPI document: %s %s -> %d: %v\nrequest body: %.300s\nanswer: %.500s",
			req.Method, req.URL.RequestURI(), status, err, sent, got)
	}
}

func (q *quotad) checkContract(req *http.Request, sent []byte, status int, header http.Header, got []byte) error {
	if status == http.StatusInternalServerError {
		return errors.New("no input may make quotad answer 500")
	}
	doc, router, err := q.contract()
	if err != nil {
		return err
	}
	ctx := context.Background()
	r := req.Clone(ctx)
	r.Body = io.NopCloser(bytes.NewReader(sent))
	if r.Method == http.MethodHead { // a GET without its body
		r.Method = http.MethodGet
	}
	route, params, err := router.FindRoute(r)
	if err != nil {
		want := http.StatusNotFound
		if errors.Is(err, routers.ErrMethodNotAllowed) {
			want = http.StatusMethodNotAllowed
		}
		if status != want {
			return fmt.Errorf("not an operation of the document (%v): want %d", err, want)
		}
		return problemOf(doc, header, got)
	}
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: bearer}}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil && (status < 400 || status > 499) {
		return fmt.Errorf("the document refuses the request, quotad did not: %w", err)
	}
	if req.Method == http.MethodHead {
		return nil
	}
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: status, Header: header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(got)
	return openapi3filter.ValidateResponse(ctx, out)
}

// bearer is the document's security scheme as a validator can check it
// without knowing the keys: an Authorization header with a bearer key.
func bearer(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	scheme, key, _ := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "bearer") || key == "" {
		return errors.New("no bearer key")
	}
	return nil
}

// problemOf checks an answer outside the document's operations: a
// problem+json body of the document's Problem schema.
func problemOf(doc *openapi3.T, header http.Header, got []byte) error {
	if mt, _, _ := mime.ParseMediaType(header.Get("Content-Type")); mt != "application/problem+json" {
		return fmt.Errorf("content type %q, want application/problem+json", header.Get("Content-Type"))
	}
	var v any
	if err := json.Unmarshal(got, &v); err != nil {
		return err
	}
	return doc.Components.Schemas["Problem"].Value.VisitJSON(v)
}
