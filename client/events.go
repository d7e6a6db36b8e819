package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/quotad/quotad/quota"
)

// Events is a live subscription to quotad's change stream (Server-Sent
// Events). Read it like a bufio.Scanner:
//
//	ev := c.Events(ctx, "user:42")
//	defer ev.Close()
//	for ev.Next() {
//		ch := ev.Change() // ch.Remaining, ch.Used, ...
//	}
//	if err := ev.Err(); err != nil { ... }
//
// A subject's stream starts with a ChangeSnapshot of each meter (so the
// first Next also says the subscription is live). A dropped connection is
// reconnected with backoff, sending Last-Event-ID so that quotad resumes
// after the last change seen, or, when it no longer has that far back,
// sends a fresh snapshot. Changes are a notification, not the record: the
// ledger in quotad is.
type Events struct {
	c      *Client
	ctx    context.Context
	cancel context.CancelCauseFunc
	path   string
	done   bool

	body    io.ReadCloser
	r       *bufio.Reader
	lastID  string        // of the last event dispatched: where a reconnect resumes
	idBuf   string        // the last id field read
	retry   time.Duration // the server's "retry:" advice, 0 when none
	fails   uint          // connects failed in a row
	cur     quota.Change
	pending []quota.Change // read, not yet returned by Next
	err     error
}

// Types of the changes Events returns besides quota's Change* types.
const (
	// ChangeSnapshot carries a meter's current figures (one change per
	// meter): first on a stream that could not resume where it left off,
	// and after changes were missed. Figures in every change are absolute,
	// so a display needs nothing else to be right again.
	ChangeSnapshot = "snapshot"
	// ChangeHello opens a stream of every subject's changes (subject "").
	ChangeHello = "hello"
	// ChangeGap says an every-subject stream may have missed changes:
	// reread the subjects on display.
	ChangeGap = "gap"
)

// EventsOption configures an Events subscription.
type EventsOption func(*Events)

// EventsAfter resumes a subscription after the change with SSE id lastID
// (from an earlier Events' LastEventID), as a reconnect does.
func EventsAfter(lastID string) EventsOption { return func(e *Events) { e.lastID = lastID } }

// Events subscribes to subject's changes: usage, reservations, threshold
// crossings, resets and plan changes. An empty subject subscribes to every
// subject's (admin key). Nothing is sent until the first Next.
func (c *Client) Events(ctx context.Context, subject string, opts ...EventsOption) *Events {
	ctx, cancel := context.WithCancelCause(ctx)
	path := "/v1/events"
	if subject != "" {
		path = subjectPath(subject) + "/events"
	}
	e := &Events{c: c, ctx: ctx, cancel: cancel, path: path}
	for _, o := range opts {
		o(e)
	}
	return e
}

// Next waits for the next change and reports whether there is one. It
// returns false when the context ends, Close is called, or quotad refuses
// the subscription (a problem: bad key, bad subject) or stays unreachable
// through every retry of a reconnect; Err says which.
func (e *Events) Next() bool {
	if e.done {
		return false
	}
	bo := e.c.backoff()
	for {
		if err := e.ctx.Err(); err != nil {
			if errors.Is(context.Cause(e.ctx), errClosed) {
				err = nil // Close is not an error
			}
			return e.stop(err)
		}
		if e.body == nil {
			err := e.connect()
			if err == nil {
				e.fails = 0
				continue
			}
			if e.ctx.Err() != nil {
				continue
			}
			if permanent := new(backoff.PermanentError); errors.As(err, &permanent) {
				return e.stop(permanent.Err)
			}
			e.fails++
			if e.fails >= e.c.maxTries {
				return e.stop(&unavailableError{op: "events", err: err})
			}
			e.wait(bo.NextBackOff())
			continue
		}
		if len(e.pending) > 0 {
			e.cur, e.pending = e.pending[0], e.pending[1:]
			return true
		}
		chs, err := e.read()
		if err != nil {
			// The stream ended or broke: reconnect from e.lastID,
			// after the server's advice if it gave one (and never in
			// a tight loop if it keeps ending at once).
			e.body.Close()
			e.body, e.r = nil, nil
			e.wait(max(e.retry, e.c.initialBackoff))
			continue
		}
		e.pending = chs
	}
}

// stop ends the subscription with err (nil: closed) and returns false.
func (e *Events) stop(err error) bool {
	e.done, e.err = true, err
	e.cancel(errClosed)
	if e.body != nil {
		e.body.Close()
		e.body, e.r = nil, nil
	}
	return false
}

