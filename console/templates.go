package console

import (
	"html/template"
	"net/url"
	"strconv"
	"time"

	"github.com/quotad/quotad/quota"
)

var pageNames = []string{"signin", "error", "overview", "subjects", "subject", "plans", "pricing", "keys"}

// parsePages parses each page with the layout it is drawn in.
func parsePages(prefix string) map[string]*template.Template {
	funcs := template.FuncMap{
		"when":  when,
		"num":   num,
		"pct":   pct,
		"seg":   url.PathEscape,
		"query": url.QueryEscape,
		"mulf":  func(f float64) float64 { return f * 100 },
		"list":  func(s ...string) []string { return s },
		"svg":   func(s string) template.HTML { return template.HTML(s) }, // drawn by charts.go, every text escaped
		"share": func(f *float64) string {
			if f == nil {
				return "–"
			}
			return strconv.FormatFloat(*f*100, 'f', 1, 64) + " %"
		},
		"deref": func(t *time.Time) time.Time {
			if t == nil {
				return time.Time{}
			}
			return *t
		},
	}
	pages := make(map[string]*template.Template, len(pageNames))
	for _, name := range pageNames {
		pages[name] = template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html"))
	}
	return pages
}

// when writes a time as a <time> element in UTC, which the page's script
// turns into the viewer's time zone, keeping UTC in its title (on hover).
func when(v any) template.HTML {
	var t time.Time
	switch x := v.(type) {
	case time.Time:
		t = x
	case quota.Time:
		t = x.Time
	case *time.Time:
		if x != nil {
			t = *x
		}
	}
	if t.IsZero() {
		return "–"
	}
	t = t.UTC()
	utc := template.HTMLEscapeString(t.Format("2006-01-02 15:04:05") + " UTC")
	return template.HTML(`<time datetime="` + t.Format(time.RFC3339) + `" title="` + utc + `">` + utc + `</time>`)
}

// num writes an integer with thousands separators: 1,234,567.
func num(v int64) string {
	s := strconv.FormatInt(v, 10)
	neg := v < 0
	if neg {
		s = s[1:]
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// pct is v's share of limit in percent, 0..100, for a bar's width.
func pct(v, limit int64) string {
	if limit <= 0 {
		if v > 0 {
			return "100"
		}
		return "0"
	}
	p := float64(v) / float64(limit) * 100
	return strconv.FormatFloat(min(max(p, 0), 100), 'f', 2, 64)
}
