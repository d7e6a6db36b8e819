package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Problem is the API's problem+json answer to a refused call.
type Problem struct {
	Status int    `json:"status"`
	Title  string `json:"title"`
	Detail string `json:"detail"`
	Field  string `json:"field"`
}

func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Detail
	}
	return p.Title
}

// detached carries a request's cancellation and deadline but none of its
// values: the API keeps per-connection bookkeeping in the outer request's
// context, which an inner call must not touch a second time.
type detached struct{ context.Context }

func (detached) Value(any) any { return nil }

// call runs one API request in-process as the browser's request r with
// key as its bearer, and decodes a 2xx answer's JSON into out (nil: none).
// A refusal is a *Problem.
func (c *Console) call(r *http.Request, key, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(detached{r.Context()}, method, path, rd)
	if err != nil {
		return err
	}
	c.prepare(req, r, key)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	w := &recorder{header: make(http.Header), status: http.StatusOK}
	c.api.ServeHTTP(w, req)
	if w.status >= 300 {
		p := &Problem{Status: w.status}
		if json.Unmarshal(w.body.Bytes(), p) != nil || p.Status == 0 {
			p.Status, p.Title = w.status, http.StatusText(w.status)
		}
		if ra := w.header.Get("Retry-After"); ra != "" && p.Detail == "" {
			p.Detail = "retry after " + ra + " s"
		}
		if p.Status == http.StatusUnauthorized {
			c.sessions.dropKey(key) // revoked or expired: sign in again
		}
		return p
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(w.body.Bytes(), out); err != nil {
		return fmt.Errorf("decode %s %s: %w", method, path, err)
	}
	return nil
}

// prepare makes req come from the browser's request r: its address (the
// failed-auth limit counts per address) and key as the bearer.
func (c *Console) prepare(req, r *http.Request, key string) {
	req.RemoteAddr = r.RemoteAddr
	req.TLS = r.TLS
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Accept", "application/json")
}

// recorder is the ResponseWriter of an in-process call.
type recorder struct {
	header http.Header
	status int
	wrote  bool
	body   bytes.Buffer
}

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(status int) {
	if !w.wrote {
		w.status, w.wrote = status, true
	}
}

func (w *recorder) Write(p []byte) (int, error) {
	w.wrote = true
	return w.body.Write(p)
}

// pathOf builds an API path from literal parts and escaped segments:
// pathOf("/v1/subjects/", id, "/reset").
func pathOf(parts ...string) string {
	var b []byte
	for i, p := range parts {
		if i%2 == 1 {
			p = url.PathEscape(p)
		}
		b = append(b, p...)
	}
	return string(b)
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
