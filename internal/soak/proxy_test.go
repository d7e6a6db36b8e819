package soak

import (
	"bufio"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T, target string) *Proxy {
	t.Helper()
	p, err := NewProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// roundTrip sends a line and waits up to timeout for its echo.
func roundTrip(c net.Conn, r *bufio.Reader, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	_ = c.SetDeadline(start.Add(timeout))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		return 0, errors.New("bad echo " + line)
	}
	return time.Since(start), nil
}

func TestProxy(t *testing.T) {
	p := newProxy(t, echoServer(t))
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := roundTrip(c, r, time.Second); err != nil {
		t.Fatalf("forward: %v", err)
	}

	t.Run("latency", func(t *testing.T) {
		p.SetLatency(100 * time.Millisecond)
		defer p.SetLatency(0)
		d, err := roundTrip(c, r, 2*time.Second)
		if err != nil || d < 200*time.Millisecond { // both directions
			t.Fatalf("round trip %v, %v; want >= 200ms", d, err)
		}
	})

	t.Run("blackhole then deliver", func(t *testing.T) {
		p.Blackhole()
		if _, err := roundTrip(c, r, 200*time.Millisecond); err == nil {
			t.Fatal("an answer came through a blackhole")
		}
		p.Heal(false)
		// The request sent during the blackhole arrives late, then the
		// echo of the next one.
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("held data: %q %v", line, err)
		}
		if _, err := roundTrip(c, r, time.Second); err != nil {
			t.Fatalf("after heal: %v", err)
		}
	})

	t.Run("blackhole then reset", func(t *testing.T) {
		c2, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		p.Blackhole()
		// New connections are accepted, and stay silent.
		c3, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatalf("dial during blackhole: %v", err)
		}
		defer c3.Close()
		if _, err := roundTrip(c3, bufio.NewReader(c3), 200*time.Millisecond); err == nil {
			t.Fatal("an answer came through a blackhole")
		}
		p.Heal(true)
		_ = c2.SetDeadline(time.Now().Add(time.Second))
		if _, err := c2.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after reset: %v, want ECONNRESET", err)
		}
	})

	t.Run("target down", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		down := newProxy(t, addr)
		c, err := net.Dial("tcp", down.Addr())
		if err != nil {
			return // reset before the dial returned: no answer either
		}
		defer c.Close()
		if _, err := roundTrip(c, bufio.NewReader(c), time.Second); err == nil {
			t.Fatal("an answer from a target that is down")
		}
	})
}
