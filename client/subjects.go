package client

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/quotad/quotad/quota"
)

// Reads for operators (admin key): a listing of subjects, a subject's
// usage per day and its ledger. They read Postgres, so usage of the last
// second or so (not flushed yet) is not in them. Pages continue with the
// opaque NextCursor of the previous page, given back with the same query:
// quotad refuses a cursor of another query with a 400.

// SubjectsQuery asks for a page of the subject listing. Zero fields take
// quotad's defaults.
type SubjectsQuery struct {
	Prefix string // only subjects whose id starts with it ("user:")
	Order  string // quota.OrderID (the default), quota.OrderUsed or quota.OrderShare
	Meter  string // the meter OrderUsed and OrderShare sort by; "credits" by default
	Cursor string // NextCursor of the previous page; "" for the first
	Limit  int    // subjects per page, 1..quota.MaxPage; quota.DefaultPage when 0
}

// SubjectList is a page of the subject listing.
type SubjectList struct {
	Subjects []quota.SubjectRow `json:"subjects"`
	// NextCursor continues the listing; "" on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Subjects returns a page of subjects with each one's live usage per
// meter (admin key). Errors: IsInvalid for a bad order, meter, limit or
// cursor (the *Error's Field names it).
func (c *Client) Subjects(ctx context.Context, q SubjectsQuery) (SubjectList, error) {
	v := url.Values{}
	setQuery(v, "prefix", q.Prefix)
	setQuery(v, "order", q.Order)
	setQuery(v, "meter", q.Meter)
	setQuery(v, "cursor", q.Cursor)
	setInt(v, "limit", q.Limit)
	var res SubjectList
	err := c.do(ctx, call{op: "subjects", method: http.MethodGet, path: withQuery("/v1/subjects", v), safe: true}, &res)
	return res, err
}

// Usage returns what subject used of meter ("credits" when empty) per UTC
// day over the last days days (quota.DefaultUsageDays when 0, at most
// quota.MaxUsageDays), oldest first, today last, every day present
// (admin key). A subject never seen has used nothing. Errors: IsInvalid.
func (c *Client) Usage(ctx context.Context, subject, meter string, days int) (quota.UsageSeries, error) {
	v := url.Values{}
	setQuery(v, "meter", meter)
	setInt(v, "days", days)
	var res quota.UsageSeries
	err := c.do(ctx, call{op: "usage", method: http.MethodGet, path: withQuery(subjectPath(subject)+"/usage", v), safe: true}, &res)
	return res, err
}

// LedgerQuery asks for a page of a subject's ledger. Zero fields take
// quotad's defaults.
type LedgerQuery struct {
	Meter  string // only this meter's events; "" for every meter
	Cursor string // NextCursor of the previous page; "" for the first
	Limit  int    // events per page, 1..quota.MaxPage; quota.DefaultPage when 0
}

// LedgerList is a page of a subject's ledger, latest first.
type LedgerList struct {
	Subject string              `json:"subject"`
	Events  []quota.LedgerEvent `json:"events"`
	// NextCursor continues with older events; "" on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Ledger returns a page of subject's consumes and resets as Postgres
// recorded them, latest first (admin key). A subject never seen has none.
// Errors: IsInvalid for a bad subject, meter, limit or cursor.
func (c *Client) Ledger(ctx context.Context, subject string, q LedgerQuery) (LedgerList, error) {
	v := url.Values{}
	setQuery(v, "meter", q.Meter)
	setQuery(v, "cursor", q.Cursor)
	setInt(v, "limit", q.Limit)
	var res LedgerList
	err := c.do(ctx, call{op: "ledger", method: http.MethodGet, path: withQuery(subjectPath(subject)+"/ledger", v), safe: true}, &res)
	return res, err
}

// setQuery sets a query parameter unless it is empty: quotad answers an
// empty parameter 400, as leaving it out is how to ask for its default.
func setQuery(v url.Values, name, value string) {
	if value != "" {
		v.Set(name, value)
	}
}

// setInt sets an integer query parameter unless it is 0 (the default).
func setInt(v url.Values, name string, n int) {
	if n != 0 {
		v.Set(name, strconv.Itoa(n))
	}
}

func withQuery(path string, v url.Values) string {
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}
