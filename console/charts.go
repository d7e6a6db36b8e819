package console

import (
	"fmt"
	"strings"

	"github.com/quotad/quotad/internal/svgchart"
)

// Charts are drawn on the server with the bench report's code, as inline
// SVG that scales to the page's width (viewBox, no fixed size).

func chartDoc(width, height int, label string, draw func(*strings.Builder)) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 %d %d" role="img" aria-label="%s" font-family="system-ui, sans-serif">`+"\n", width, height, svgchart.Esc(label))
	draw(&b)
	b.WriteString("</svg>\n")
	return b.String()
}

// usageSVG charts a meter's usage per UTC day.
func usageSVG(u usageSeries, days int) string {
	const width, height = 960, 260
	p := svgchart.Panel{
		X: 70, Y: 0, Width: width - 70 - 12, Height: height, AxisX: 16,
		Axis: u.Meter + " per day (UTC)", Label: svgchart.Short, Tick: svgchart.TickK,
		Series:    []svgchart.Series{{Key: "used", Label: "used", Color: "#4e79a7"}},
		NameEvery: max(days/6, 1), MaxBar: 24,
	}
	for _, d := range u.Days {
		p.Groups = append(p.Groups, svgchart.Group{Name: shortDay(d.Day), Values: map[string]float64{"used": float64(d.Used)}})
	}
	return chartDoc(width, height, fmt.Sprintf("%s used per day over the last %d days: %d in all", u.Meter, days, u.Total), p.Draw)
}

// shortDay turns 2026-12-03 into 12-03.
func shortDay(d string) string {
	if len(d) == 10 {
		return d[5:]
	}
	return d
}

// trafficSVG charts this instance's requests and refusals per second.
func trafficSVG(rs []rate) string {
	const width, height = 960, 240
	p := svgchart.Panel{
		X: 70, Y: 0, Width: width - 70 - 12, Height: height, AxisX: 16,
		Axis: "per second", Label: svgchart.Short, Tick: svgchart.TickK, MaxBar: 12,
		Series: []svgchart.Series{
			{Key: "requests", Label: "requests", Color: "#4e79a7"},
			{Key: "refused", Label: "refused or failed (4xx, 5xx)", Color: "#e15759"},
		},
		NameEvery: max(len(rs)/8, 1),
	}
	for _, r := range rs {
		p.Groups = append(p.Groups, svgchart.Group{Name: r.at.UTC().Format("15:04"), Values: map[string]float64{"requests": r.requests, "refused": r.refused}})
	}
	return chartDoc(width, height, "requests and refusals per second on this instance, in 5 s steps (UTC)", p.Draw)
}
