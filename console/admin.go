package console

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/quotad/quotad/quota"
)

// Plans, pricing and keys: list, create or replace, delete or revoke,
// each through its API route, whose refusal is shown next to the field
// it names.

type planRow struct {
	Name   string
	Limits []meterLimit
}

type meterLimit struct {
	Meter string
	quota.Limit
}

type plansData struct {
	Plans []planRow
	// The form's values, kept when it was refused.
	Name, Meter, Limit, Period string
	Overage                    bool
}

func (c *Console) plans(w http.ResponseWriter, r *http.Request, s *session) {
	d := plansData{Meter: quota.DefaultMeter, Period: "month"}
	// ?edit=plan&meter=m fills the form with that meter's limit.
	if name := r.URL.Query().Get("edit"); name != "" {
		var pl quota.Plan
		if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/plans/", name), nil, &pl); err == nil {
			d.Name = pl.Name
			if l, ok := pl.Limits[r.URL.Query().Get("meter")]; ok {
				d.Meter, d.Limit, d.Period, d.Overage = r.URL.Query().Get("meter"), itoa(l.Limit), string(l.Period), l.Overage
			}
		}
	}
	c.plansPage(w, r, s, http.StatusOK, page{Data: d})
}

func (c *Console) plansPage(w http.ResponseWriter, r *http.Request, s *session, status int, p page) {
	d, _ := p.Data.(plansData)
	var ps []quota.Plan
	if err := c.call(r, s.key, http.MethodGet, "/v1/plans", nil, &ps); err != nil {
		c.failed(w, r, err)
		return
	}
	d.Plans = d.Plans[:0]
	for _, pl := range ps {
		row := planRow{Name: pl.Name}
		for m, l := range pl.Limits {
			row.Limits = append(row.Limits, meterLimit{m, l})
		}
		slices.SortFunc(row.Limits, func(a, b meterLimit) int { return strings.Compare(a.Meter, b.Meter) })
		d.Plans = append(d.Plans, row)
	}
	slices.SortFunc(d.Plans, func(a, b planRow) int { return strings.Compare(a.Name, b.Name) })
	p.Title, p.Nav, p.Data = "Plans", "plans", d
	c.render(w, r, status, "plans", p)
}

// putPlan sets one meter's limit of a plan, creating the plan when it is
// new; the plan's other meters stay as they are.
func (c *Console) putPlan(w http.ResponseWriter, r *http.Request, s *session) {
	d := plansData{
		Name: strings.TrimSpace(r.PostFormValue("name")), Meter: strings.TrimSpace(r.PostFormValue("meter")),
		Limit: strings.TrimSpace(r.PostFormValue("limit")), Period: r.PostFormValue("period"), Overage: r.PostFormValue("overage") != "",
	}
	refused := func(p *Problem) { c.plansPage(w, r, s, p.Status, page{Data: d, Error: p}) }
	remove := r.PostFormValue("remove") != ""
	n, err := strconv.ParseInt(d.Limit, 10, 64)
	if remove {
		n, err = 0, nil
	}
	if err != nil {
		refused(&Problem{Status: http.StatusBadRequest, Field: "limits.limit", Detail: "must be a whole number"})
		return
	}
	if d.Name == "" {
		refused(&Problem{Status: http.StatusBadRequest, Field: "name", Detail: "is required"})
		return
	}
	plan := quota.Plan{Name: d.Name, Limits: map[string]quota.Limit{}}
	var old quota.Plan
	if err := c.call(r, s.key, http.MethodGet, pathOf("/v1/plans/", d.Name), nil, &old); err == nil {
		for m, l := range old.Limits {
			plan.Limits[m] = l
		}
	}
	msg := "Plan " + d.Name + " saved."
	if remove {
		delete(plan.Limits, d.Meter)
		msg = "Meter " + d.Meter + " removed from plan " + d.Name + "."
	} else {
		plan.Limits[d.Meter] = quota.Limit{Limit: n, Period: quota.Period(d.Period), Overage: d.Overage}
	}
	if err := c.call(r, s.key, http.MethodPut, pathOf("/v1/plans/", d.Name), plan, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) {
			if p.Field == "limits" {
				p.Field = "limits.meter" // a meter name the API refused
			} else if f, ok := strings.CutPrefix(p.Field, "limits."); ok {
				if i := strings.LastIndexByte(f, '.'); i >= 0 {
					p.Field = "limits." + f[i+1:]
				} else {
					p.Field = "limits.meter"
				}
			}
			refused(p)
		})
		return
	}
	c.done(w, r, "/plans", msg)
}

func (c *Console) deletePlan(w http.ResponseWriter, r *http.Request, s *session) {
	name := r.PathValue("name")
	if err := c.call(r, s.key, http.MethodDelete, pathOf("/v1/plans/", name), nil, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) { c.plansPage(w, r, s, p.Status, page{Error: p}) })
		return
	}
	c.done(w, r, "/plans", "Plan "+name+" deleted.")
}

type pricingData struct {
	Margin quota.Decimal
	Prices []quota.Price
	Form   map[string]string
}

var priceFields = []string{"model", "input", "output", "cache_write", "cache_read"}

func (c *Console) pricing(w http.ResponseWriter, r *http.Request, s *session) {
	var d pricingData
	// ?edit=model fills the form with that model's price.
	if model := r.URL.Query().Get("edit"); model != "" {
		prices, _ := c.svcPrices(r, s)
		for _, p := range prices {
			if p.Model == model {
				d.Form = map[string]string{"model": p.Model, "input": p.Input.String(), "output": p.Output.String(),
					"cache_write": p.CacheWrite.String(), "cache_read": p.CacheRead.String()}
			}
		}
	}
	c.pricingPage(w, r, s, http.StatusOK, page{Data: d})
}

