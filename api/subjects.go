package api

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/quotad/quotad/quota"
)

// Reads over many subjects and over one subject's past, for operators
// (the console is built on them): a listing of subjects, a subject's
// usage per day, its ledger. Pages continue with an opaque cursor, which
// names the query it belongs to: a cursor given to another query is a
// 400, never a page of something else.

func (s *Server) subjectRoutes() []route {
	return []route{
		{"GET", "/v1/subjects", ScopeAdmin, "A page of subjects with their live usage per meter", nil, subjectList{}, 200, s.listSubjects},
		{"GET", "/v1/subjects/:subject/usage", ScopeAdmin, "A subject's usage of a meter per UTC day, from Postgres", nil, quota.UsageSeries{}, 200, s.subjectUsage},
		{"GET", "/v1/subjects/:subject/ledger", ScopeAdmin, "A subject's ledger events, latest first, from Postgres", nil, ledgerList{}, 200, s.subjectLedger},
	}
}

// queries lists the query parameters of the routes that take some, as
// the fields of a struct (for the OpenAPI document; the handlers read
// them one by one).
var queries = map[string]any{
	"GET /v1/subjects":                 subjectsQuery{},
	"GET /v1/subjects/:subject/usage":  usageQuery{},
	"GET /v1/subjects/:subject/ledger": ledgerQuery{},
}

// descriptions adds a description to operations whose summary does not
// say enough.
var descriptions = map[string]string{
	"GET /v1/subjects": "Which subjects a page holds, and their order, come from Postgres: a subject first seen " +
		"in the last second or so (not flushed yet) is not listed yet, and order=used and order=share sort by " +
		"flushed usage of the current period (most first, ties by id from the last; then every subject with none, " +
		"by id). Each row's numbers are the live view of GET /v1/subjects/{subject}, with what Redis holds and " +
		"Postgres not yet, so a row's used may be a little ahead of its place. Continue with next_cursor, " +
		"present while there is more.",
	"GET /v1/subjects/:subject/usage": "Consumed amounts per UTC day over the last `days` days, today last, every " +
		"day present (0 without usage), from the ledger in Postgres: the last second or so of usage (not " +
		"flushed yet) is not in it. A subject never seen has used nothing; nothing is stored.",
	"GET /v1/subjects/:subject/ledger": "Consumes and resets as Postgres recorded them, latest first (by time, " +
		"then event id). Usage not flushed yet (the last second or so) is not in it. A subject never seen has " +
		"none; nothing is stored. Continue with next_cursor, present while there is more.",
}

