package bench

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLatencyOfKnownHistogram(t *testing.T) {
	h := NewHistogram()
	for v := int64(1); v <= 10000; v++ { // 1µs .. 10ms, once each
		if err := h.RecordValue(v); err != nil {
			t.Fatal(err)
		}
	}
	l := LatencyOf(h, 10000)
	// 3 significant digits: a percentile is within 0.1% of the exact one.
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"p50", l.P50, 5.0}, {"p90", l.P90, 9.0}, {"p99", l.P99, 9.9}, {"p99.9", l.P999, 9.99}, {"max", l.Max, 10.0}, {"mean", l.Mean, 5.0005},
	} {
		if math.Abs(c.got-c.want) > c.want*0.001+1e-9 {
			t.Errorf("%s = %v ms, want %v ms ±0.1%%", c.name, c.got, c.want)
		}
	}
	if l.Max != 10.0 {
		t.Errorf("max = %v, want the exact 10ms", l.Max)
	}
	if got := LatencyOf(NewHistogram(), 0); got != (Latency{}) {
		t.Errorf("empty histogram: %+v, want zeros", got)
	}
	// A value past the range is clamped by the worker, not dropped.
	var w worker
	w.hist = NewHistogram()
	w.record(2*time.Minute, 200, 0)
	if w.hist.TotalCount() != 1 || w.max != 120_000_000 {
		t.Errorf("clamped record: count %d max %d", w.hist.TotalCount(), w.max)
	}
}

const metricsBefore = `# HELP quotad_l1_hits_total Usage reads answered from the in-process snapshot.
# TYPE quotad_l1_hits_total counter
quotad_l1_hits_total 1000
quotad_l1_misses_total 200
quotad_l2_reads_total 200
quotad_redis_roundtrips_total 5000
quotad_redis_commands_total 6000
quotad_flush_rows_written_total{table="counters"} 10
quotad_flush_rows_written_total{table="usage_ledger"} 100
quotad_flush_lag_seconds 0.25
quotad_consume_shed_total 7
process_cpu_seconds_total 10
go_info{version="go1.26.8"} 1
quotad_http_requests_total{code="200",method="POST",route="/v1/check"} 500
weird_total{path="a}b c",q="x\"y"} 3 1700000000000
`

const metricsAfter = `quotad_l1_hits_total 10000
quotad_l1_misses_total 1200
quotad_l2_reads_total 1200
quotad_redis_roundtrips_total 7000
quotad_redis_commands_total 9000
quotad_flush_rows_written_total{table="counters"} 60
quotad_flush_rows_written_total{table="usage_ledger"} 1100
quotad_flush_rows_written_total{table="subjects"} 40
quotad_flush_lag_seconds 0.5
quotad_consume_shed_total 57
process_cpu_seconds_total 25
go_info{version="go1.26.8"} 1
quotad_http_requests_total{code="200",method="POST",route="/v1/check"} 10500
quotad_http_requests_total{code="503",method="POST",route="/v1/check"} 2
weird_total{path="a}b c",q="x\"y"} 4 1700000000000
`

