package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

var quotadBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "quotad-bin-")
	if err != nil {
		panic(err)
	}
	quotadBin = filepath.Join(dir, "quotad")
	if out, err := exec.Command("go", "build", "-o", quotadBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build quotad: %v\n%s", err, out)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	testenv.Main(m)
}

const adminKey = "test-admin-key"

// quotad is a running quotad process.
type quotad struct {
	addr string
	cmd  *exec.Cmd
	out  *output
	env  []string
	tb   testing.TB // fails when an exchange breaks the OpenAPI document (contract_test.go)
}

// output collects the process's stdout and stderr. It is locked because
// a test prints it (on failure) while the process may still be writing.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// startQuotad starts the real binary on a free port with env added to its
// environment and waits until /healthz answers.
func startQuotad(tb testing.TB, env ...string) *quotad {
	tb.Helper()
	q := &quotad{addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(tb)), tb: tb}
	// QUOTAD_DEV: the tests' admin keys are well-known and short.
	q.env = append([]string{"QUOTAD_ADDR=" + q.addr, "QUOTAD_ADMIN_KEY=" + adminKey, "QUOTAD_DEV=1", "QUOTAD_LOG_LEVEL=warn"}, env...)
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "QUOTAD_REDIS_URL=") }) {
		q.env = append(q.env, "QUOTAD_REDIS_URL="+testenv.RedisURL(tb))
	}
	// Without it quotad takes its default URL, the make run stack's
	// database: a test must never write there.
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "QUOTAD_POSTGRES_URL=") }) {
		q.env = append(q.env, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(tb))
	}
	q.start(tb)
	tb.Cleanup(func() { q.stop(tb) })
	return q
}

func (q *quotad) start(tb testing.TB) {
	tb.Helper()
	q.out = new(output)
	q.cmd = exec.Command(quotadBin, "serve")
	q.cmd.Env = append(os.Environ(), q.env...)
	q.cmd.Stdout, q.cmd.Stderr = q.out, q.out
	if err := q.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + q.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			q.waitReady()
			return
		}
		if time.Now().After(deadline) || q.cmd.ProcessState != nil {
			tb.Fatalf("quotad did not start: %v\n%s", err, q.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits (up to 10 s) until /readyz says both stores are up. A
// quotad that found Redis slow at start serves from Postgres until its
// probe succeeds; the tests start from the normal state. (What that start
// means for a subject provisioned meanwhile is in the README's limits.)
func (q *quotad) waitReady() {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + q.addr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if bytes.Contains(b, []byte(`"status":"ok"`)) {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (q *quotad) stop(tb testing.TB) {
	if q.cmd == nil || q.cmd.Process == nil {
		return
	}
	_ = q.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- q.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			tb.Errorf("quotad exited with %v\n%s", err, q.out)
		}
	case <-time.After(30 * time.Second):
		_ = q.cmd.Process.Kill()
		tb.Errorf("quotad did not stop on SIGTERM\n%s", q.out)
	}
	q.cmd = nil
}

// do sends a request and returns the status, content type and body.
func (q *quotad) do(tb testing.TB, method, path, key, contentType string, body io.Reader) (int, string, []byte) {
	tb.Helper()
	var sent []byte // for the contract check
	if body != nil {
		var err error
		if sent, err = io.ReadAll(body); err != nil {
			tb.Fatal(err)
		}
		body = bytes.NewReader(sent)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, "http://"+q.addr+path, body)
	if err != nil {
		tb.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	q.holdToContract(tb, req, sent, resp.StatusCode, resp.Header, b)
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

// call sends a JSON request with the admin key and decodes the JSON answer.
func (q *quotad) call(tb testing.TB, method, path, body string) (int, map[string]any) {
	tb.Helper()
	var r io.Reader
	ct := ""
	if body != "" {
		r, ct = strings.NewReader(body), "application/json"
	}
	status, _, b := q.do(tb, method, path, adminKey, ct, r)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("%s %s: answer %q is not a JSON object: %v", method, path, b, err)
	}
	return status, m
}

// TestREADMESession runs the curl session of README.md exactly as printed
// (with the test's address) and compares every answer with the printed one.
// Times cannot match, so a printed RFC 3339 time only requires a time back.
func TestREADMESession(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t), "QUOTAD_ADMIN_KEY=dev-admin-key")
	steps := readmeSession(t)
	if len(steps) < 5 {
		t.Fatalf("found %d commands in the README session", len(steps))
	}
	for _, s := range steps {
		cmdline := strings.ReplaceAll(s.cmd, "localhost:8080", q.addr)
		out, err := exec.Command("sh", "-c", cmdline).Output()
		if err != nil {
			t.Fatalf("%s: %v", s.cmd, err)
		}
		var got, want any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: answer %q: %v", s.cmd, out, err)
		}
		if err := json.Unmarshal([]byte(s.want), &want); err != nil {
			t.Fatalf("README prints %q: %v", s.want, err)
		}
		if !sameJSON(got, want) {
			t.Errorf("%s\n got: %s\nwant: %s", s.cmd, bytes.TrimSpace(out), s.want)
		}
	}
}

