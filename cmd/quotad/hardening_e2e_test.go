package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

// TestServeRefusesAGuessableAdminKey: outside dev mode, serve does not
// start with an admin key printed in the README or one too short to be
// secret; with QUOTAD_DEV=1 (make run, the tests) it does.
func TestServeRefusesAGuessableAdminKey(t *testing.T) {
	for _, key := range []string{"dev-admin-key", "short-but-not-known"} {
		cmd := exec.Command(quotadBin, "serve")
		cmd.Env = append(withoutEnv(os.Environ(), "QUOTAD_DEV"), "QUOTAD_ADMIN_KEY="+key, "QUOTAD_ADDR=127.0.0.1:0",
			"QUOTAD_POSTGRES_URL=postgres://nobody@127.0.0.1:1/none")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "admin key") {
			t.Errorf("serve with admin key %q: %v, %s; want a refusal naming the admin key", key, err, out)
		}
	}
}

// withoutEnv drops the variables named from env.
func withoutEnv(env []string, names ...string) []string {
	var out []string
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		keep := true
		for _, n := range names {
			keep = keep && name != n
		}
		if keep {
			out = append(out, e)
		}
	}
	return out
}

// TestSlowClientsCannotHoldQuotad: a client that sends its headers and
// then its body slowly is answered from the headers when it has no key
// (401, and the connection is closed instead of waiting for the body),
// and runs into the read timeout when it has one (408). Three times
// QUOTAD_MAX_CONNS slow connections (bodies that never come, headers that
// never end, nothing sent), opened again as soon as quotad closes them,
// neither raise quotad's open files past the cap nor keep /healthz (a new
// connection each time) and an authenticated client from being answered
// as fast as before the flood.
func TestSlowClientsCannotHoldQuotad(t *testing.T) {
	const maxConns = 40
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t), fmt.Sprintf("QUOTAD_MAX_CONNS=%d", maxConns), "QUOTAD_READ_TIMEOUT=2s")
	slowBody := "POST /v1/check HTTP/1.1\r\nHost: quotad\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n%s\r\n{"

	t.Run("no key: 401 at once, connection closed", func(t *testing.T) {
		start := time.Now()
		resp, conn := rawRequest(t, q.addr, fmt.Sprintf(slowBody, ""))
		if resp.StatusCode != 401 || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%d %s, want 401 problem+json", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		answered := time.Since(start)
		if answered > time.Second {
			t.Fatalf("answered after %v", answered)
		}
		// net/http reads what comes of the body for up to a second (an
		// honest client then reads the answer), then closes.
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection still open after the 401: %v", err)
		}
		t.Logf("answered in %v, closed after %v", answered.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	})
	t.Run("key, body never finished: 408 after the read timeout", func(t *testing.T) {
		start := time.Now()
		resp, _ := rawRequest(t, q.addr, fmt.Sprintf(slowBody, "Authorization: Bearer "+adminKey+"\r\n"))
		took := time.Since(start)
		if resp.StatusCode != 408 || took < 1500*time.Millisecond || took > 4*time.Second {
			t.Fatalf("%d after %v, want 408 after ~2s", resp.StatusCode, took)
		}
	})

	t.Run("flood", func(t *testing.T) {
		idle := probe(t, q, 2*time.Second)
		ctx, stop := context.WithCancel(context.Background())
		var dials atomic.Int64
		var wg sync.WaitGroup
		for i := range 3 * maxConns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				slowClient(ctx, q.addr, i%3, &dials)
			}()
		}
		time.Sleep(500 * time.Millisecond)
		flood := probe(t, q, 4*time.Second)
		stop()
		wg.Wait()
		_, _, metrics := q.do(t, "GET", "/metrics", "", "", nil)
		t.Logf("before: %s", idle)
		t.Logf("during: %s; %d slow clients made %d connections; %s", flood, 3*maxConns, dials.Load(), metricLines(metrics, "quotad_http_connections"))
		if len(flood.failures) > 0 {
			t.Errorf("%d requests failed, first: %s", len(flood.failures), flood.failures[0])
		}
		// The cap counts client connections: at most maxConns, and one
		// newcomer waiting for room. Open files also count the stores'
		// pools, which may grow under the probe's own load.
		if flood.maxConns > maxConns+1 {
			t.Errorf("quotad held %d client connections: the cap of %d (and one waiting) does not hold", flood.maxConns, maxConns)
		}
		if flood.maxFiles > idle.maxFiles+maxConns+10 {
			t.Errorf("quotad had %d open files, %d before the flood: more than the cap of %d connections explains", flood.maxFiles, idle.maxFiles, maxConns)
		}
		if slices.Max(flood.health) > time.Second || slices.Max(flood.checks) > time.Second {
			t.Errorf("answers took up to %v (healthz) and %v (checks) during the flood", slices.Max(flood.health), slices.Max(flood.checks))
		}
	})
}

