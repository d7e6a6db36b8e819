package bench

import (
	"fmt"
	"strings"

	"github.com/quotad/quotad/internal/svgchart"
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
	fmt.Fprintf(&b, `<text x="%d" y="28" font-size="18" font-weight="bold" fill="#222">%s</text>`+"\n", marginL, svgchart.Esc(title))

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
		fmt.Fprintf(&b, `<text x="%d" y="56" font-size="13" fill="#222">%s</text>`+"\n", lx+20, svgchart.Esc(s.label))
		lx += (width - marginL - marginR) / len(chartSeries) // fixed columns: the labels fit in 290px
	}

	panel := func(y0 int, heading, axis string, value func(RunReport) float64, label, tick func(float64) string) {
		p := svgchart.Panel{
			X: marginL, Y: y0, Width: width - marginL - marginR, Height: chartH,
			Heading: heading, Axis: axis, XAxis: "scenario", AxisX: 22,
			Label: label, Tick: tick, ValueLabels: true,
		}
		for _, s := range chartSeries {
			p.Series = append(p.Series, svgchart.Series{Key: s.key, Label: s.label, Color: s.color})
		}
		for _, g := range chartGroups(runs, value) {
			p.Groups = append(p.Groups, svgchart.Group{Name: g.name, Values: g.vals})
		}
		p.Draw(&b)
	}
	panel(top, "Throughput (higher is better)", "requests/s", func(r RunReport) float64 { return r.RPS }, svgchart.Short, svgchart.TickK)
	panel(top+chartH+gap, "p99 latency (lower is better)", "p99 latency (ms)", func(r RunReport) float64 { return r.Latency.P99 }, fmtMS, svgchart.TickPlain)
	b.WriteString("</svg>\n")
	return b.String()
}
