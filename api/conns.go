package api

// Connections and their time limits. quotad must keep answering /healthz
// and its callers while clients it cannot trust open connections and
// send slowly. Three rules do it:
//
//   - A request is authenticated from its headers, before its body is
//     read, and an answer given before the body was read closes the
//     connection: at once (Connection: close), after net/http has read
//     what comes of the body for at most a second (an honest client that
//     sent a body nobody reads then reads its answer; a slow one is cut
//     off).
//   - Time limits: the headers must arrive within the read timeout
//     (http.Server.ReadHeaderTimeout), then the body within the read
//     timeout again, and the answer must be written within the write
//     timeout of the headers' arrival (per request, through
//     http.ResponseController, so that the events streams can extend
//     theirs write by write; see sseWriter).
//   - At most MaxConns connections are open (one more while a newcomer
//     waits for room). A newcomer at the cap closes another, the first
//     found of: the oldest that has begun its request's headers without
//     ending them (a slow sender), one being closed after an answer that
//     left its body unread, the oldest that has sent nothing for a grace
//     time, the one idle longest since its last answer if for the grace
//     time too. Until one of these exists the newcomer waits unserved
//     and quotad accepts no other: the next ones wait in the kernel's
//     listen queue, in their order. A connection whose headers have all
//     arrived, or that is inside a handler (authenticated work, an events
//     stream, /healthz) is never closed for a newcomer. So a flood of
//     slow clients costs each of them its place as soon as someone else
//     arrives, a client that sends its request at once is served (quotad
//     reads it well within the grace time, even when the flood keeps it
//     busy), and one that keeps its connection busy keeps it.

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// connGuard caps and orders the open connections (see above).
type connGuard struct {
	max int

	mu      sync.Mutex
	open    int
	partial list.List // *guardedConn with headers begun and not ended, oldest first
	closing list.List // *guardedConn answered with their body unread, closing soon
	fresh   list.List // *guardedConn that sent nothing yet, oldest first
	idle    list.List // *guardedConn between requests, longest idle first

	// wake is signalled when a connection may have become closable,
	// or closed, for a newcomer waiting for room.
	wake chan struct{}
	done chan struct{} // closed with the listener: stop waiting

	gauge          prometheus.Gauge
	evicted, waits prometheus.Counter
}

func newConnGuard(max int, reg *prometheus.Registry) *connGuard {
	g := &connGuard{
		max:  max,
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "quotad_http_connections", Help: "Open client connections (at most QUOTAD_MAX_CONNS).",
		}),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quotad_http_connections_evicted_total", Help: "Connections closed at the cap to make room for a new one (slow or idle ones).",
		}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "quotad_http_connections_waits_total", Help: "New connections that waited at the cap for one to become closable.",
		}),
	}
	reg.MustRegister(g.gauge, g.evicted, g.waits)
	return g
}

// guardedConn is a connection the guard counts. elem, list and closed
// are the guard's, under its lock; watching says (without the lock)
// whether the connection is in one of its lists, i.e. waiting for a
// request's headers; tail is its reader's own.
type guardedConn struct {
	net.Conn
	g        *connGuard
	since    time.Time // when it was accepted, or its last answer ended
	elem     *list.Element
	list     *list.List // nil: being served
	closed   bool
	watching atomic.Bool
	tail     [3]byte // the last bytes read, to find "\r\n\r\n" across reads
}

// admit counts c in. At the cap it closes another connection first,
// waiting until one may be closed; it answers false (c closed) when the
// listener closed meanwhile.
func (g *connGuard) admit(c net.Conn) (*guardedConn, bool) {
	gc := &guardedConn{Conn: c, g: g, since: time.Now()}
	waited := false
	g.mu.Lock()
	for g.open >= g.max {
		if victim := g.closable(time.Now()); victim != nil {
			g.forget(victim)
			g.evicted.Inc()
			_ = victim.Conn.Close()
			break
		}
		g.mu.Unlock()
		if !waited {
			waited = true
			g.waits.Inc()
		}
		select {
		case <-g.done:
			_ = c.Close()
			return nil, false
		case <-g.wake:
		case <-time.After(10 * time.Millisecond): // grace times run out
		}
		g.mu.Lock()
	}
	g.open++
	g.move(gc, &g.fresh)
	g.gauge.Set(float64(g.open))
	g.mu.Unlock()
	return gc, true
}