// probeResult is what probe saw.
type probeResult struct {
	health, checks []time.Duration
	failures       []string
	maxFiles       int
	maxConns       int // client connections
}

func (r probeResult) String() string {
	return fmt.Sprintf("healthz (a new connection each) %s; authenticated checks (one connection) %s; %d failed; open files at most %d, client connections at most %d",
		latencies(r.health), latencies(r.checks), len(r.failures), r.maxFiles, r.maxConns)
}

// probe asks for /healthz on a new connection, then a check with an
// authenticated client that keeps its connection, every 20 ms for d, and
// samples quotad's open files.
func probe(tb testing.TB, q *quotad, d time.Duration) probeResult {
	authed := &http.Client{Timeout: 5 * time.Second}
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var r probeResult
	// Files are sampled beside the probes, not between them: reading
	// /proc/net/tcp through a flood's thousands of sockets is slow, and a
	// probe connection left idle past the guard's grace time may be
	// closed for a newcomer, as the guard documents.
	sampled := make(chan struct{})
	stop := make(chan struct{})
	var sampleErr error
	go func() {
		defer close(sampled)
		for {
			files, conns, err := openFiles(q)
			if err != nil {
				sampleErr = err
				return
			}
			r.maxFiles, r.maxConns = max(r.maxFiles, files), max(r.maxConns, conns)
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	for end := time.Now().Add(d); time.Now().Before(end); {
		t0 := time.Now()
		resp, err := fresh.Get("http://" + q.addr + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			r.failures = append(r.failures, fmt.Sprintf("healthz: %v %v", err, resp))
		} else {
			resp.Body.Close()
			r.health = append(r.health, time.Since(t0))
		}
		t0 = time.Now()
		req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/check", strings.NewReader(`{"subject":"user:flood"}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err = authed.Do(req)
		if err != nil || resp.StatusCode != 200 {
			r.failures = append(r.failures, fmt.Sprintf("check: %v %v", err, resp))
		} else {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			r.checks = append(r.checks, time.Since(t0))
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	<-sampled
	if sampleErr != nil {
		tb.Fatal(sampleErr)
	}
	return r
}

// rawRequest writes raw to a new connection and reads the answer (within
// 5 s); the connection stays open for the caller, closed at cleanup.
func rawRequest(tb testing.TB, addr, raw string) (*http.Response, net.Conn) {
	tb.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, raw); err != nil {
		tb.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tb.Fatalf("no answer: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, readerConn{conn, br}
}

// readerConn reads what its bufio.Reader holds before the connection.
type readerConn struct {
	net.Conn
	r *bufio.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// slowClient holds a connection open as long as quotad lets it, in one
// of three ways (kind): a request without a key whose body never comes,
// headers that never end (a byte every 200 ms), or nothing sent at all.
// When quotad closes the connection it opens another, until ctx ends.
func slowClient(ctx context.Context, addr string, kind int, dials *atomic.Int64) {
	body, silent := kind == 0, kind == 2
	buf := make([]byte, 4096)
	for ctx.Err() == nil {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		dials.Add(1)
		head := "POST /v1/check HTTP/1.1\r\nHost: quotad\r\n"
		switch {
		case body:
			head += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
		case silent:
			head = ""
		}
		_, err = io.WriteString(conn, head)
		for err == nil && ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			if !body && !silent {
				_, err = io.WriteString(conn, "X")
			}
			if err == nil {
				_ = conn.SetReadDeadline(time.Now().Add(time.Millisecond))
				if _, rerr := conn.Read(buf); !errors.Is(rerr, os.ErrDeadlineExceeded) {
					err = rerr // answered or closed
					if err == nil {
						err = io.EOF
					}
				}
			}
		}
		conn.Close()
	}
}

// openFiles counts the file descriptors quotad holds, and among them the
// client connections: sockets on its listening port, not listening.
func openFiles(q *quotad) (files, conns int, err error) {
	dir := fmt.Sprintf("/proc/%d/fd", q.cmd.Process.Pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	_, port, _ := net.SplitHostPort(q.addr)
	p, _ := strconv.Atoi(port)
	clients := map[string]bool{} // socket inodes
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", q.cmd.Process.Pid, table))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 || f[3] == "0A" { // 0A: LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			if lp, err := strconv.ParseUint(hexPort, 16, 32); err == nil && int(lp) == p {
				clients["socket:["+f[9]+"]"] = true
			}
		}
	}
	for _, fd := range fds {
		if link, err := os.Readlink(dir + "/" + fd.Name()); err == nil && clients[link] {
			conns++
		}
	}
	return len(fds), conns, nil
}

// latencies summarizes request times: count, median and maximum.
func latencies(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return fmt.Sprintf("%d, median %v, max %v", len(s), s[len(s)/2].Round(10*time.Microsecond), s[len(s)-1].Round(10*time.Microsecond))
}

// metricLines returns the lines of a /metrics page that start with name.
func metricLines(page []byte, name string) string {
	var out []string
	for _, l := range strings.Split(string(page), "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "; ")
}

// TestMalformedRequestsAnswerProblemJSON: what net/http refuses before a
// handler runs is answered in problem+json like everything else.
func TestMalformedRequestsAnswerProblemJSON(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	for _, tt := range []struct {
		name, raw string
		status    int
	}{
		{"bad percent-escape", "GET /v1/subjects/user%zz HTTP/1.1\r\nHost: quotad\r\n\r\n", 400},
		{"NUL in a header", "GET /healthz HTTP/1.1\r\nHost: quotad\r\nX-Trace: a\x00b\r\n\r\n", 400},
		{"no Host", "GET /healthz HTTP/1.1\r\n\r\n", 400},
		{"headers too large", "GET /healthz HTTP/1.1\r\nHost: quotad\r\nX-Big: " + strings.Repeat("a", 1<<20+4096) + "\r\n\r\n", 431},
		{"unknown transfer encoding", "POST /v1/check HTTP/1.1\r\nHost: quotad\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := rawRequest(t, q.addr, tt.raw)
			b, _ := io.ReadAll(resp.Body)
			var p struct {
				Title, Detail string
				Status        int
			}
			if resp.StatusCode != tt.status || resp.Header.Get("Content-Type") != "application/problem+json" ||
				json.Unmarshal(b, &p) != nil || p.Status != tt.status || p.Title == "" || p.Detail == "" {
				t.Fatalf("%d %s %q, want %d problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), b, tt.status)
			}
		})
	}
}

// TestUnknownKeysSpareThePostgres: a bad key repeated is looked up in
// Postgres once (it is cached as unknown), and a client trying many keys
// is answered 429 with Retry-After after QUOTAD_AUTH_FAIL_BURST failures,
// without more lookups, while its valid key keeps working and another
// address is not limited.
func TestUnknownKeysSpareThePostgres(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t), "QUOTAD_AUTH_FAIL_BURST=10", "QUOTAD_AUTH_FAIL_RATE=1")
	_, key := q.call(t, "POST", "/v1/keys", `{"scope":"service"}`)
	serviceKey := key["key"].(string)
	check := func(client *http.Client, key string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/check", strings.NewReader(`{"subject":"user:k"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := check(http.DefaultClient, serviceKey); resp.StatusCode != 200 {
		t.Fatalf("service key: %d", resp.StatusCode)
	}
	lookups := func() float64 { return metricValue(t, q, "quotad_auth_key_lookups_total") }

	before := lookups()
	for range 5 {
		if resp := check(http.DefaultClient, "qk_not-a-key"); resp.StatusCode != 401 {
			t.Fatalf("bad key: %d, want 401", resp.StatusCode)
		}
	}
	if n := lookups() - before; n != 1 {
		t.Errorf("the same bad key 5 times: %v Postgres lookups, want 1", n)
	}

	before = lookups()
	statuses := map[int]int{}
	var retryAfter string
	for i := range 100 {
		resp := check(http.DefaultClient, fmt.Sprintf("qk_guess-%d", i))
		statuses[resp.StatusCode]++
		if resp.StatusCode == 429 {
			retryAfter = resp.Header.Get("Retry-After")
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("429 as %q", ct)
			}
		}
	}
	n := lookups() - before
	t.Logf("100 guessed keys from one address: %v, %v lookups, Retry-After %q", statuses, n, retryAfter)
	// 10 at once (5 were spent above, regained within seconds) and one a
	// second meanwhile.
	if statuses[429] < 80 || n > 15 || retryAfter == "" {
		t.Errorf("100 guesses: %v and %v lookups; want mostly 429 with Retry-After, at most 15 lookups", statuses, n)
	}
	if resp := check(http.DefaultClient, serviceKey); resp.StatusCode != 200 {
		t.Errorf("the valid key from the limited address: %d, want 200", resp.StatusCode)
	}
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	if resp := check(other, "qk_another-guess"); resp.StatusCode != 401 {
		t.Errorf("a bad key from another address: %d, want 401", resp.StatusCode)
	}
}

// metricValue reads one unlabelled counter or gauge from /metrics.
func metricValue(tb testing.TB, q *quotad, name string) float64 {
	tb.Helper()
	_, _, page := q.do(tb, "GET", "/metrics", "", "", nil)
	for _, l := range strings.Split(string(page), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				tb.Fatalf("%s: %v", l, err)
			}
			return f
		}
	}
	tb.Fatalf("no %s in /metrics", name)
	return 0
}