func (c *Console) svcPrices(r *http.Request, s *session) ([]quota.Price, error) {
	var book struct {
		Prices []quota.Price `json:"prices"`
	}
	err := c.call(r, s.key, http.MethodGet, "/v1/pricing", nil, &book)
	return book.Prices, err
}

func (c *Console) pricingPage(w http.ResponseWriter, r *http.Request, s *session, status int, p page) {
	d, _ := p.Data.(pricingData)
	var book struct {
		Margin quota.Decimal `json:"margin"`
		Prices []quota.Price `json:"prices"`
	}
	if err := c.call(r, s.key, http.MethodGet, "/v1/pricing", nil, &book); err != nil {
		c.failed(w, r, err)
		return
	}
	d.Margin, d.Prices = book.Margin, book.Prices
	if d.Form == nil {
		d.Form = map[string]string{"input": "0", "output": "0", "cache_write": "0", "cache_read": "0"}
	}
	p.Title, p.Nav, p.Data = "Pricing", "pricing", d
	c.render(w, r, status, "pricing", p)
}

func (c *Console) putPrice(w http.ResponseWriter, r *http.Request, s *session) {
	form := map[string]string{}
	for _, f := range priceFields {
		form[f] = strings.TrimSpace(r.PostFormValue(f))
	}
	refused := func(p *Problem) { c.pricingPage(w, r, s, p.Status, page{Data: pricingData{Form: form}, Error: p}) }
	price := quota.Price{Model: form["model"]}
	for _, f := range []struct {
		name string
		to   *quota.Decimal
	}{{"input", &price.Input}, {"output", &price.Output}, {"cache_write", &price.CacheWrite}, {"cache_read", &price.CacheRead}} {
		v, err := quota.ParseDecimal(form[f.name])
		if err != nil {
			refused(&Problem{Status: http.StatusBadRequest, Field: f.name, Detail: "must be a decimal number of US dollars per million tokens"})
			return
		}
		*f.to = v
	}
	if price.Model == "" {
		refused(&Problem{Status: http.StatusBadRequest, Field: "model", Detail: "is required"})
		return
	}
	if err := c.call(r, s.key, http.MethodPut, pathOf("/v1/pricing/", price.Model), price, nil); err != nil {
		c.formFailed(w, r, err, refused)
		return
	}
	c.done(w, r, "/pricing", "Price of "+price.Model+" saved.")
}

func (c *Console) deletePrice(w http.ResponseWriter, r *http.Request, s *session) {
	model := r.PathValue("model")
	if err := c.call(r, s.key, http.MethodDelete, pathOf("/v1/pricing/", model), nil, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) { c.pricingPage(w, r, s, p.Status, page{Error: p}) })
		return
	}
	c.done(w, r, "/pricing", "Price of "+model+" deleted.")
}

type keysData struct {
	Keys []quota.APIKey
	// Created is the key just minted, its secret shown on this answer
	// only.
	Created       *quota.APIKey
	Secret        string
	Name, Scope   string
	ExpiresInDays string
}

func (c *Console) keys(w http.ResponseWriter, r *http.Request, s *session) {
	c.keysPage(w, r, s, http.StatusOK, page{Data: keysData{Scope: "service"}})
}

func (c *Console) keysPage(w http.ResponseWriter, r *http.Request, s *session, status int, p page) {
	d, _ := p.Data.(keysData)
	var list struct {
		Keys []quota.APIKey `json:"keys"`
	}
	if err := c.call(r, s.key, http.MethodGet, "/v1/keys", nil, &list); err != nil {
		c.failed(w, r, err)
		return
	}
	d.Keys = list.Keys
	p.Title, p.Nav, p.Data = "Keys", "keys", d
	c.render(w, r, status, "keys", p)
}

func (c *Console) createKey(w http.ResponseWriter, r *http.Request, s *session) {
	d := keysData{Name: r.PostFormValue("name"), Scope: r.PostFormValue("scope"), ExpiresInDays: strings.TrimSpace(r.PostFormValue("expires_in_days"))}
	body := map[string]any{"scope": d.Scope, "name": d.Name}
	if d.ExpiresInDays != "" {
		n, err := strconv.Atoi(d.ExpiresInDays)
		if err != nil || n < 1 || n > 3650 {
			c.keysPage(w, r, s, http.StatusBadRequest, page{Data: d, Error: &Problem{Status: 400, Field: "expires_at", Detail: "must be a whole number of days, 1 to 3650"}})
			return
		}
		body["expires_at"] = c.now().Add(time.Duration(n) * 24 * time.Hour).UTC().Format(time.RFC3339)
	}
	var created struct {
		Key string `json:"key"`
		quota.APIKey
	}
	if err := c.call(r, s.key, http.MethodPost, "/v1/keys", body, &created); err != nil {
		c.formFailed(w, r, err, func(p *Problem) { c.keysPage(w, r, s, p.Status, page{Data: d, Error: p}) })
		return
	}
	// Answered here, not redirected: the secret exists in this answer
	// only, which no cache keeps (no-store).
	c.keysPage(w, r, s, http.StatusCreated, page{Data: keysData{Created: &created.APIKey, Secret: created.Key, Scope: "service"}})
}

func (c *Console) revokeKey(w http.ResponseWriter, r *http.Request, s *session) {
	id := r.PathValue("id")
	if err := c.call(r, s.key, http.MethodDelete, pathOf("/v1/keys/", id), nil, nil); err != nil {
		c.formFailed(w, r, err, func(p *Problem) { c.keysPage(w, r, s, p.Status, page{Error: p}) })
		return
	}
	c.done(w, r, "/keys", "Key "+id+" revoked: the API refuses it from now on.")
}
