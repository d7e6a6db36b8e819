// Package soak is quotad's fault-injection soak: several real quotad
// processes on one Redis and one Postgres, clients that retry until they
// get a definite answer, and faults drawn at random (processes killed,
// stores stopped, paused and cut off) while it runs; at the end, every
// acknowledged unit must be counted exactly once, in the API, in
// Postgres's counters and in the ledger. The harness is TestSoak
// (soak_test.go), run by `make soak`; see the README's "Soak" section.
//
// This file is the TCP proxy that sits between each quotad and each store,
// so that the soak can break the network between them: added latency,
// every connection reset, and a half-open period where nothing is
// forwarded and nothing is closed.
package soak

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections from its listener to a target address.
//
// Data read from one side is held while the proxy is blackholed (Blackhole)
// and delayed by the current latency (SetLatency) before it is written to
// the other side; each direction of a connection is one goroutine, so a
// delay or a hold never reorders the bytes of a stream.
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	links   map[*link]struct{}
	gate    chan struct{} // closed while forwarding; open (blocking) while blackholed
	latency time.Duration
	closed  bool

	// Accepted and Resets count connections accepted and connections
	// reset by ResetAll or by Heal(true).
	Accepted, Resets atomic.Int64
}

// link is one proxied connection.
type link struct {
	client, server net.Conn
	once           sync.Once
	done           chan struct{}
	halfClosed     atomic.Int32 // directions whose source ended its stream
}

// NewProxy listens on a free loopback port and forwards to target.
func NewProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	open := make(chan struct{})
	close(open)
	p := &Proxy{ln: ln, target: target, links: map[*link]struct{}{}, gate: open}
	go p.accept()
	return p, nil
}

// Addr is the proxy's listen address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every chunk of data, in each direction, by d (0: none).
func (p *Proxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	p.latency = d
	p.mu.Unlock()
}

// Blackhole stops forwarding without closing anything: connections stay
// open, new ones are accepted, and what either side sends is held. It is
// a network partition as TCP sees one before its timeouts.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default: // already blackholed
	}
}

// Heal ends a blackhole. With reset false the held data goes through, late,
// as TCP would deliver it once a partition ends (a request a client gave up
// on can still reach the store); with reset true every connection open
// now is reset instead, as when the partition outlasted a keepalive.
func (p *Proxy) Heal(reset bool) {
	if reset {
		p.ResetAll()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// ResetAll resets every open connection (RST to both sides).
func (p *Proxy) ResetAll() {
	p.mu.Lock()
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.mu.Unlock()
	for _, l := range links {
		l.reset()
		p.Resets.Add(1)
	}
}

// Close stops the listener and resets every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Heal(true)
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		p.Accepted.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		// The target is down: the closest a proxy that already accepted
		// can come to "connection refused".
		rst(client)
		return
	}
	l := &link{client: client, server: server, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.reset()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	go p.pump(l, server, client)
	p.pump(l, client, server)
	<-l.done
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// pump copies src to dst through the gate and the latency, until either
// side fails (then it ends the whole link) or src ends its stream (then
// the end is passed on, and the other direction finishes the link: a
// client that sent its last request still gets the answer).
func (p *Proxy) pump(l *link, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			gate, latency := p.gate, p.latency
			p.mu.Unlock()
			select {
			case <-gate:
			case <-l.done:
				return
			}
			if latency > 0 {
				t := time.NewTimer(latency)
				select {
				case <-t.C:
				case <-l.done:
					t.Stop()
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				l.close()
				return
			}
		}
		if err != nil {
			if err == io.EOF && l.halfClosed.Add(1) == 1 {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
					return
				}
			}
			l.close()
			return
		}
	}
}

func (l *link) close() {
	l.once.Do(func() {
		l.client.Close()
		l.server.Close()
		close(l.done)
	})
}

func (l *link) reset() {
	l.once.Do(func() {
		rst(l.client)
		rst(l.server)
		close(l.done)
	})
}

// rst closes c with an RST instead of a FIN (SO_LINGER 0).
func rst(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