// TestSmallerHardening: the smaller findings of the hardening review,
// each through the real binary.
func TestSmallerHardening(t *testing.T) {
	pg := testenv.StartPostgres(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg.URL(), "QUOTAD_OPS_AUTH=admin")
	_, minted := q.call(t, "POST", "/v1/keys", `{"scope":"service"}`)
	serviceKey := minted["key"].(string)
	problemOf := func(b []byte) (p struct{ Field, Detail string }) {
		t.Helper()
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		return p
	}

	t.Run("check amount 0 and -0 are refused like the error says", func(t *testing.T) {
		for _, ct := range []string{"application/json", "application/json; charset=utf-8"} { // the fast path, the strict one
			for _, amount := range []string{"0", "-0"} {
				status, _, b := q.do(t, "POST", "/v1/check", serviceKey, ct, strings.NewReader(`{"subject":"user:z","amount":`+amount+`}`))
				if p := problemOf(b); status != 400 || p.Field != "amount" || !strings.Contains(p.Detail, "between 1 and") {
					t.Errorf("%s amount %s: %d %s, want 400 on amount", ct, amount, status, b)
				}
			}
		}
		if status, _, b := q.do(t, "POST", "/v1/check", serviceKey, "application/json", strings.NewReader(`{"subject":"user:z"}`)); status != 200 {
			t.Errorf("no amount: %d %s", status, b)
		}
	})

	t.Run("a field given twice is refused, naming it", func(t *testing.T) {
		for _, tt := range []struct{ method, path, body, field string }{
			{"POST", "/v1/check", `{"subject":"user:a","subject":"user:b"}`, "subject"},
			{"POST", "/v1/consume", `{"subject":"user:a","amount":1,"amount":2}`, "amount"},
			{"POST", "/v1/consume", `{"subject":"user:a","usage":{"model":"gpt-4o","input_tokens":1,"input_tokens":9}}`, "usage.input_tokens"},
			{"PUT", "/v1/plans/twice", `{"limits":{"credits":{"limit":1,"period":"day","limit":2}}}`, "limits.credits.limit"},
		} {
			status, _, b := q.do(t, tt.method, tt.path, adminKey, "application/json", strings.NewReader(tt.body))
			if p := problemOf(b); status != 400 || p.Field != tt.field {
				t.Errorf("%s: %d %s, want 400 on %s", tt.body, status, b, tt.field)
			}
		}
	})

	t.Run("error fields are paths, details have no Go", func(t *testing.T) {
		for _, tt := range []struct{ method, path, body, field string }{
			{"PUT", "/v1/subjects/user:f", `{"cycle_anchor":"next tuesday"}`, "cycle_anchor"},
			{"POST", "/v1/consume", `{"subject":"user:f","usage":{"model":"gpt-4o","foo":1}}`, "usage.foo"},
			{"PUT", "/v1/plans/f", `{"limits":{"credits":{"limit":"many","period":"day"}}}`, "limits.credits.limit"},
			{"PUT", "/v1/pricing/f", `{"input":1e308,"output":1,"cache_write":0,"cache_read":0}`, "input"},
		} {
			status, _, b := q.do(t, tt.method, tt.path, adminKey, "application/json", strings.NewReader(tt.body))
			if p := problemOf(b); status != 400 || p.Field != tt.field || strings.Contains(p.Detail, "2006") {
				t.Errorf("%s: %d %s, want 400 on %s", tt.body, status, b, tt.field)
			}
		}
	})

	t.Run("lower-case bearer", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+q.addr+"/v1/plans", nil)
		req.Header.Set("Authorization", "bearer "+serviceKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("bearer in lower case: %d", resp.StatusCode)
		}
	})

	t.Run("HEAD answers like GET, without a body", func(t *testing.T) {
		for _, path := range []string{"/healthz", "/v1/plans", "/v1/plans/free", "/v1/subjects/user:h", "/openapi.json"} {
			req, _ := http.NewRequest("HEAD", "http://"+q.addr+path, nil)
			req.Header.Set("Authorization", "Bearer "+serviceKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(b) != 0 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Errorf("HEAD %s: %d %q %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
			}
		}
	})

	t.Run("metrics and readyz need the key QUOTAD_OPS_AUTH names", func(t *testing.T) {
		for _, path := range []string{"/metrics", "/readyz"} {
			if status, _, _ := q.do(t, "GET", path, "", "", nil); status != 401 {
				t.Errorf("%s without a key: %d, want 401", path, status)
			}
			if status, _, _ := q.do(t, "GET", path, serviceKey, "", nil); status != 403 {
				t.Errorf("%s with a service key: %d, want 403", path, status)
			}
			if status, _, _ := q.do(t, "GET", path, adminKey, "", nil); status != 200 {
				t.Errorf("%s with the admin key: %d, want 200", path, status)
			}
		}
		if status, _, _ := q.do(t, "GET", "/healthz", "", "", nil); status != 200 {
			t.Errorf("/healthz without a key: %d, want 200", status)
		}
	})

	t.Run("a client that leaves mid-request is no 500 and no error", func(t *testing.T) {
		pg.Pause(t) // the key listing waits for Postgres
		client := &http.Client{Timeout: 300 * time.Millisecond}
		req, _ := http.NewRequest("GET", "http://"+q.addr+"/v1/keys", nil)
		req.Header.Set("Authorization", "Bearer "+adminKey)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("answered %d while Postgres is frozen", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
		pg.Resume(t)
		var page []byte
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if _, _, page = q.do(t, "GET", "/metrics", adminKey, "", nil); strings.Contains(string(page), `route="/v1/keys"`) {
				break
			}
		}
		lines := metricLines(page, `quotad_http_requests_total{code="`)
		if !strings.Contains(lines, `code="499",method="GET",route="/v1/keys"`) || strings.Contains(lines, `code="500"`) {
			t.Errorf("requests: %s; want the GET /v1/keys counted as 499, none as 500", lines)
		}
		if strings.Contains(q.out.String(), `"level":"ERROR"`) {
			t.Errorf("logged an error:\n%s", q.out)
		}
	})
}
