package console

import (
	"cmp"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quotad/quotad/quota"
)

// page is what every template gets.
type page struct {
	Title  string
	Nav    string // the section the page is in
	Prefix string
	CSRF   string
	Flash  string   // what the last action did
	Error  *Problem // why the last action was refused, when no field names it
	Data   any
}

// fieldError returns the problem's detail when it names field, for the
// templates to show it next to that field.
func (p page) FieldError(field string) string {
	if p.Error != nil && p.Error.Field == field {
		return p.Error.Detail
	}
	return ""
}

// TopError is the refusal to show at the top: one no field of the form
// shows.
func (p page) TopError(fields ...string) *Problem {
	if p.Error == nil || slices.Contains(fields, p.Error.Field) {
		return nil
	}
	return p.Error
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, p page) {
	p.Prefix = c.prefix
	if s := c.session(r); s != nil {
		p.CSRF = s.csrf
	}
	if p.Flash == "" {
		p.Flash = r.URL.Query().Get("done")
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := c.pages[name].ExecuteTemplate(w, "layout", p); err != nil {
		c.log.Warn("console: render", "page", name, "err", err)
	}
}

// refuse answers a refused request with the API's message on a page of
// its own.
func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, detail string) {
	c.render(w, r, status, "error", page{Title: http.StatusText(status), Error: &Problem{Status: status, Detail: detail}})
}

// failed answers a page whose reads failed: an ended session signs in
// again, anything else is shown.
func (c *Console) failed(w http.ResponseWriter, r *http.Request, err error) {
	var p *Problem
	if errors.As(err, &p) {
		if p.Status == http.StatusUnauthorized {
			http.Redirect(w, r, c.prefix+"/signin?ended=1", http.StatusSeeOther)
			return
		}
		c.refuse(w, r, p.Status, p.Error())
		return
	}
	c.log.Warn("console: page failed", "path", r.URL.Path, "err", err)
	c.refuse(w, r, http.StatusInternalServerError, "The console could not read this page; see quotad's log.")
}

// done redirects after a successful form (so a reload does not post it
// again) with a message for the next page.
func (c *Console) done(w http.ResponseWriter, r *http.Request, path, msg string) {
	http.Redirect(w, r, c.prefix+path+"?done="+url.QueryEscape(msg), http.StatusSeeOther)
}

func (c *Console) home(w http.ResponseWriter, r *http.Request) {
	if c.session(r) != nil {
		http.Redirect(w, r, c.prefix+"/overview", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, c.prefix+"/signin", http.StatusSeeOther)
}

// ---------------------------------------------------------------- sign-in

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Sign in"}
	switch {
	case r.URL.Query().Get("ended") != "":
		p.Error = &Problem{Detail: "Your session ended (signed out, expired, or its key was revoked): sign in again."}
	case r.URL.Query().Get("out") != "":
		p.Flash = "Signed out."
	}
	c.signinForm(w, r, http.StatusOK, p)
}

// signinForm renders the sign-in form with a fresh pre-session token.
func (c *Console) signinForm(w http.ResponseWriter, r *http.Request, status int, p page) {
	tok := randomToken()
	http.SetCookie(w, c.cookie(r, signinCookie, tok, 600))
	p.Title = "Sign in"
	p.Data = tok
	c.render(w, r, status, "signin", p)
}

func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	ck, err := r.Cookie(signinCookie)
	if err != nil || !sameToken(r.PostFormValue(csrfField), ck.Value) {
		c.refuse(w, r, http.StatusForbidden, "This form was refused: its CSRF token is missing or wrong. Reload the page and try again.")
		return
	}
	key := strings.TrimSpace(r.PostFormValue("key"))
	if key == "" {
		c.signinForm(w, r, http.StatusBadRequest, page{Error: &Problem{Field: "key", Detail: "Enter an admin API key."}})
		return
	}
	// An admin-only read: a key the API does not know counts as a failed
	// authentication from this address, as it would on the API.
	var keys struct{ Keys []quota.APIKey }
	if err := c.call(r, key, http.MethodGet, "/v1/keys", nil, &keys); err != nil {
		var p *Problem
		if !errors.As(err, &p) {
			c.failed(w, r, err)
			return
		}
		msg := p.Error()
		switch p.Status {
		case http.StatusUnauthorized:
			msg = "quotad does not know this key (or it expired or was revoked)."
		case http.StatusForbidden:
			msg = "This key has the service scope: the console needs a key with the admin scope."
		case http.StatusTooManyRequests:
			msg = "Too many failed sign-ins from your address: " + p.Error() + "."
		}
		c.signinForm(w, r, p.Status, page{Error: &Problem{Status: p.Status, Field: "key", Detail: msg}})
		return
	}
	s := c.sessions.create(key)
	http.SetCookie(w, c.cookie(r, signinCookie, "", -1))
	http.SetCookie(w, c.cookie(r, sessionCookie, s.id, int(c.sessions.ttl/time.Second)))
	http.Redirect(w, r, c.prefix+"/overview", http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.drop(s.id)
	http.SetCookie(w, c.cookie(r, sessionCookie, "", -1))
	http.Redirect(w, r, c.prefix+"/signin?out=1", http.StatusSeeOther)
}