func TestParseMetricsAndDeltas(t *testing.T) {
	before, err := ParseMetrics(strings.NewReader(metricsBefore))
	if err != nil {
		t.Fatal(err)
	}
	after, err := ParseMetrics(strings.NewReader(metricsAfter))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := Delta(before, after, MetricFlushRows); !ok || v != 1090 {
		t.Errorf("rows delta = %v %v, want 1090 (a label set new after counts from 0)", v, ok)
	}
	if v, ok := Delta(before, after, "weird_total"); !ok || v != 1 {
		t.Errorf("weird delta = %v %v, want 1 (quoted } and space in a label)", v, ok)
	}
	if v, ok := Delta(before, after, MetricHTTPRequests); !ok || v != 10002 {
		t.Errorf("http delta = %v %v", v, ok)
	}
	if _, ok := Delta(before, after, "absent_total"); ok {
		t.Error("absent metric has a delta")
	}
	if got := LabelValue(after.Labels[MetricGoInfo], "version"); got != "go1.26.8" {
		t.Errorf("go_info version = %q", got)
	}
	if got := LabelValue(`{path="a}b c",q="x\"y"}`, "q"); got != `x"y` {
		t.Errorf("escaped label = %q", got)
	}
	if DetectTiers(after) != "full" {
		t.Error("full tiers not detected")
	}

	s := ComputeStats(before, after, 10000, 1000, 10*time.Second, ptr(0.5), false)
	want := map[string]*float64{
		"l1 hit ratio":     ptr(9000.0 / 10000),
		"l2 reads/req":     ptr(0.1),
		"redis trips/req":  ptr(0.2),
		"redis cmds/req":   ptr(0.3),
		"rows/1k consumes": ptr(1090),
		"cpu cores":        ptr(1.5),
		"flush lag":        ptr(0.5),
		"shed share":       ptr(50.0 / 1050), // 50 shed of 1,050 consume attempts
		"server requests":  ptr(10002),
	}
	got := map[string]*float64{
		"l1 hit ratio": s.L1HitRatio, "l2 reads/req": s.L2ReadsPerRequest, "redis trips/req": s.RedisTripsPerReq,
		"redis cmds/req": s.RedisCmdsPerReq, "rows/1k consumes": s.PGRowsPer1kConsumes, "cpu cores": s.CPUCores,
		"flush lag": s.FlushLagMaxSec, "shed share": s.ShedShare, "server requests": s.ServerRequests,
	}
	for k, w := range want {
		if got[k] == nil || math.Abs(*got[k]-*w) > 1e-9 {
			t.Errorf("%s = %v, want %v", k, deref(got[k]), *w)
		}
	}

	// Postgres-only tiers: no L1, Redis or flusher metrics.
	pg, err := ParseMetrics(strings.NewReader("process_cpu_seconds_total 3\n# EOF\n"))
	if err != nil {
		t.Fatal(err)
	}
	if DetectTiers(pg) != "postgres" {
		t.Error("postgres tiers not detected")
	}
	ps := ComputeStats(pg, pg, 1000, 100, time.Second, nil, true)
	if ps.L1HitRatio != nil || ps.RedisTripsPerReq != nil || ps.RedisCmdsPerReq != nil || ps.FlushLagMaxSec != nil {
		t.Errorf("postgres tiers have tier figures: %+v", ps)
	}
	if ps.PGRowsPer1kConsumes == nil || *ps.PGRowsPer1kConsumes != 2000 || !ps.PGRowsByDesign {
		t.Errorf("postgres rows = %v by design %v, want 2000 by design", deref(ps.PGRowsPer1kConsumes), ps.PGRowsByDesign)
	}
	if cs := ComputeStats(pg, pg, 1000, 0, time.Second, nil, true); cs.PGRowsPer1kConsumes != nil {
		t.Error("rows per consume without consumes")
	}

	for _, bad := range []string{"novalue\n", `x{a="b" 1` + "\n", "x 1 2 3\n", "x abc\n"} {
		if _, err := ParseMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMetrics(%q) accepted", bad)
		}
	}
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

