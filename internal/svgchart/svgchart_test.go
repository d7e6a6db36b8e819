package svgchart_test

import (
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/quotad/quotad/internal/svgchart"
)

func TestNiceCeil(t *testing.T) {
	for _, c := range []struct{ v, top, step float64 }{{9.7, 10, 2}, {31234, 40000, 10000}, {0.42, 0.5, 0.1}, {0, 1, 0.2}} {
		top, step := svgchart.NiceCeil(c.v, 5)
		if math.Abs(top-c.top) > 1e-9 || math.Abs(step-c.step) > 1e-9 {
			t.Errorf("NiceCeil(%v) = %v, %v; want %v, %v", c.v, top, step, c.top, c.step)
		}
	}
}

func TestPanelIsWellFormed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		groups []svgchart.Group
		rects  int
	}{
		{"none", nil, 0},
		{"one", []svgchart.Group{{Name: `<&>"`, Values: map[string]float64{"a": 3}}}, 1},
		{"two series, a zero", []svgchart.Group{{Name: "x", Values: map[string]float64{"a": 0, "b": 1e12}}, {Name: "y", Values: map[string]float64{"b": 2}}}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			b.WriteString(`<svg xmlns="http://www.w3.org/2000/svg">`)
			svgchart.Panel{
				X: 40, Y: 0, Width: 300, Height: 200, Axis: "credits", AxisX: 12,
				Series: []svgchart.Series{{Key: "a", Color: "#111"}, {Key: "b", Color: "#222"}},
				Groups: tc.groups, Label: svgchart.Short, Tick: svgchart.TickK, NameEvery: 2,
			}.Draw(&b)
			b.WriteString(`</svg>`)
			d := xml.NewDecoder(strings.NewReader(b.String()))
			rects := 0
			for {
				tok, err := d.Token()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("not well-formed: %v\n%s", err, b.String())
				}
				if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
					rects++
				}
			}
			if rects != tc.rects {
				t.Errorf("%d bars, want %d", rects, tc.rects)
			}
		})
	}
}