// closable picks the connection a newcomer may close, or nil; the caller
// holds the lock.
func (g *connGuard) closable(now time.Time) *guardedConn {
	if e := g.partial.Front(); e != nil {
		return e.Value.(*guardedConn)
	}
	if e := g.closing.Front(); e != nil {
		return e.Value.(*guardedConn)
	}
	for _, l := range []*list.List{&g.fresh, &g.idle} {
		if e := l.Front(); e != nil && now.Sub(e.Value.(*guardedConn).since) >= grace {
			return e.Value.(*guardedConn)
		}
	}
	return nil
}

// signal wakes a newcomer waiting for room.
func (g *connGuard) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// move puts gc at the back of to (nil: out of the lists, being served);
// the caller holds the lock.
func (g *connGuard) move(gc *guardedConn, to *list.List) {
	if gc.list != nil {
		gc.list.Remove(gc.elem)
	}
	gc.list, gc.elem = to, nil
	if to != nil {
		gc.elem = to.PushBack(gc)
	}
	gc.watching.Store(to != nil)
	if to == &g.partial || to == &g.closing {
		g.signal()
	}
}

// forget stops counting gc; the caller holds the lock.
func (g *connGuard) forget(gc *guardedConn) {
	if gc.closed {
		return
	}
	gc.closed = true
	g.move(gc, nil)
	g.open--
	g.gauge.Set(float64(g.open))
	g.signal()
}

// begin marks gc as being served: the cap does not close it.
func (g *connGuard) begin(gc *guardedConn) {
	g.mu.Lock()
	if !gc.closed {
		g.move(gc, nil)
	}
	g.mu.Unlock()
}

// end marks gc as between requests again, or as closing.
func (g *connGuard) end(gc *guardedConn, closing bool) {
	gc.tail = [3]byte{}
	to := &g.idle
	if closing {
		to = &g.closing
	}
	g.mu.Lock()
	if !gc.closed {
		gc.since = time.Now()
		g.move(gc, to)
	}
	g.mu.Unlock()
}

// Read watches the bytes of a request's headers go by: once they have
// ended the connection is being served; until then, having begun them
// makes it the first to close at the cap.
func (gc *guardedConn) Read(p []byte) (int, error) {
	n, err := gc.Conn.Read(p)
	if n > 0 && gc.watching.Load() {
		to := &gc.g.partial
		if gc.headersEnd(p[:n]) {
			to = nil
		}
		gc.g.mu.Lock()
		if !gc.closed && gc.list != nil && gc.list != to {
			gc.g.move(gc, to)
		}
		gc.g.mu.Unlock()
	}
	return n, err
}

// headersEnd reports whether "\r\n\r\n" ends in b or across the bytes
// read before it, and keeps b's last bytes for the next read.
func (gc *guardedConn) headersEnd(b []byte) bool {
	var edge [6]byte
	copy(edge[:3], gc.tail[:])
	k := copy(edge[3:], b)
	found := bytes.Contains(edge[:3+k], crlfcrlf) || bytes.Contains(b, crlfcrlf)
	if len(b) >= 3 {
		copy(gc.tail[:], b[len(b)-3:])
	} else {
		copy(gc.tail[:], edge[k:k+3])
	}
	return found
}

var crlfcrlf = []byte("\r\n\r\n")

// connState is the http.Server's ConnState hook: a closed or hijacked
// connection is no longer counted.
func (g *connGuard) connState(c net.Conn, state http.ConnState) {
	if gc, ok := c.(*guardedConn); ok && (state == http.StateClosed || state == http.StateHijacked) {
		g.mu.Lock()
		g.forget(gc)
		g.mu.Unlock()
	}
}

// grace is how long a connection that has sent nothing yet, or has been
// idle since its last answer, is safe from newcomers: long enough for
// quotad to read a request sent at once, and for a client to send its
// next one; short enough that silent connections cannot keep it.
const grace = 250 * time.Millisecond

type guardListener struct {
	net.Listener
	g     *connGuard
	close *sync.Once
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	gc, ok := l.g.admit(c)
	if !ok {
		return nil, net.ErrClosed
	}
	return gc, nil
}

func (l guardListener) Close() error {
	l.close.Do(func() { close(l.g.done) })
	return l.Listener.Close()
}

// serverErrorHeaders is how net/http writes the answers it gives before a
// handler runs (a malformed request line or header, headers too large):
// "HTTP/1.1 <status>[: <reason>]" + these + a text/plain body, in one
// Write to the connection.
var serverErrorHeaders = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

