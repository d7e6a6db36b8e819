package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// Feed is the live change feed as the events routes need it; cmd/quotad
// adapts cache.Feed to it.
type Feed interface {
	// Subscribe starts a subscription to subject's changes ("" for every
	// subject), after the change lastEventID when that can be replayed.
	// Errors wrap quota.ErrUnavailable when the feed cannot serve.
	Subscribe(ctx context.Context, subject, lastEventID string) (Subscription, error)
}

// Subscription is one stream's view of the feed.
type Subscription interface {
	// Replayed reports whether every change after lastEventID will be
	// delivered; if not, the stream starts with a snapshot.
	Replayed() bool
	// Ready is signalled when Next may have events.
	Ready() <-chan struct{}
	// Done is closed when the subscription ends (cut off, or the server
	// is shutting down); events queued before stay readable.
	Done() <-chan struct{}
	// Next returns the next event, if one is waiting.
	Next() (Event, bool)
	Close()
}

// Event is what a subscription delivers.
type Event struct {
	ID      string // the SSE id; "" for none
	Type    string // the SSE event name: a quota.Change type
	Subject string
	Data    []byte // the quota.Change as JSON
	// Missed: changes before this one may not have been delivered; the
	// stream sends a fresh snapshot.
	Missed bool
	// Overflow: the subscriber fell too far behind; the stream ends.
	Overflow bool
}

// eventStream marks a route that answers text/event-stream in the route
// table, for the OpenAPI document.
type eventStream struct{}

// SSE timing: a heartbeat keeps proxies and clients from taking a quiet
// stream for a dead one; a write that cannot finish within eventsWriteWait
// (a client that stopped reading) ends the stream.
const (
	defaultHeartbeat = 15 * time.Second
	eventsWriteWait  = 10 * time.Second
)

func (s *Server) eventRoutes() []route {
	return []route{
		{"GET", "/v1/subjects/:subject/events", ScopeService, "A subject's changes as Server-Sent Events", nil, eventStream{}, 200, s.subjectEvents},
		{"GET", "/v1/events", ScopeAdmin, "Every subject's changes as Server-Sent Events", nil, eventStream{}, 200, s.allEvents},
	}
}

func (s *Server) subjectEvents(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	if _, err := quota.ParseSubject(id); err != nil {
		return err
	}
	return s.stream(c, id)
}

func (s *Server) allEvents(c echo.Context) error { return s.stream(c, "") }

// overflowData and gapData are the data of the overflow and gap events.
var (
	overflowData = []byte(`{"detail":"this stream fell too far behind and was closed; reconnect with Last-Event-ID"}`)
	gapData      = []byte(`{"detail":"changes may have been missed since the last event; reread the subjects shown"}`)
	helloData    = []byte(`{"subject":"*"}`)
)

// stream serves subject's changes ("" for every subject) as Server-Sent
// Events: a "snapshot" first (the subject's view; "hello" for every
// subject) unless the changes after Last-Event-ID can be replayed, then
// each change as it comes (the event named for its type, its id the
// change's place in the global order), a fresh "snapshot" ("gap" for
// every subject) when changes were missed, ": ping" comments while quiet,
// and an "overflow" event before closing a stream that fell behind.
func (s *Server) stream(c echo.Context, subject string) error {
	if s.events.feed == nil {
		return problem(http.StatusServiceUnavailable, "the events stream needs Redis, which these tiers do not run")
	}
	req := c.Request()
	ctx := req.Context()
	last := req.Header.Get("Last-Event-ID")
	if last == "" {
		// EventSource cannot set headers on its first connection.
		last = c.QueryParam("last_event_id")
	}
	sub, err := s.events.feed.Subscribe(ctx, subject, last)
	if err != nil {
		if ctx.Err() != nil {
			return nil // the client left
		}
		return err
	}
	defer sub.Close()
	var snapshot []byte
	if !sub.Replayed() {
		if snapshot, err = s.snapshot(ctx, subject); err != nil {
			return err
		}
	}

	w := c.Response()
	h := w.Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	out := &sseWriter{w: w, rc: http.NewResponseController(w)}
	if snapshot != nil {
		out.event("", snapshotEvent(subject), snapshot)
	}
	if err := out.flush(); err != nil {
		return nil
	}

	beat := time.NewTicker(s.events.heartbeat)
	defer beat.Stop()
	for {
		n, end := s.drain(ctx, out, sub, subject)
		if err := out.flush(); err != nil || end {
			return nil
		}
		if n == drainMax {
			continue // more may be waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-sub.Ready():
		case <-sub.Done():
			// What was queued before the end goes out (an Overflow
			// event last, if that was why).
			for {
				n, end := s.drain(ctx, out, sub, subject)
				if err := out.flush(); err != nil || end || n < drainMax {
					return nil
				}
			}
		case <-beat.C:
			out.buf = append(out.buf, ": ping\n\n"...)
		}
	}
}