// ---------------------------------------------------------------- overview

type readiness struct {
	Status string            `json:"status"`
	Stores map[string]string `json:"stores"`
	Detail map[string]any    `json:"detail"`
}

type overviewData struct {
	Ready     readiness
	Stores    []storeState
	FlushLag  string
	Pending   string
	Instances []instance
	Near      []subjectRow
	NearErr   string
	Traffic   []rate
}

type storeState struct{ Name, State string }

// instance is a running quotad, known from its flusher's heartbeat.
type instance struct {
	Name    string
	Pending int64  // stream entries it read and has not flushed
	Idle    string // since it last read the stream
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	var d overviewData
	status, body, err := c.raw(r, s.key, http.MethodGet, "/readyz", nil)
	if err != nil {
		c.failed(w, r, err)
		return
	}
	if status != http.StatusOK && status != http.StatusServiceUnavailable {
		c.failed(w, r, problemOf(status, body))
		return
	}
	_ = json.Unmarshal(body, &d.Ready)
	for name, st := range d.Ready.Stores {
		d.Stores = append(d.Stores, storeState{name, st})
	}
	slices.SortFunc(d.Stores, func(a, b storeState) int { return strings.Compare(a.Name, b.Name) })
	if v, ok := d.Ready.Detail["flush_lag_seconds"].(float64); ok {
		d.FlushLag = strconv.FormatFloat(v, 'f', 2, 64) + " s"
	}
	if v, ok := d.Ready.Detail["pending"].(float64); ok {
		d.Pending = strconv.FormatFloat(v, 'f', 0, 64)
	}
	if v, ok := d.Ready.Detail["instances"].([]any); ok {
		for _, i := range v {
			m, _ := i.(map[string]any)
			name, _ := m["name"].(string)
			pending, _ := m["pending"].(float64)
			idle, _ := m["idle_seconds"].(float64)
			if name != "" {
				d.Instances = append(d.Instances, instance{Name: name, Pending: int64(pending), Idle: strconv.FormatFloat(idle, 'f', 1, 64) + " s"})
			}
		}
	}
	var list subjectList
	q := url.Values{"order": {"share"}, "limit": {"10"}}
	if err := c.call(r, s.key, http.MethodGet, "/v1/subjects?"+q.Encode(), nil, &list); err != nil {
		d.NearErr = unavailable(err, "listing")
	} else {
		for _, row := range list.Subjects {
			if row.Share() >= 0.8 {
				d.Near = append(d.Near, row)
			}
		}
	}
	if c.traffic.stale(c.now()) {
		// Sampled now too, so that the chart starts from the first look
		// rather than one period after it.
		c.sample(r.Context(), s.key)
	}
	d.Traffic = c.traffic.rates()
	c.render(w, r, http.StatusOK, "overview", page{Title: "Overview", Nav: "overview", Data: d})
}

func (c *Console) trafficChart(w http.ResponseWriter, r *http.Request, s *session) {
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(trafficSVG(c.traffic.rates())))
}

// raw runs an API call and returns its status and body as they are.
func (c *Console) raw(r *http.Request, key, method, path string, body any) (int, []byte, error) {
	req, err := http.NewRequestWithContext(detached{r.Context()}, method, path, nil)
	if err != nil {
		return 0, nil, err
	}
	c.prepare(req, r, key)
	rec := &recorder{header: make(http.Header), status: http.StatusOK}
	c.api.ServeHTTP(rec, req)
	if rec.status == http.StatusUnauthorized {
		c.sessions.dropKey(key)
	}
	return rec.status, rec.body.Bytes(), nil
}

func problemOf(status int, body []byte) *Problem {
	p := &Problem{Status: status}
	if json.Unmarshal(body, p) != nil || p.Status == 0 {
		p.Status, p.Title = status, http.StatusText(status)
	}
	return p
}

// ---------------------------------------------------------------- subjects

type meterShare struct {
	quota.MeterStatus
	Share *float64 `json:"share"`
}

type subjectRow struct {
	Subject string       `json:"subject"`
	Plan    string       `json:"plan"`
	Meters  []meterShare `json:"meters"`
}

// Share is the largest share of a limit the subject used.
func (s subjectRow) Share() float64 {
	best := 0.0
	for _, m := range s.Meters {
		if m.Share != nil {
			best = max(best, *m.Share)
		}
	}
	return best
}