type step struct{ cmd, want string }

func readmeSession(tb testing.TB) []step {
	f, err := os.Open("../../README.md")
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var steps []step
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```console":
			in = true
		case in && line == "```":
			return steps
		case in && strings.HasPrefix(line, "$ "):
			steps = append(steps, step{cmd: line[2:]})
		case in && len(steps) > 0:
			steps[len(steps)-1].want += line
		}
	}
	return steps
}

// sameJSON compares decoded JSON; a wanted RFC 3339 string matches any
// RFC 3339 string.
func sameJSON(got, want any) bool {
	switch w := want.(type) {
	case string:
		if _, err := time.Parse(time.RFC3339, w); err == nil {
			g, ok := got.(string)
			_, gerr := time.Parse(time.RFC3339, g)
			return ok && gerr == nil
		}
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for k, v := range w {
			if gv, ok := g[k]; !ok || !sameJSON(gv, v) {
				return false
			}
		}
		return true
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return false
		}
		for i := range w {
			if !sameJSON(g[i], w[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(got, want)
}

// TestContractErrors walks every error status of the contract.
func TestContractErrors(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	status, key := q.call(t, "POST", "/v1/keys", `{"scope":"service","name":"e2e"}`)
	if status != 201 || key["key"] == "" {
		t.Fatalf("mint service key: %d %v", status, key)
	}
	serviceKey := key["key"].(string)

	tests := []struct {
		name        string
		method      string
		path        string
		key         string
		contentType string
		body        string
		status      int
		field       string
	}{
		{"no key", "POST", "/v1/check", "", "application/json", `{"subject":"user:1"}`, 401, ""},
		{"bad key", "POST", "/v1/check", "nope", "application/json", `{"subject":"user:1"}`, 401, ""},
		{"service key on admin route", "PUT", "/v1/plans/team", serviceKey, "application/json", `{"limits":{"credits":{"limit":5,"period":"day"}}}`, 403, ""},
		{"service key mints keys", "POST", "/v1/keys", serviceKey, "application/json", `{"scope":"admin"}`, 403, ""},
		{"bad subject", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"bob"}`, 400, "subject"},
		{"bad meter", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"user:1","meter":"Nope!"}`, 400, "meter"},
		{"negative amount", "POST", "/v1/consume", serviceKey, "application/json", `{"subject":"user:1","amount":-5}`, 400, "amount"},
		{"huge amount", "POST", "/v1/consume", serviceKey, "application/json", `{"subject":"user:1","amount":1000000000001}`, 400, "amount"},
		{"fractional amount", "POST", "/v1/consume", serviceKey, "application/json", `{"subject":"user:1","amount":1.5}`, 400, "amount"},
		{"amount as string", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"user:1","amount":"7"}`, 400, "amount"},
		{"bad mode", "POST", "/v1/consume", serviceKey, "application/json", `{"subject":"user:1","amount":1,"mode":"maybe"}`, 400, "mode"},
		{"unknown model", "POST", "/v1/consume", serviceKey, "application/json", `{"subject":"user:1","usage":{"model":"gpt-9","input_tokens":5}}`, 400, "usage.model"},
		{"unknown field", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"user:1","amuont":3}`, 400, "amuont"},
		{"malformed JSON", "POST", "/v1/check", serviceKey, "application/json", `{"subject":`, 400, "body"},
		{"two objects", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"user:1"}{}`, 400, "body"},
		{"unknown plan", "GET", "/v1/plans/platinum", serviceKey, "", "", 404, ""},
		{"plan with bad period", "PUT", "/v1/plans/team", adminKey, "application/json", `{"limits":{"credits":{"limit":5,"period":"fortnight"}}}`, 400, "limits.credits.period"},
		{"subject with unknown plan", "PUT", "/v1/subjects/user:1", adminKey, "application/json", `{"plan":"platinum"}`, 400, "plan"},
		{"not JSON", "POST", "/v1/check", serviceKey, "text/plain", `{"subject":"user:1"}`, 415, ""},
		{"no content type", "POST", "/v1/consume", serviceKey, "", `{"subject":"user:1","amount":1}`, 415, ""},
		{"body over 64 KiB", "POST", "/v1/check", serviceKey, "application/json", `{"subject":"user:1","meter":"` + strings.Repeat("a", 70<<10) + `"}`, 413, ""},
		{"unknown route", "GET", "/v1/nothing", serviceKey, "", "", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			status, ct, b := q.do(t, tt.method, tt.path, tt.key, tt.contentType, body)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %s", status, tt.status, b)
			}
			if ct != "application/problem+json" {
				t.Fatalf("content type %q, want application/problem+json", ct)
			}
			var p struct {
				Type, Title, Detail, Field string
				Status                     int
			}
			if err := json.Unmarshal(b, &p); err != nil || p.Status != tt.status || p.Title == "" || p.Detail == "" {
				t.Fatalf("problem %s (%v)", b, err)
			}
			if p.Field != tt.field {
				t.Fatalf("field %q, want %q: %s", p.Field, tt.field, b)
			}
		})
	}

	t.Run("409 idempotency key reused with another body", func(t *testing.T) {
		body := `{"subject":"user:7","amount":5,"idempotency_key":"k1"}`
		if status, _, b := q.do(t, "POST", "/v1/consume", serviceKey, "application/json", strings.NewReader(body)); status != 200 {
			t.Fatalf("first: %d %s", status, b)
		}
		status, ct, b := q.do(t, "POST", "/v1/consume", serviceKey, "application/json", strings.NewReader(`{"subject":"user:7","amount":6,"idempotency_key":"k1"}`))
		if status != 409 || ct != "application/problem+json" {
			t.Fatalf("reuse: %d %s %s\n%s", status, ct, b, q.out)
		}
		// Nothing changed: the subject still has the first 5 only.
		_, sub := q.call(t, "GET", "/v1/subjects/user:7", "")
		if used := sub["meters"].([]any)[0].(map[string]any)["used"]; used != 5.0 {
			t.Fatalf("used %v after a 409, want 5", used)
		}
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		q.do(t, "POST", "/v1/consume", serviceKey, "application/json", strings.NewReader(`{"subject":"user:8","amount":0}`))
		q.do(t, "POST", "/v1/consume", serviceKey, "application/json", strings.NewReader(`{"subject":"user:8","usage":{"model":"nope","input_tokens":1}}`))
		_, sub := q.call(t, "GET", "/v1/subjects/user:8", "")
		if used := sub["meters"].([]any)[0].(map[string]any)["used"]; used != 0.0 {
			t.Fatalf("used %v after rejected consumes, want 0", used)
		}
	})
}

// TestProvisioningAndPricing checks the defaults a new subject gets and the
// priced consume of the foundation issue.
func TestProvisioningAndPricing(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	before := time.Now().UTC().Truncate(time.Second)
	// The first consume provisions a subject, anchored then (reads do not).
	if _, status, ok := q.consume(`{"subject":"user:new-1","amount":1}`); !ok {
		t.Fatalf("first consume: %d", status)
	}
	_, user := q.call(t, "GET", "/v1/subjects/user:new-1", "")
	after := time.Now().UTC()
	if user["plan"] != "free" {
		t.Fatalf("user plan %v, want free", user["plan"])
	}
	m := user["meters"].([]any)[0].(map[string]any)
	anchor, _ := time.Parse(time.RFC3339, user["cycle_anchor"].(string))
	resets, _ := time.Parse(time.RFC3339, m["resets_at"].(string))
	if m["limit"] != 2500.0 || anchor.Before(before) || anchor.After(after) || !resets.Equal(anchor.AddDate(0, 1, 0)) {
		t.Fatalf("new user: %v; want limit 2500, anchor now, resets one month later", user)
	}
	_, again := q.call(t, "GET", "/v1/subjects/user:new-1", "")
	if again["cycle_anchor"] != user["cycle_anchor"] {
		t.Fatalf("anchor moved from %v to %v", user["cycle_anchor"], again["cycle_anchor"])
	}
	_, anon := q.call(t, "POST", "/v1/check", `{"subject":"anon:device-1"}`)
	if anon["plan"] != "anonymous" || anon["limit"] != 1000.0 || anon["allowed"] != true {
		t.Fatalf("new anon: %v", anon)
	}

	_, res := q.call(t, "POST", "/v1/consume", `{"subject":"user:p","usage":{"model":"claude-3-5-sonnet","input_tokens":1000000,"output_tokens":0}}`)
	if res["amount"] != 360.0 || res["used"] != 360.0 {
		t.Fatalf("priced consume: %v, want 360 credits", res)
	}
	_, cost := q.call(t, "POST", "/v1/cost", `{"model":"claude-3-5-sonnet","input_tokens":1000000,"output_tokens":0}`)
	if cost["credits"] != 360.0 || cost["usd"] != 3.0 {
		t.Fatalf("cost: %v", cost)
	}
	// A new price applies to the next consume.
	if status, p := q.call(t, "PUT", "/v1/pricing/house-model", `{"input":1,"output":2,"cache_write":0,"cache_read":0}`); status != 200 {
		t.Fatalf("put price: %d %v", status, p)
	}
	_, res = q.call(t, "POST", "/v1/consume", `{"subject":"user:p","usage":{"model":"house-model","input_tokens":0,"output_tokens":1000000}}`)
	if res["amount"] != 240.0 {
		t.Fatalf("consume on a new price: %v, want 240", res)
	}
}

// TestAdminOperations covers plans, subject settings and reset end to end.
func TestAdminOperations(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	if status, p := q.call(t, "PUT", "/v1/plans/team", `{"limits":{"credits":{"limit":50,"period":"day"},"requests":{"limit":3,"period":"hour"}}}`); status != 200 {
		t.Fatalf("put plan: %d %v", status, p)
	}
	status, sub := q.call(t, "PUT", "/v1/subjects/user:t", `{"plan":"team","limits":{"model.sonnet":{"limit":2,"period":"none"}}}`)
	if status != 200 || sub["plan"] != "team" || len(sub["meters"].([]any)) != 3 {
		t.Fatalf("put subject: %d %v", status, sub)
	}
	for i := range 4 {
		_, res := q.call(t, "POST", "/v1/consume", `{"subject":"user:t","meter":"requests","amount":1,"mode":"enforce"}`)
		if want := i < 3; res["applied"] != want {
			t.Fatalf("request %d: %v, want applied=%v", i, res, want)
		}
	}
	_, chk := q.call(t, "POST", "/v1/check", `{"subject":"user:t","meter":"requests"}`)
	if chk["allowed"] != false || chk["remaining"] != 0.0 {
		t.Fatalf("check at the limit: %v", chk)
	}
	_, life := q.call(t, "POST", "/v1/check", `{"subject":"user:t","meter":"model.sonnet"}`)
	if life["resets_at"] != nil || life["limit"] != 2.0 {
		t.Fatalf("lifetime meter: %v, want resets_at null", life)
	}
	if status, _ := q.call(t, "POST", "/v1/subjects/user:t/reset", `{"meter":"requests"}`); status != 200 {
		t.Fatalf("reset: %d", status)
	}
	_, chk = q.call(t, "POST", "/v1/check", `{"subject":"user:t","meter":"requests"}`)
	if chk["allowed"] != true || chk["used"] != 0.0 {
		t.Fatalf("check after reset: %v", chk)
	}
	_, plans := q.call(t, "GET", "/v1/plans/team", "")
	if plans["name"] != "team" {
		t.Fatalf("get plan: %v", plans)
	}
	status, _, b := q.do(t, "GET", "/readyz", "", "", nil)
	if status != 200 || !bytes.Contains(b, []byte(`"postgres":"up"`)) {
		t.Fatalf("readyz: %d %s", status, b)
	}
	status, _, b = q.do(t, "GET", "/metrics", "", "", nil)
	if status != 200 || !bytes.Contains(b, []byte(`quotad_http_requests_total{code="200",method="POST",route="/v1/check"}`)) {
		t.Fatalf("metrics: %d %s", status, b)
	}
}

// TestKeysCreateCommand mints a service key with the CLI and uses it.
func TestKeysCreateCommand(t *testing.T) {
	pg := testenv.PostgresURL(t)
	out, err := exec.Command(quotadBin, "keys", "create", "--scope", "service", "--name", "cli", "--postgres-url", pg).Output()
	if err != nil {
		t.Fatalf("keys create: %v", err)
	}
	key := strings.TrimSpace(string(out))
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg)
	status, _, b := q.do(t, "POST", "/v1/check", key, "application/json", strings.NewReader(`{"subject":"user:cli"}`))
	if status != 200 {
		t.Fatalf("check with the minted key: %d %s", status, b)
	}
	status, _, _ = q.do(t, "PUT", "/v1/plans/x", key, "application/json", strings.NewReader(`{"limits":{"credits":{"limit":1,"period":"day"}}}`))
	if status != 403 {
		t.Fatalf("admin route with a service key: %d, want 403", status)
	}
	if out, err := exec.Command(quotadBin, "serve", "--tiers", "nope").CombinedOutput(); err == nil || !strings.Contains(string(out), "tiers") {
		t.Fatalf("bad --tiers: %v %s", err, out)
	}
}
