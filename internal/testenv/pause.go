package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Pausing a server freezes it without closing anything: its sockets stay
// open and the kernel keeps accepting connections into the listen backlog,
// but nothing is answered. To a client that is a hung server, not a down
// one: the case that only client-side deadlines and server-side timeouts
// protect against.
//
// The signal goes to the server and all its descendants: Postgres does its
// work in backend processes forked by the postmaster, so stopping the
// postmaster alone would leave every open session answering. Not to its
// process group: each backend makes itself a group leader (setsid). The
// parent is signalled first, so that once it is stopped it forks no child
// the walk of /proc could miss.

// signalGroup sends sig to p and every process descended from it.
func (p *process) signalGroup(sig syscall.Signal) error {
	if p == nil || p.exited() {
		return fmt.Errorf("not running")
	}
	return signalTree(p.cmd.Process.Pid, sig)
}

func signalTree(pid int, sig syscall.Signal) error {
	if err := syscall.Kill(pid, sig); err != nil {
		return err
	}
	for _, child := range children(pid) {
		_ = signalTree(child, sig) // a child may exit meanwhile
	}
	return nil
}

// children lists the processes whose parent is pid, from /proc.
func children(pid int) []int {
	dirs, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range dirs {
		n, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		// The parent is the second field after the command, which is in
		// parentheses and may hold spaces.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// pauseUntilCleanup stops p's group and makes sure it is continued by the
// test's cleanup if the test does not resume it: a stopped server would
// otherwise hold its Stop (SIGTERM is not acted on while stopped) for the
// whole stop timeout, and stopped Postgres backends would outlive the test.
// Cleanups run last-registered first, so this one runs before the server's
// own shutdown.
func pauseUntilCleanup(tb testing.TB, p *process) error {
	if err := p.signalGroup(syscall.SIGSTOP); err != nil {
		return err
	}
	tb.Cleanup(func() { _ = p.signalGroup(syscall.SIGCONT) })
	return nil
}

// Pause freezes the server with SIGSTOP (see Resume).
func (r *Redis) Pause(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := pauseUntilCleanup(tb, r.proc); err != nil {
		tb.Fatalf("testenv: pause redis-server on port %d: %v", r.port, err)
	}
}

// Resume continues a server frozen by Pause.
func (r *Redis) Resume(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.proc.signalGroup(syscall.SIGCONT); err != nil {
		tb.Fatalf("testenv: resume redis-server on port %d: %v", r.port, err)
	}
}

// Pause freezes the postmaster and every backend with SIGSTOP (see Resume).
func (p *Postgres) Pause(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := pauseUntilCleanup(tb, p.proc); err != nil {
		tb.Fatalf("testenv: pause postgres on port %d: %v", p.port, err)
	}
}

// Resume continues a server frozen by Pause.
func (p *Postgres) Resume(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.proc.signalGroup(syscall.SIGCONT); err != nil {
		tb.Fatalf("testenv: resume postgres on port %d: %v", p.port, err)
	}
}