// Write rewrites net/http's own error answers as problem+json, like
// every other answer; everything else passes unchanged. Handlers' answers
// never match: they carry a Date header after the status line.
func (gc *guardedConn) Write(p []byte) (int, error) {
	if len(p) < 13 || p[0] != 'H' || !bytes.HasPrefix(p, []byte("HTTP/1.1 ")) {
		return gc.Conn.Write(p)
	}
	end := bytes.IndexByte(p, '\r')
	if end < 0 || !bytes.HasPrefix(p[end:], serverErrorHeaders) {
		return gc.Conn.Write(p)
	}
	line := string(p[len("HTTP/1.1 "):end])
	code, err := strconv.Atoi(line[:3])
	if err != nil {
		return gc.Conn.Write(p)
	}
	detail := "the request line or a header is malformed"
	if _, reason, ok := strings.Cut(line, ": "); ok {
		detail = reason
	} else if body := p[end+len(serverErrorHeaders):]; code != http.StatusBadRequest && len(body) > 0 {
		detail = string(body)
	}
	b, _ := json.Marshal(Problem{Type: "about:blank", Title: http.StatusText(code), Status: code, Detail: detail})
	out := []byte("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) +
		"\r\nContent-Type: application/problem+json\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(b)) + "\r\n\r\n")
	if _, err := gc.Conn.Write(append(out, b...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

type connKey struct{}

// HTTPServer returns the http.Server that serves s with the limits of its
// Config, and ln wrapped so that it keeps to MaxConns.
func (s *Server) HTTPServer(ln net.Listener) (*http.Server, net.Listener) {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.limits.ReadTimeout,
		IdleTimeout:       2 * time.Minute,
	}
	if s.conns != nil {
		srv.ConnState = s.conns.connState
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		}
		ln = guardListener{Listener: ln, g: s.conns, close: new(sync.Once)}
	}
	return srv, ln
}

// guard runs first for every request: it tells the connection guard the
// request reached a handler, and sets the request's time limits.
func (s *Server) guard(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if gc, ok := r.Context().Value(connKey{}).(*guardedConn); ok {
			s.conns.begin(gc)
			// handleError asks for the close of a connection whose body
			// it left unread.
			defer func() { s.conns.end(gc, c.Response().Header().Get("Connection") == "close") }()
		}
		var rc *http.ResponseController
		if s.limits.WriteTimeout > 0 || s.limits.ReadTimeout > 0 {
			rc = http.NewResponseController(c.Response())
		}
		now := time.Now()
		if s.limits.WriteTimeout > 0 {
			_ = rc.SetWriteDeadline(now.Add(s.limits.WriteTimeout))
		}
		if r.Body != nil && r.Body != http.NoBody {
			b := &trackedBody{body: r.Body}
			// Only a request with a body: without one, net/http already
			// waits for the next request with a read of its own, which a
			// deadline would end (and with it the request's context).
			if s.limits.ReadTimeout > 0 {
				b.rc, b.deadline = rc, now.Add(s.limits.ReadTimeout)
				_ = rc.SetReadDeadline(b.deadline)
			}
			r.Body = b
		}
		if s.limits.WriteTimeout > 0 && !strings.HasSuffix(c.Path(), "/events") {
			// The work stops a little before its answer could no longer
			// be written: a hung store (Postgres frozen, not down) answers
			// 503 instead of holding the request for good. Events streams
			// are long by design and bound each write instead.
			ctx, cancel := context.WithTimeout(r.Context(), s.limits.WriteTimeout*9/10)
			defer cancel()
			c.SetRequest(r.WithContext(ctx))
		}
		return next(c)
	}
}

// trackedBody knows whether the body was read to its end, and then lifts
// its read deadline: net/http reads on, to notice the client leaving, and
// a deadline passing there would cancel the request's context.
type trackedBody struct {
	body     io.ReadCloser
	rc       *http.ResponseController // nil: no deadline to lift
	deadline time.Time
	done     bool // read to io.EOF
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if err == io.EOF && !b.done {
		b.done = true
		if b.rc != nil {
			_ = b.rc.SetReadDeadline(time.Time{})
		}
	}
	return n, err
}

func (b *trackedBody) Close() error { return b.body.Close() }

// bodyLinger is how long net/http may go on reading a body its handler
// answered without reading, before it closes the connection: enough for
// an honest client to finish sending (it reads the answer after), not
// for a slow one to hold the connection.
const bodyLinger = time.Second

// unreadBody reports whether r has a body that was not read to its end.
// Answering such a request must close the connection (Connection: close),
// or net/http would read the rest of the body before answering; linger
// then bounds how long it reads before closing.
func unreadBody(r *http.Request) (linger func(), unread bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, false
	}
	b, ok := r.Body.(*trackedBody)
	if !ok {
		return func() {}, true
	}
	return func() {
		if t := time.Now().Add(bodyLinger); b.rc != nil && t.Before(b.deadline) {
			_ = b.rc.SetReadDeadline(t)
		}
	}, !b.done
}

// isTimeout reports whether err is a read that ran into its deadline.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
