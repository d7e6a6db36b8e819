// Package svgchart draws grouped bar charts as SVG: the bench report's
// chart and the console's usage and traffic charts share it, so both read
// the same way.
package svgchart

import (
	"encoding/xml"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Series is one kind of bar: its key in a Group's values, its legend
// label and its colour.
type Series struct{ Key, Label, Color string }

// Group is one place on the x axis and its bars' values by series key.
type Group struct {
	Name   string
	Values map[string]float64
}

// Panel is one chart: a heading, a y axis and a group of bars per x
// place, drawn in the box (X, Y, Width, Height) of the document.
type Panel struct {
	X, Y, Width, Height int
	Heading             string // "" for none
	Axis                string // the y axis's title, written sideways left of the ticks
	XAxis               string // the x axis's title, under the group names; "" for none
	Series              []Series
	Groups              []Group
	// Label formats a value for its bar's tooltip, and above the bar when
	// ValueLabels is set; Tick formats the y axis's ticks.
	Label, Tick func(float64) string
	ValueLabels bool
	// NameEvery writes every n-th group's name (0 or 1: all), for charts
	// with more groups than their names fit.
	NameEvery int
	// AxisX is where the sideways y axis title is centred.
	AxisX int
	// MaxBar caps a bar's width in pixels.
	MaxBar float64
}

// Draw writes p's SVG elements to b.
func (p Panel) Draw(b *strings.Builder) {
	x0, x1 := p.X, p.X+p.Width
	py0, py1 := p.Y+26, p.Y+p.Height-46 // plot area, top and bottom
	if p.Heading != "" {
		fmt.Fprintf(b, `<text x="%d" y="%d" font-size="15" font-weight="bold" fill="#222">%s</text>`+"\n", x0, p.Y+14, Esc(p.Heading))
	}
	vmax := 0.0
	for _, g := range p.Groups {
		for _, v := range g.Values {
			vmax = max(vmax, v)
		}
	}
	topV, step := NiceCeil(vmax*1.08, 5)
	yOf := func(v float64) float64 { return float64(py1) - v/topV*float64(py1-py0) }
	// Grid and y tick labels.
	for i := 0; float64(i)*step <= topV+step/2; i++ {
		v := float64(i) * step
		y := yOf(v)
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e3e3e3" stroke-width="1"/>`+"\n", x0, y, x1, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" font-size="11" fill="#555" text-anchor="end">%s</text>`+"\n", x0-6, y+4, Esc(p.Tick(v)))
	}
	// Axes.
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1"/>`+"\n", x0, py0, x0, py1)
	fmt.Fprintf(b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#333" stroke-width="1"/>`+"\n", x0, py1, x1, py1)
	cy := (py0 + py1) / 2
	fmt.Fprintf(b, `<text x="%d" y="%d" font-size="12" fill="#333" text-anchor="middle" transform="rotate(-90 %d %d)">%s</text>`+"\n", p.AxisX, cy, p.AxisX, cy, Esc(p.Axis))
	if p.XAxis != "" {
		fmt.Fprintf(b, `<text x="%d" y="%d" font-size="12" fill="#333" text-anchor="middle">%s</text>`+"\n", (x0+x1)/2, py1+40, Esc(p.XAxis))
	}
	if len(p.Groups) == 0 {
		return
	}
	maxBar := p.MaxBar
	if maxBar <= 0 {
		maxBar = 56
	}
	every := max(p.NameEvery, 1)
	gw := float64(x1-x0) / float64(len(p.Groups))
	for gi, g := range p.Groups {
		var keys []Series
		for _, s := range p.Series {
			if _, ok := g.Values[s.Key]; ok {
				keys = append(keys, s)
			}
		}
		gx := float64(x0) + gw*float64(gi)
		if len(keys) > 0 {
			bw := math.Min(gw*0.8/float64(len(keys)), maxBar)
			start := gx + (gw-bw*float64(len(keys)))/2
			for ki, s := range keys {
				v := g.Values[s.Key]
				x := start + bw*float64(ki)
				y := yOf(v)
				fmt.Fprintf(b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
					x+1, y, max(bw-2, 1), float64(py1)-y, s.Color, Esc(g.Name+" "+s.Key+": "+p.Label(v)))
				if p.ValueLabels {
					fmt.Fprintf(b, `<text x="%.1f" y="%.1f" font-size="11" fill="#222" text-anchor="middle">%s</text>`+"\n", x+bw/2, y-4, Esc(p.Label(v)))
				}
			}
		}
		if gi%every == 0 {
			fmt.Fprintf(b, `<text x="%.1f" y="%d" font-size="12" fill="#222" text-anchor="middle">%s</text>`+"\n", gx+gw/2, py1+18, Esc(g.Name))
		}
	}
}

// NiceCeil returns an axis top ≥ v and a tick step, both 1, 2, 2.5 or 5
// times a power of ten.
func NiceCeil(v float64, ticks int) (top, step float64) {
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

// Short formats a count compactly: 950, 12.3k, 1.25M.
func Short(v float64) string {
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

// TickPlain and TickK format axis ticks: 0.25, 2.5, 40 / 0, 5k, 12.5k.
func TickPlain(v float64) string { return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64) }

// TickK writes thousands with a k.
func TickK(v float64) string {
	if v >= 1000 {
		return TickPlain(v/1000) + "k"
	}
	return TickPlain(v)
}

// Esc escapes s for SVG text and attributes.
func Esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s)) // a strings.Builder does not fail
	return b.String()
}
