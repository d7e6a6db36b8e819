// Package quotadtest runs the real quotad binary for the tests of its
// callers (package client, the examples), so that what they claim about
// quotad is checked against quotad itself, never a stand-in.
//
// The binary is built once per test binary (go build of ./cmd/quotad, on
// first use; QUOTADTEST_BIN names a prebuilt one instead) and each server
// gets a fresh Postgres database and Redis keyspace of its own from
// testenv, on a free port. It is for tests only; a test package that uses
// it calls Main from TestMain:
//
//	func TestMain(m *testing.M) { quotadtest.Main(m) }
package quotadtest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

// AdminKey is the admin key every Server is started with.
const AdminKey = "quotadtest-admin-key"

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Main runs the tests, then stops the servers testenv started and removes
// the built binary.
func Main(m *testing.M) {
	testenv.Main(m)
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

// binary returns the quotad binary: QUOTADTEST_BIN when set (a binary
// built elsewhere, e.g. from a clean checkout while the working tree is
// mid-edit), else one built from this module.
func binary(tb testing.TB) string {
	tb.Helper()
	if bin := os.Getenv("QUOTADTEST_BIN"); bin != "" {
		return bin
	}
	build.once.Do(func() {
		build.dir, build.err = os.MkdirTemp("", "quotadtest-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "quotad")
		out, err := exec.Command("go", "build", "-o", build.bin, "github.com/quotad/quotad/cmd/quotad").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("build quotad: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.bin
}

// Server is a running quotad.
type Server struct {
	// URL is its base URL, "http://127.0.0.1:<port>".
	URL string
	// Addr is its listen address, "127.0.0.1:<port>".
	Addr string

	env    []string
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process was waited for
	out    *output
}

// Start starts quotad on a free port with an empty database and Redis
// keyspace of its own, the admin key AdminKey and env added to its
// environment ("QUOTAD_FAIL_MODE=open", ...), and waits until it is ready.
// It is stopped with SIGTERM at cleanup, and must exit cleanly.
func Start(tb testing.TB, env ...string) *Server {
	tb.Helper()
	bin := binary(tb)
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(tb))}
	s.URL = "http://" + s.Addr
	s.env = append([]string{
		"QUOTAD_ADDR=" + s.Addr,
		"QUOTAD_ADMIN_KEY=" + AdminKey,
		"QUOTAD_DEV=1", // AdminKey is well-known
		"QUOTAD_LOG_LEVEL=warn",
		"QUOTAD_POSTGRES_URL=" + testenv.PostgresURL(tb),
		"QUOTAD_REDIS_URL=" + testenv.RedisURL(tb),
	}, env...)
	s.start(tb, bin)
	tb.Cleanup(func() { s.Stop(tb) })
	return s
}

func (s *Server) start(tb testing.TB, bin string) {
	tb.Helper()
	s.out = new(output)
	s.cmd = exec.Command(bin, "serve")
	s.cmd.Env = append(os.Environ(), s.env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// Never outlive the test binary, even when it is killed. (The kernel
	// ties this to the forking thread, which the Go runtime only ends
	// when a goroutine exits locked to it; nothing in these tests does.)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = s.cmd.Wait()
		close(exited)
	}()
	s.exited = exited
	deadline := time.Now().Add(30 * time.Second)
	for {
		if ready(s.URL) {
			return
		}
		select {
		case <-exited:
			tb.Fatalf("quotad exited at start:\n%s", s.out)
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("quotad was not ready after 30s:\n%s", s.out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready reports whether /readyz says every store is up: a quotad that
// found Redis slow at start serves from Postgres until its probe
// succeeds, and tests start from the normal state.
func ready(base string) bool {
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return bytes.Contains(b, []byte(`"status":"ok"`))
}

// Stop stops quotad with SIGTERM and fails the test unless it exits
// cleanly within 30 s. Stopping twice is a no-op.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		if st := s.cmd.ProcessState; st != nil && !st.Success() {
			tb.Errorf("quotad exited with %v\n%s", st, s.out)
		}
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		tb.Errorf("quotad did not stop on SIGTERM\n%s", s.out)
	}
	s.cmd = nil
}

// Logs returns what quotad printed so far.
func (s *Server) Logs() string { return s.out.String() }

// output collects the process's output; locked because a test may print
// it while the process still writes.
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