// errClosed is the cause of the context Close cancels.
var errClosed = errors.New("events closed")

// Change returns the change Next found.
func (e *Events) Change() quota.Change { return e.cur }

// LastEventID returns the SSE id of the last change read, to resume from
// with EventsAfter.
func (e *Events) LastEventID() string { return e.lastID }

// Err returns why Next returned false; nil after Close.
func (e *Events) Err() error { return e.err }

// Close ends the subscription; a Next blocked in another goroutine
// returns false.
func (e *Events) Close() error {
	e.cancel(errClosed)
	return nil
}

func (e *Events) wait(d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-e.ctx.Done():
	}
}

// connect opens the stream. Its error is a backoff.PermanentError when
// retrying cannot help (quotad refused the subscription).
func (e *Events) connect() error {
	req, err := e.c.newRequest(e.ctx, http.MethodGet, e.path, nil)
	if err != nil {
		return backoff.Permanent(fmt.Errorf("quotad events: %w", err))
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cache-Control", "no-cache")
	if e.lastID != "" {
		req.Header.Set("Last-Event-ID", e.lastID)
	}
	// The attempt timeout bounds the wait for the answer's headers only:
	// the stream itself is meant to stay open.
	var timer *time.Timer
	ctx, cancel := context.WithCancel(e.ctx)
	if e.c.attemptTimeout > 0 {
		timer = time.AfterFunc(e.c.attemptTimeout, cancel)
	}
	resp, err := e.c.hc.Do(req.WithContext(ctx))
	if timer != nil && !timer.Stop() && err == nil {
		resp.Body.Close()
		err = context.DeadlineExceeded
	}
	if err != nil {
		cancel()
		return err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
		cancel()
		p := problemFrom(resp, b)
		if p.Status == http.StatusServiceUnavailable {
			return p
		}
		return backoff.Permanent(p)
	}
	e.idBuf = e.lastID
	e.body = cancelOnClose{resp.Body, cancel}
	e.r = bufio.NewReader(e.body)
	return nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// read parses the stream up to the next dispatched event (the SSE rules of
// the HTML standard: "field: value" lines, a blank line ends an event,
// lines starting with ':' are comments such as heartbeats) and returns
// the changes it carries: none for an event without data or of a kind
// this client does not know, one per meter for a snapshot.
func (e *Events) read() ([]quota.Change, error) {
	var event string
	var data strings.Builder
	for {
		line, err := e.r.ReadString('\n')
		if err != nil {
			return nil, err // an event cut off by the end is dropped, per the standard
		}
		line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
		if line == "" {
			// Dispatch: the id counts only now, so that a reconnect
			// never skips an event that was cut off.
			e.lastID = e.idBuf
			if data.Len() > 0 {
				break
			}
			event = ""
			continue
		}
		if line[0] == ':' {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "event":
			event = value
		case "data":
			data.WriteString(value)
			data.WriteByte('\n')
		case "id":
			if !strings.ContainsRune(value, 0) {
				e.idBuf = value
			}
		case "retry":
			if ms, err := strconv.ParseInt(value, 10, 64); err == nil && ms >= 0 {
				e.retry = time.Duration(ms) * time.Millisecond
			}
		}
	}
	return decodeEvent(event, []byte(data.String())), nil
}

// decodeEvent turns one event of quotad's stream into changes.
func decodeEvent(event string, data []byte) []quota.Change {
	switch event {
	case ChangeSnapshot:
		var v quota.SubjectView
		if err := json.Unmarshal(data, &v); err != nil {
			return nil
		}
		if len(v.Meters) == 0 {
			return []quota.Change{{Type: ChangeSnapshot, Subject: v.Subject, Plan: v.Plan}}
		}
		out := make([]quota.Change, len(v.Meters))
		for i, m := range v.Meters {
			out[i] = quota.Change{Type: ChangeSnapshot, Subject: v.Subject, Plan: v.Plan, Meter: m.Meter,
				Used: m.Used, Reserved: m.Reserved, Limit: m.Limit, Remaining: m.Remaining}
		}
		return out
	case ChangeHello, ChangeGap:
		return []quota.Change{{Type: event}}
	case "overflow":
		// The stream was cut for falling behind; the reconnect resumes
		// from the last id (or starts over from a snapshot).
		return nil
	}
	var ch quota.Change
	if err := json.Unmarshal(data, &ch); err != nil {
		return nil // an event of a kind this client does not know
	}
	if ch.Type == "" {
		ch.Type = event
	}
	return []quota.Change{ch}
}