type subjectList struct {
	Subjects   []subjectRow `json:"subjects"`
	NextCursor string       `json:"next_cursor"`
}

type subjectsData struct {
	Prefix, Order, Cursor string
	List                  subjectList
	Unavailable           string // the listing route's refusal, when it has none
}

func (c *Console) subjects(w http.ResponseWriter, r *http.Request, s *session) {
	qs := r.URL.Query()
	d := subjectsData{Prefix: strings.TrimSpace(qs.Get("prefix")), Order: cmp.Or(qs.Get("order"), "id"), Cursor: qs.Get("cursor")}
	// A whole subject id goes straight to its page.
	if qs.Get("go") != "" {
		if _, err := quota.ParseSubject(d.Prefix); err == nil {
			http.Redirect(w, r, c.prefix+"/subjects/"+url.PathEscape(d.Prefix), http.StatusSeeOther)
			return
		}
	}
	q := url.Values{"order": {d.Order}, "limit": {"50"}}
	if d.Prefix != "" {
		q.Set("prefix", d.Prefix)
	}
	if d.Cursor != "" {
		q.Set("cursor", d.Cursor)
	}
	var p page
	if err := c.call(r, s.key, http.MethodGet, "/v1/subjects?"+q.Encode(), nil, &d.List); err != nil {
		var pr *Problem
		if !errors.As(err, &pr) || pr.Status == http.StatusUnauthorized {
			c.failed(w, r, err)
			return
		}
		if pr.Status == http.StatusNotFound || pr.Status == http.StatusMethodNotAllowed {
			d.Unavailable = "This quotad has no subject listing (GET /v1/subjects); enter a whole subject id to open it."
		} else {
			p.Error = pr
		}
	}
	p.Title, p.Nav, p.Data = "Subjects", "subjects", d
	c.render(w, r, http.StatusOK, "subjects", p)
}

type usageSeries struct {
	Meter string `json:"meter"`
	Total int64  `json:"total"`
	Days  []struct {
		Day  string `json:"day"`
		Used int64  `json:"used"`
	} `json:"days"`
}

type ledgerEvent struct {
	EventID        string    `json:"event_id"`
	Kind           string    `json:"kind"`
	Meter          string    `json:"meter"`
	Amount         int64     `json:"amount"`
	Mode           string    `json:"mode"`
	Model          string    `json:"model"`
	IdempotencyKey string    `json:"idempotency_key"`
	ReservationID  string    `json:"reservation_id"`
	At             time.Time `json:"at"`
}

type ledgerPage struct {
	Events     []ledgerEvent `json:"events"`
	NextCursor string        `json:"next_cursor"`
}

type subjectData struct {
	View      quota.SubjectView
	ViewJSON  string
	Plans     []string
	Days      int
	Meter     string
	Usage     *usageSeries
	Chart     string // SVG
	UsageErr  string
	Ledger    *ledgerPage
	LedgerErr string
	// The override form's values, kept when it was refused.
	FormMeter, FormLimit, FormPeriod string
}

func (c *Console) subject(w http.ResponseWriter, r *http.Request, s *session) {
	c.subjectPage(w, r, s, http.StatusOK, page{})
}

func (c *Console) subjectPage(w http.ResponseWriter, r *http.Request, s *session, status int, p page) {
	id := r.PathValue("subject")
	var d subjectData
	if dd, ok := p.Data.(subjectData); ok {
		d = dd
	}
	if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/subjects/", id), nil, &d.View); err != nil {
		c.failed(w, r, err)
		return
	}
	vj, _ := json.Marshal(d.View)
	d.ViewJSON = string(vj)
	var plans []quota.Plan
	if err := c.call(r, s.key, http.MethodGet, "/v1/plans", nil, &plans); err != nil {
		c.failed(w, r, err)
		return
	}
	for _, pl := range plans {
		d.Plans = append(d.Plans, pl.Name)
	}
	slices.Sort(d.Plans)
	d.Days = 30
	if r.URL.Query().Get("days") == "90" {
		d.Days = 90
	}
	d.Meter = cmp.Or(r.URL.Query().Get("meter"), quota.DefaultMeter)
	var u usageSeries
	q := url.Values{"meter": {d.Meter}, "days": {strconv.Itoa(d.Days)}}
	if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/subjects/", id, "/usage")+"?"+q.Encode(), nil, &u); err != nil {
		d.UsageErr = unavailable(err, "usage per day")
	} else {
		d.Usage = &u
		d.Chart = usageSVG(u, d.Days)
	}
	var l ledgerPage
	lq := url.Values{"limit": {"20"}}
	if cur := r.URL.Query().Get("ledger"); cur != "" {
		lq.Set("cursor", cur)
	}
	if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/subjects/", id, "/ledger")+"?"+lq.Encode(), nil, &l); err != nil {
		d.LedgerErr = unavailable(err, "ledger")
	} else {
		d.Ledger = &l
	}
	p.Title, p.Nav, p.Data = d.View.Subject, "subjects", d
	c.render(w, r, status, "subject", p)
}