type subjectsQuery struct {
	Prefix string `json:"prefix"`
	Order  string `json:"order"`
	Meter  string `json:"meter"`
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

type usageQuery struct {
	Meter string `json:"meter"`
	Days  int    `json:"days"`
}

type ledgerQuery struct {
	Meter  string `json:"meter"`
	Cursor string `json:"cursor"`
	Limit  int    `json:"limit"`
}

type subjectList struct {
	Subjects   []quota.SubjectRow `json:"subjects"`
	NextCursor string             `json:"next_cursor,omitempty"`
}

type ledgerList struct {
	Subject    string              `json:"subject"`
	Events     []quota.LedgerEvent `json:"events"`
	NextCursor string              `json:"next_cursor,omitempty"`
}

// subjectCursor is a listing's place: the query (order, meter, prefix)
// and the last subject's position. Share is a string: it may be +Inf.
type subjectCursor struct {
	Order   string `json:"o"`
	Meter   string `json:"m"`
	Prefix  string `json:"p"`
	Subject string `json:"s"`
	Used    int64  `json:"u,omitempty"`
	Share   string `json:"r,omitempty"`
}

// ledgerCursor is a ledger page's place: the subject, the meter filter
// and the last event's time and id.
type ledgerCursor struct {
	Subject string    `json:"s"`
	Meter   string    `json:"m"`
	At      time.Time `json:"t"`
	EventID string    `json:"e"`
}

const maxCursor = 1024

func encodeCursor(v any) string {
	b, _ := json.Marshal(v) // plain strings and numbers
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string, v any) error {
	bad := fieldProblem("cursor", "not a cursor this query answered; leave it out for the first page")
	if len(s) > maxCursor {
		return bad
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, v) != nil {
		return bad
	}
	return nil
}

// intParam reads an integer query parameter between lo and hi, def when
// absent.
func intParam(c echo.Context, name string, lo, hi, def int) (int, error) {
	raw, err := queryValue(c, name)
	if err != nil || raw == "" {
		return def, err
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < lo || n > hi {
		return 0, fieldProblem(name, "must be an integer between "+strconv.Itoa(lo)+" and "+strconv.Itoa(hi))
	}
	return n, nil
}

// queryValue returns a query parameter, "" when absent. Given empty it is
// a 400, as the document's patterns say: leaving it out is how to ask for
// its default.
func queryValue(c echo.Context, name string) (string, error) {
	v := c.QueryParam(name)
	if v == "" && c.QueryParams().Has(name) {
		return "", fieldProblem(name, "must not be empty; leave it out for its default")
	}
	return v, nil
}

func (s *Server) listSubjects(c echo.Context) error {
	q := quota.SubjectQuery{Prefix: c.QueryParam("prefix")}
	var err error
	if q.Order, err = queryValue(c, "order"); err != nil {
		return err
	}
	if q.Meter, err = queryValue(c, "meter"); err != nil {
		return err
	}
	if q.Order == "" {
		q.Order = quota.OrderID
	}
	if q.Meter == "" {
		q.Meter = quota.DefaultMeter
	}
	if q.Limit, err = intParam(c, "limit", 1, quota.MaxPage, quota.DefaultPage); err != nil {
		return err
	}
	if raw := c.QueryParam("cursor"); raw != "" {
		var cur subjectCursor
		if err := decodeCursor(raw, &cur); err != nil {
			return err
		}
		pos := quota.SubjectPosition{Subject: cur.Subject, Used: cur.Used}
		if cur.Share != "" {
			pos.Share, err = strconv.ParseFloat(cur.Share, 64)
		}
		if cur.Order != q.Order || cur.Meter != q.Meter || cur.Prefix != q.Prefix || err != nil ||
			math.IsNaN(pos.Share) || pos.Used < 0 || !validSubject(pos.Subject) {
			return fieldProblem("cursor", "not a cursor of this listing (its order, meter and prefix); leave it out for the first page")
		}
		q.After = &pos
	}
	page, err := s.svc.ListSubjects(c.Request().Context(), q)
	if err != nil {
		return err
	}
	out := subjectList{Subjects: page.Subjects}
	if n := page.Next; n != nil {
		cur := subjectCursor{Order: q.Order, Meter: q.Meter, Prefix: q.Prefix, Subject: n.Subject}
		switch q.Order {
		case quota.OrderUsed:
			cur.Used = n.Used
		case quota.OrderShare:
			cur.Share = strconv.FormatFloat(n.Share, 'g', -1, 64)
		}
		out.NextCursor = encodeCursor(cur)
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) subjectUsage(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	days, err := intParam(c, "days", 1, quota.MaxUsageDays, quota.DefaultUsageDays)
	if err != nil {
		return err
	}
	meter, err := queryValue(c, "meter")
	if err != nil {
		return err
	}
	series, err := s.svc.Usage(c.Request().Context(), id, meter, days)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, series)
}

func (s *Server) subjectLedger(c echo.Context) error {
	id, err := pathParam(c, "subject")
	if err != nil {
		return err
	}
	q := quota.LedgerQuery{Subject: id}
	if q.Meter, err = queryValue(c, "meter"); err != nil {
		return err
	}
	if q.Limit, err = intParam(c, "limit", 1, quota.MaxPage, quota.DefaultPage); err != nil {
		return err
	}
	if raw := c.QueryParam("cursor"); raw != "" {
		var cur ledgerCursor
		if err := decodeCursor(raw, &cur); err != nil {
			return err
		}
		if cur.Subject != q.Subject || cur.Meter != q.Meter || !validEventID(cur.EventID) || cur.At.Year() < 1970 || cur.At.Year() > 9999 {
			return fieldProblem("cursor", "not a cursor of this ledger (its subject and meter); leave it out for the first page")
		}
		q.Before = &quota.LedgerPosition{At: cur.At, EventID: cur.EventID}
	}
	page, err := s.svc.Ledger(c.Request().Context(), q)
	if err != nil {
		return err
	}
	out := ledgerList{Subject: id, Events: page.Events}
	if n := page.Next; n != nil {
		out.NextCursor = encodeCursor(ledgerCursor{Subject: q.Subject, Meter: q.Meter, At: n.At, EventID: n.EventID})
	}
	return c.JSON(http.StatusOK, out)
}

func validSubject(id string) bool {
	_, err := quota.ParseSubject(id)
	return err == nil
}

// validEventID allows what quota.NewEventID makes, with room.
func validEventID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