// checkScenarioBody checks one request (or batch item) body.
func checkScenarioBody(t *testing.T, name string, cfg GenConfig, b []byte) {
	t.Helper()
	var body struct {
		Subject string `json:"subject"`
		Amount  *int64 `json:"amount"`
		Mode    string `json:"mode"`
		Usage   *struct {
			Model        string `json:"model"`
			InputTokens  int64  `json:"input_tokens"`
			OutputTokens int64  `json:"output_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatalf("%s: %s: %v", name, b, err)
	}
	if !strings.HasPrefix(body.Subject, HotPrefix) && !strings.HasPrefix(body.Subject, NearPrefix) {
		t.Fatalf("%s: subject %q", name, body.Subject)
	}
	if body.Usage != nil && (body.Usage.Model != cfg.Model || body.Usage.InputTokens != 1000 || body.Usage.OutputTokens != 200) {
		t.Fatalf("%s: usage %+v", name, *body.Usage)
	}
	if body.Usage == nil && (body.Amount == nil || *body.Amount != 1) {
		t.Fatalf("%s: amount missing in %s", name, b)
	}
}

func TestScenarioBodiesAreValidJSON(t *testing.T) {
	for _, dist := range []string{"uniform", "zipf"} {
		cfg := DefaultGenConfig()
		cfg.Dist, cfg.Subjects, cfg.Model = dist, 50, `odd "model"\`
		for _, sc := range append(append([]Scenario(nil), Scenarios...), RoundRobin(Scenarios)) {
			g := NewGen(cfg, 7)
			for range 300 {
				r := sc.Next(g, make([]byte, 0, bodyCap))
				bodies := [][]byte{r.Body}
				if r.Path == "/v1/consume/batch" {
					var batch struct{ Events []json.RawMessage }
					if err := json.Unmarshal(r.Body, &batch); err != nil || len(batch.Events) != BatchItems || r.Items != BatchItems {
						t.Fatalf("%s: %d events, %d items (%v)", sc.Name, len(batch.Events), r.Items, err)
					}
					bodies = bodies[:0]
					for _, e := range batch.Events {
						bodies = append(bodies, e)
					}
				}
				for _, b := range bodies {
					checkScenarioBody(t, sc.Name, cfg, b)
				}
				if want := r.Path == "/v1/consume" || r.Path == "/v1/consume/batch"; r.Consume != want {
					t.Fatalf("%s: path %s consume %v", sc.Name, r.Path, r.Consume)
				}
				if r.Then != nil {
					next, ok := r.Then([]byte(`{"id":"rsv_abc","granted":true}`), nil)
					if !ok || next.Path != "/v1/reservations/rsv_abc/commit" || !next.Consume || string(next.Body) != `{"amount":1}` {
						t.Fatalf("%s: follow-up %s %s consume %v", sc.Name, next.Path, next.Body, next.Consume)
					}
					if _, ok := r.Then([]byte(`{"granted":false}`), nil); ok {
						t.Fatalf("%s: a refused reservation led to a commit", sc.Name)
					}
				}
			}
		}
	}
	// Per-scenario shapes.
	g := NewGen(DefaultGenConfig(), 1)
	shapes := map[string]string{
		"check-hot": "/v1/check", "check-near-limit": "/v1/check", "consume-record": "/v1/consume",
		"consume-enforce": "/v1/consume", "consume-priced": "/v1/consume", "floor": "/v1/floor",
	}
	for name, path := range shapes {
		sc, ok := LookupScenario(name)
		if !ok {
			t.Fatalf("no scenario %s", name)
		}
		r := sc.Next(g, nil)
		if r.Path != path {
			t.Errorf("%s: path %s, want %s", name, r.Path, path)
		}
		if name == "consume-enforce" && !strings.Contains(string(r.Body), `"mode":"enforce"`) {
			t.Errorf("consume-enforce body %s", r.Body)
		}
		if name == "check-near-limit" && !strings.Contains(string(r.Body), NearPrefix) {
			t.Errorf("check-near-limit body %s", r.Body)
		}
	}
	// mixed is about 10% consumes.
	mixed, _ := LookupScenario("mixed")
	consumes := 0
	for range 10000 {
		if mixed.Next(g, nil).Consume {
			consumes++
		}
	}
	if consumes < 800 || consumes > 1200 {
		t.Errorf("mixed: %d consumes in 10000", consumes)
	}
	// zipf favours the first subjects; every draw is in range.
	zc := DefaultGenConfig()
	zc.Dist, zc.Subjects = "zipf", 1000
	zg := NewGen(zc, 3)
	low := 0
	for range 10000 {
		i := zg.Subject()
		if i < 0 || i >= 1000 {
			t.Fatalf("zipf subject %d out of range", i)
		}
		if i < 10 {
			low++
		}
	}
	if low < 3000 {
		t.Errorf("zipf: only %d of 10000 draws in the first 10 subjects", low)
	}
	if _, err := ParseScenarios("check-hot,nope"); err == nil {
		t.Error("unknown scenario accepted")
	}
}

func sampleRuns() []RunReport {
	mk := func(target, tiers, scenario string, rps, p99 float64) RunReport {
		return RunReport{Target: target, Tiers: tiers, Scenario: scenario, Mode: "closed", Concurrency: 64, DurationSec: 15,
			RPS: rps, Latency: Latency{P50: p99 / 3, P90: p99 / 2, P99: p99, P999: p99 * 2, Max: p99 * 3},
			Requests: int64(rps * 15), OK: int64(rps * 15), Status: map[string]int64{"200": int64(rps * 15)}}
	}
	runs := []RunReport{
		mk("full", "full", "check-hot", 31234, 4.2),
		mk("full", "full", "consume-record", 18000, 8.9),
		mk("full", "full", "floor", 52000, 2.1),
		mk("postgres", "postgres", "check-hot", 6000, 25),
		mk("postgres", "postgres", "consume-record", 2500, 61),
		mk("full", "full", `odd <&> "name"`, 10, 0.5),
	}
	runs[1].Server.L1HitRatio = ptr(0.93)
	runs[1].Server.PGRowsPer1kConsumes = ptr(1042)
	runs[4].Server.PGRowsPer1kConsumes = ptr(2000)
	runs[4].Server.PGRowsByDesign = true
	runs[4].Status["503"] = 3
	runs[4].Requests += 3
	runs[4].TransportErrors = map[string]int64{"timeout": 1}
	return runs
}

func TestChartIsWellFormedXML(t *testing.T) {
	for _, runs := range [][]RunReport{sampleRuns(), nil, sampleRuns()[:1]} {
		svg := Chart(runs)
		d := xml.NewDecoder(strings.NewReader(svg))
		var rects, texts int
		root := ""
		for {
			tok, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("chart of %d runs is not well-formed: %v\n%s", len(runs), err, svg)
			}
			if se, ok := tok.(xml.StartElement); ok {
				if root == "" {
					root = se.Name.Local
				}
				switch se.Name.Local {
				case "rect":
					rects++
				case "text":
					texts++
				}
			}
		}
		if root != "svg" {
			t.Errorf("root element %q", root)
		}
		if len(runs) == len(sampleRuns()) {
			// background + 3 legend swatches + 2 charts × 6 bars
			if rects != 1+3+12 {
				t.Errorf("%d rects", rects)
			}
			for _, want := range []string{"full tiers", "postgres tiers", "floor", "requests/s", "p99 latency (ms)", "31.2k", "4.20"} {
				if !strings.Contains(svg, want) {
					t.Errorf("chart lacks %q", want)
				}
			}
		}
	}
}

func TestTableAndMarkdown(t *testing.T) {
	runs := sampleRuns()
	tab := Table(runs)
	lines := strings.Split(strings.TrimRight(tab, "\n"), "\n")
	if len(lines) != 2+len(runs) {
		t.Fatalf("table has %d lines:\n%s", len(lines), tab)
	}
	if !strings.Contains(lines[2], "31,234") || !strings.Contains(lines[2], dash) {
		t.Errorf("row: %s", lines[2])
	}
	if !strings.Contains(tab, "2000*") || !strings.Contains(tab, "93.0%") {
		t.Errorf("table:\n%s", tab)
	}
	notes := strings.Join(Footnotes(runs), "\n")
	if !strings.Contains(notes, "503×3, timeout×1") || !strings.Contains(notes, "by design") {
		t.Errorf("footnotes:\n%s", notes)
	}
	rep := &Report{Date: "2026-11-27", Command: "quotabench suite -d 15s", Runs: runs, Machine: Machine{Cores: 2, MemTotalBytes: 1 << 30}}
	md := rep.Markdown()
	for _, want := range []string{"| target | scenario |", "| --- | --- | ---: |", "quotabench suite -d 15s", "2 cores"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	dir := t.TempDir()
	rep.Runs[0].Hist = NewHistogram()
	_ = rep.Runs[0].Hist.RecordValue(1234)
	files, err := rep.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 {
		t.Errorf("wrote %v", files)
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil || !json.Valid(b) {
		t.Errorf("report.json: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "raw", "full-check-hot.hgrm")); err != nil {
		t.Error(err)
	}
	if got := CommandLine([]string{"quotabench", "suite", "-note", "it's pinned"}); got != `quotabench suite -note 'it'\''s pinned'` {
		t.Errorf("CommandLine = %s", got)
	}
}

func TestMachineInfo(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	if err := os.WriteFile(p, []byte("MemTotal:       24684084 kB\nMemFree:        22942052 kB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := memTotal(p); got != 24684084*1024 {
		t.Errorf("memTotal = %d", got)
	}
	if m := CollectMachine(); m.Cores < 1 || m.GoVersion == "" {
		t.Errorf("machine %+v", m)
	}
}

func TestCountCPUList(t *testing.T) {
	for list, want := range map[string]int{"0-1": 2, "0": 1, "0-3,8,10-11": 7, "": 0, "3-1": 0, "x": 0} {
		if got := countCPUList(list); got != want {
			t.Errorf("countCPUList(%q) = %d, want %d", list, got, want)
		}
	}
}