// unavailable says why a part of a page could not be read.
func unavailable(err error, what string) string {
	var p *Problem
	if errors.As(err, &p) && (p.Status == http.StatusNotFound || p.Status == http.StatusMethodNotAllowed) {
		return "This quotad does not serve the " + what + " (" + p.Error() + ")."
	}
	return err.Error()
}

// subjectView answers the subject's view as JSON, for the live page to
// catch up after a gap in its stream.
func (c *Console) subjectView(w http.ResponseWriter, r *http.Request, s *session) {
	status, body, err := c.raw(r, s.key, http.MethodGet, pathOf("/v1/subjects/", r.PathValue("subject")), nil)
	if err != nil {
		c.failed(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (c *Console) subjectSettings(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("subject")
	var u quota.SubjectUpdate
	var d subjectData
	msg := ""
	switch r.PostFormValue("action") {
	case "plan":
		plan := r.PostFormValue("plan")
		u.Plan = &plan
		msg = "Plan changed to " + plan + "."
	case "override", "clear":
		// The API replaces every override at once: start from the
		// subject's own.
		var v quota.SubjectView
		if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/subjects/", id), nil, &v); err != nil {
			c.failed(w, r, err)
			return
		}
		limits := map[string]quota.Limit{}
		for m, l := range v.Limits {
			limits[m] = l
		}
		meter := strings.TrimSpace(r.PostFormValue("meter"))
		if r.PostFormValue("action") == "clear" {
			delete(limits, meter)
			msg = "Override of " + meter + " removed."
		} else {
			d.FormMeter, d.FormLimit, d.FormPeriod = meter, r.PostFormValue("limit"), r.PostFormValue("period")
			n, err := strconv.ParseInt(strings.TrimSpace(d.FormLimit), 10, 64)
			if err != nil {
				c.subjectPage(w, r, s, http.StatusBadRequest, page{Data: d, Error: &Problem{Field: "limits.limit", Detail: "must be a whole number"}})
				return
			}
			limits[meter] = quota.Limit{Limit: n, Period: quota.Period(d.FormPeriod), Overage: r.PostFormValue("overage") != ""}
			msg = "Limit of " + meter + " set to " + d.FormLimit + "."
		}
		u.Limits = &limits
	default:
		c.refuse(w, r, http.StatusBadRequest, "unknown action")
		return
	}
	if err := c.call(r, s.key, http.MethodPut, pathOf("/v1/subjects/", id), u, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) {
			// The API names the field by its path in the body
			// (limits.credits.limit); the form has one of each.
			if p.Field == "limits" {
				p.Field = "limits.meter" // a meter name the API refused
			} else if f, ok := strings.CutPrefix(p.Field, "limits."); ok {
				if i := strings.LastIndexByte(f, '.'); i >= 0 {
					p.Field = "limits." + f[i+1:]
				} else {
					p.Field = "limits.meter"
				}
			}
			c.subjectPage(w, r, s, p.Status, page{Data: d, Error: p})
		})
		return
	}
	c.done(w, r, pathOf("/subjects/", id), msg)
}

func (c *Console) subjectReset(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("subject")
	body := map[string]string{}
	if m := r.PostFormValue("meter"); m != "" {
		body["meter"] = m
	}
	if err := c.call(r, s.key, http.MethodPost, pathOf("/v1/subjects/", id, "/reset"), body, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) { c.subjectPage(w, r, s, p.Status, page{Error: p}) })
		return
	}
	c.done(w, r, pathOf("/subjects/", id), "Usage reset.")
}

// formFailed shows a refused form's problem with show, or fails the page
// when the API did not answer with one.
func (c *Console) formFailed(w http.ResponseWriter, r *http.Request, err error, show func(*Problem)) {
	var p *Problem
	if !errors.As(err, &p) || p.Status == http.StatusUnauthorized {
		c.failed(w, r, err)
		return
	}
	show(p)
}

// events relays the subject's events stream (every subject's without
// one) from the API to the browser.
func (c *Console) events(w http.ResponseWriter, r *http.Request, s *session) {
	path := "/v1/events"
	if id := r.URL.Query().Get("subject"); id != "" {
		path = pathOf("/v1/subjects/", id, "/events")
	}
	req, err := http.NewRequestWithContext(detached{r.Context()}, http.MethodGet, path, nil)
	if err != nil {
		c.failed(w, r, err)
		return
	}
	c.prepare(req, r, s.key)
	req.Header.Set("Accept", "text/event-stream")
	if last := r.Header.Get("Last-Event-ID"); last != "" {
		req.Header.Set("Last-Event-ID", last)
	}
	c.api.ServeHTTP(w, req)
}