// drainMax bounds the events written in one write, so that a busy
// stream is flushed as it goes.
const drainMax = 256

// drain buffers the events waiting in sub, up to drainMax, and returns
// how many it took and whether the stream must end (it was cut off, or a
// snapshot could not be read).
func (s *Server) drain(ctx context.Context, out *sseWriter, sub Subscription, subject string) (n int, end bool) {
	for ; n < drainMax; n++ {
		ev, ok := sub.Next()
		switch {
		case !ok:
			return n, false
		case ev.Overflow:
			out.event("", "overflow", overflowData)
			return n + 1, true
		case ev.Missed && subject == "":
			out.event(ev.ID, "gap", gapData)
		case ev.Missed:
			data, err := s.snapshot(ctx, subject)
			if err != nil {
				return n, true // the answer has begun: the client reconnects
			}
			out.event(ev.ID, "snapshot", data)
		default:
			out.event(ev.ID, ev.Type, ev.Data)
		}
	}
	return n, false
}

// snapshotEvent is the name of the event a stream starts with when it
// does not replay.
func snapshotEvent(subject string) string {
	if subject == "" {
		return "hello"
	}
	return "snapshot"
}

// snapshot returns the subject's view as JSON; for every subject, the
// hello event's data.
func (s *Server) snapshot(ctx context.Context, subject string) ([]byte, error) {
	if subject == "" {
		return helloData, nil
	}
	v, err := s.svc.Subject(ctx, subject)
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// sseWriter buffers events and writes them with one deadline per write,
// so that the server's WriteTimeout (set for ordinary answers) does not
// end a long-lived stream, while a client that stopped reading does.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

// event appends one event; data holds no newline (it is compact JSON).
func (o *sseWriter) event(id, name string, data []byte) {
	if id != "" {
		o.buf = append(o.buf, "id: "...)
		o.buf = append(o.buf, id...)
		o.buf = append(o.buf, '\n')
	}
	o.buf = append(o.buf, "event: "...)
	o.buf = append(o.buf, name...)
	o.buf = append(o.buf, "\ndata: "...)
	o.buf = append(o.buf, data...)
	o.buf = append(o.buf, "\n\n"...)
}

// flush writes what is buffered and flushes it to the client.
func (o *sseWriter) flush() error {
	if len(o.buf) == 0 {
		return nil
	}
	if err := o.rc.SetWriteDeadline(time.Now().Add(eventsWriteWait)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	_, err := o.w.Write(o.buf)
	o.buf = o.buf[:0]
	if err != nil {
		return err
	}
	if err := o.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

// describeStream makes op, an events route, answer text/event-stream in
// the OpenAPI document, and documents its resume parameters.
func describeStream(op map[string]any, g *schemaGen) {
	change := g.schema(reflect.TypeOf(quota.Change{}))
	delete(g.schemas, "eventStream") // the marker the route table answers
	op["description"] = "Server-Sent Events. Without a Last-Event-ID that can be replayed, the stream starts with " +
		"`snapshot` (data: the subject's SubjectView) or, for every subject, `hello`. Then one event per change, " +
		"named for its type (usage, reservation, threshold, reset, plan), its id the change's place in one order " +
		"across instances and its data a Change; a fresh `snapshot` (for every subject: `gap`) when changes may " +
		"have been missed; `: ping` comments while quiet; `overflow` before closing a stream that fell behind. " +
		"Changes of about the last two minutes can be replayed."
	op["x-event-data"] = change
	params, _ := op["parameters"].([]any)
	op["parameters"] = append(params,
		map[string]any{"name": "Last-Event-ID", "in": "header", "required": false, "schema": map[string]any{"type": "string"},
			"description": "resume after this event"},
		map[string]any{"name": "last_event_id", "in": "query", "required": false, "schema": map[string]any{"type": "string"},
			"description": "the same, for clients that cannot set headers"})
	op["responses"].(map[string]any)["200"] = map[string]any{
		"description": "An event stream",
		"content":     map[string]any{"text/event-stream": map[string]any{"schema": map[string]any{"type": "string"}}},
	}
}

// events is the Server's part for the events routes.
type events struct {
	feed      Feed
	heartbeat time.Duration
}

func newEvents(cfg Config) events {
	e := events{feed: cfg.Feed, heartbeat: cfg.EventsHeartbeat}
	if e.heartbeat <= 0 {
		e.heartbeat = defaultHeartbeat
	}
	return e
}
