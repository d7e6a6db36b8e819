package bench

import (
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// chartSeries are the bar colours, in legend order.
var chartSeries = []struct{ key, label, color string }{
	{"full", "full tiers (L1 + Redis + Postgres)", "#4e79a7"},
	{"postgres", "postgres tiers (Postgres only)", "#f28e2b"},
	{"floor", "floor (HTTP + JSON, no quota)", "#8c8c8c"},
}

// seriesOf puts a run in a chart series: the floor, else by tiers.
func seriesOf(r RunReport) string {
	if r.Scenario == "floor" {
		return "floor"
	}
	if r.Tiers == "postgres" {
		return "postgres"
	}
	return "full"
}

type chartGroup struct {
	name string
	vals map[string]float64 // series → value
}

// chartGroups orders the scenarios as they first ran, the floor last.
func chartGroups(runs []RunReport, value func(RunReport) float64) []chartGroup {
	var groups []chartGroup
	idx := map[string]int{}
	add := func(r RunReport) {
		i, ok := idx[r.Scenario]
		if !ok {
			i = len(groups)
			idx[r.Scenario] = i
			groups = append(groups, chartGroup{name: r.Scenario, vals: map[string]float64{}})
		}
		groups[i].vals[seriesOf(r)] = value(r)
	}
	for _, r := range runs {
		if r.Scenario != "floor" {
			add(r)
		}
	}
	for _, r := range runs {
		if r.Scenario == "floor" {
			add(r)
		}
	}
	return groups
}

// niceCeil returns an axis top ≥ v and a tick step, both 1, 2, 2.5 or 5
// times a power of ten.
func niceCeil(v float64, ticks int) (top, step float64) {
	if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 1, 0.2
	}
	raw := v / float64(ticks)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if step = m * mag; step >= raw {
			break
		}
	}
	top = math.Ceil(v/step-1e-9) * step
	return top, step
}

// fmtShort formats a throughput: 950, 12.3k, 1.25M.
func fmtShort(v float64) string {
	switch {
	case v >= 1e6:
		return strconv.FormatFloat(v/1e6, 'f', 2, 64) + "M"
	case v >= 1e4:
		return strconv.FormatFloat(v/1e3, 'f', 1, 64) + "k"
	case v >= 1e3:
		return strconv.FormatFloat(v/1e3, 'f', 2, 64) + "k"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// tickPlain and tickK format axis ticks: 0.25, 2.5, 40 / 0, 5k, 12.5k.
func tickPlain(v float64) string { return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64) }

func tickK(v float64) string {
	if v >= 1000 {
		return tickPlain(v/1000) + "k"
	}
	return tickPlain(v)
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}

// Chart draws two grouped bar charts, throughput and p99 per scenario,
// with a bar per series (full tiers, postgres tiers, floor), as a
// self-contained SVG document.
func Chart(runs []RunReport) string {
	const (
		width   = 980
		chartH  = 330
		top     = 78
		gap     = 40
		marginL = 92
		marginR = 24
	)
	height := top + 2*chartH + gap + 16
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n")
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	title := "quotad benchmark"
	if len(runs) > 0 {
		r := runs[0]
		title += fmt.Sprintf(" — %s loop, %d connections, %gs per run", r.Mode, r.Concurrency, r.DurationSec)
	}
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="18" font-weight="bold" fill="#222">%s</text>`+"\n", marginL, esc(title))

	// Legend: only the series that ran.
	present := map[string]bool{}
	for _, r := range runs {
		present[seriesOf(r)] = true
	}
	lx := marginL
	for _, s := range chartSeries {
		if !present[s.key] {
			continue
		}
		fmt.Fprintf(&b, `<rect x="%d" y="44" width="14" height="14" fill="%s"/>`+"\n", lx, s.color)
		fmt.Fprintf(&b, `<text x="%d" y="56" font-size="13" fill="#222">%s</text>`+"\n", lx+20, esc(s.label))
		lx += (width - marginL - marginR) / len(chartSeries) // fixed columns: the labels fit in 290px
	}

	panel := func(y0 int, heading, axis string, value func(RunReport) float64, label, tick func(float64) string) {
		groups := chartGroups(runs, value)
		x0, x1 := marginL, width-marginR
		py0, py1 := y0+26, y0+chartH-46 // plot area, top and bottom
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="15" font-weight="bold" fill="#222">%s</text>`+"\n", x0, y0+14, esc(heading))
		vmax := 0.0
		for _, g := range groups {
			for _, v := range g.vals {
				vmax = max(vmax, v)
			}
		}
		topV, step := niceCeil(vmax*1.08, 5)
		yOf := func(v float64) float64 { return float64(py1) - v/topV*float64(py1-py0) }
		// Grid and y tick labels.
		for i := 0; float64(i)*step <= topV+step/2; i++ {
			v := float64(i) * step
			y := yOf(v)
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3" stroke-width="1"/>`+"\n", x0, y, x1, y)
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" font-size="11" fill="#555" text-anchor="end">%s</text>`+"\n", x0-6, y+4, esc(tick(v)))
		}
		// Axes.
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1"/>`+"\n", x0, py0, x0, py1)
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1"/>`+"\n", x0, py1, x1, py1)
		cy := (py0 + py1) / 2
		fmt.Fprintf(&b, `<text x="22" y="%d" font-size="12" fill="#333" text-anchor="middle" transform="rotate(-90 22 %d)">%s</text>`+"\n", cy, cy, esc(axis))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="12" fill="#333" text-anchor="middle">scenario</text>`+"\n", (x0+x1)/2, py1+40)
		if len(groups) == 0 {
			return
		}
		gw := float64(x1-x0) / float64(len(groups))
		for gi, g := range groups {
			var keys []string
			for _, s := range chartSeries {
				if _, ok := g.vals[s.key]; ok {
					keys = append(keys, s.key)
				}
			}
			bw := math.Min(gw*0.8/float64(len(keys)), 56)
			gx := float64(x0) + gw*float64(gi)
			start := gx + (gw-bw*float64(len(keys)))/2
			for ki, k := range keys {
				v := g.vals[k]
				color := ""
				for _, s := range chartSeries {
					if s.key == k {
						color = s.color
					}
				}
				x := start + bw*float64(ki)
				y := yOf(v)
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
					x+1, y, bw-2, float64(py1)-y, color, esc(g.name+" "+k+": "+label(v)))
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="#222" text-anchor="middle">%s</text>`+"\n", x+bw/2, y-4, esc(label(v)))
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="12" fill="#222" text-anchor="middle">%s</text>`+"\n", gx+gw/2, py1+18, esc(g.name))
		}
	}
	panel(top, "Throughput (higher is better)", "requests/s", func(r RunReport) float64 { return r.RPS }, fmtShort, tickK)
	panel(top+chartH+gap, "p99 latency (lower is better)", "p99 latency (ms)", func(r RunReport) float64 { return r.Latency.P99 }, fmtMS, tickPlain)
	b.WriteString("</svg>\n")
	return b.String()
}
