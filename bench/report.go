package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"
)

// Report is everything a suite (or a single run) measured.
type Report struct {
	Date     string      `json:"date"` // YYYY-MM-DD, the results folder
	Started  time.Time   `json:"started"`
	Finished time.Time   `json:"finished"`
	Command  string      `json:"command"`
	Machine  Machine     `json:"machine"`
	Settings Settings    `json:"settings"`
	Targets  []Target    `json:"targets"`
	Runs     []RunReport `json:"runs"`
	Notes    []string    `json:"notes,omitempty"`
}

// Settings are the load settings shared by the runs.
type Settings struct {
	Mode        string        `json:"mode"`
	Concurrency int           `json:"concurrency"`
	Rate        float64       `json:"rate,omitempty"`
	Duration    string        `json:"duration"`
	Warmup      string        `json:"warmup"`
	FlushWait   string        `json:"flush_wait"`
	Seed        uint64        `json:"seed"`
	Gen         GenConfigJSON `json:"requests"`
}

// GenConfigJSON is GenConfig as reported.
type GenConfigJSON struct {
	Subjects     int    `json:"subjects"`
	Dist         string `json:"dist"`
	Amount       int64  `json:"amount"`
	Model        string `json:"model"`
	InputTokens  int64  `json:"input_tokens"`
	OutputTokens int64  `json:"output_tokens"`
}

func genJSON(c GenConfig) GenConfigJSON {
	return GenConfigJSON(c)
}

// Machine is where the client ran (quotad ran on the same machine under
// make bench).
type Machine struct {
	Cores          int    `json:"cores"`          // online CPUs of the machine
	ClientNumCPU   int    `json:"client_num_cpu"` // runtime.NumCPU of quotabench: its affinity mask
	GOMAXPROCS     int    `json:"client_gomaxprocs"`
	ClientCPUs     string `json:"client_cpus,omitempty"` // the client's affinity
	MemTotalBytes  int64  `json:"mem_total_bytes"`
	CPUModel       string `json:"cpu_model,omitempty"`
	GoVersion      string `json:"go_version"`
	OS             string `json:"os"`
	Arch           string `json:"arch"`
	Hostname       string `json:"hostname,omitempty"`
	KernelRelease  string `json:"kernel,omitempty"`
	PinningSummary string `json:"pinning,omitempty"` // what make bench pinned where (-pinning)
}

// Target is one quotad instance under test.
type Target struct {
	Label      string   `json:"label"`
	URL        string   `json:"url"`
	Tiers      string   `json:"tiers"` // "full" or "postgres", from its /metrics
	GoVersion  string   `json:"go_version,omitempty"`
	GOMAXPROCS *float64 `json:"gomaxprocs,omitempty"`
}

// Latency is a run's latency summary in milliseconds.
type Latency struct {
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p99_9_ms"`
	Max  float64 `json:"max_ms"`
	Mean float64 `json:"mean_ms"`
}

// LatencyOf extracts the summary from a microsecond histogram; exactMax
// (µs), when positive, replaces the histogram's rounded maximum.
func LatencyOf(h *hdrhistogram.Histogram, exactMax int64) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	q := h.ValueAtPercentilesSlice([]float64{50, 90, 99, 99.9})
	l := Latency{
		P50:  float64(q[0]) / 1000,
		P90:  float64(q[1]) / 1000,
		P99:  float64(q[2]) / 1000,
		P999: float64(q[3]) / 1000,
		Max:  float64(h.Max()) / 1000,
		Mean: h.Mean() / 1000,
	}
	if exactMax > 0 {
		l.Max = float64(exactMax) / 1000
	}
	return l
}

// RunReport is one scenario on one target.
type RunReport struct {
	Target          string            `json:"target"`
	Tiers           string            `json:"tiers"`
	URL             string            `json:"url"`
	Scenario        string            `json:"scenario"`
	Description     string            `json:"description"`
	Mode            string            `json:"mode"`
	Concurrency     int               `json:"concurrency"`
	Rate            float64           `json:"rate,omitempty"`
	DurationSec     float64           `json:"duration_seconds"`
	ElapsedSec      float64           `json:"elapsed_seconds"`
	Requests        int64             `json:"requests"`
	OK              int64             `json:"ok"`
	Consumes        int64             `json:"consumes"`
	RPS             float64           `json:"requests_per_second"`
	Latency         Latency           `json:"latency"`
	Status          map[string]int64  `json:"status"`
	TransportErrors map[string]int64  `json:"transport_errors,omitempty"`
	ErrorSamples    map[string]string `json:"transport_error_samples,omitempty"`
	Scheduled       int64             `json:"scheduled,omitempty"`
	Unsent          int64             `json:"unsent,omitempty"`
	FlushWaitSec    float64           `json:"flush_wait_seconds,omitempty"`
	Server          ServerStats       `json:"server"`

	Hist *hdrhistogram.Histogram `json:"-"`
}

// NewRunReport fills the client side of a RunReport from a LoadResult.
func NewRunReport(target, tiers string, o LoadOptions, r *LoadResult) RunReport {
	rr := RunReport{
		Target:          target,
		Tiers:           tiers,
		URL:             o.URL,
		Scenario:        o.Scenario.Name,
		Description:     o.Scenario.Description,
		Mode:            o.Mode,
		Concurrency:     o.Concurrency,
		DurationSec:     o.Duration.Seconds(),
		ElapsedSec:      r.Elapsed.Seconds(),
		Requests:        r.Requests,
		OK:              r.OK,
		Consumes:        r.Consumes,
		RPS:             r.RPS(),
		Latency:         LatencyOf(r.Hist, r.MaxMicros),
		Status:          map[string]int64{},
		TransportErrors: r.TransportErrors,
		ErrorSamples:    r.ErrorSamples,
		Scheduled:       r.Scheduled,
		Unsent:          r.Unsent,
		Hist:            r.Hist,
	}
	if o.Mode == "open" {
		rr.Rate = o.Rate
	}
	for code, n := range r.Status {
		rr.Status[strconv.Itoa(code)] = n
	}
	return rr
}

// Errors is non-2xx responses plus transport errors.
func (r RunReport) Errors() int64 {
	n := r.Requests - r.OK
	for _, c := range r.TransportErrors {
		n += c
	}
	return n
}

// ErrorDetail lists the errors by kind, e.g. "503×12, timeout×1".
func (r RunReport) ErrorDetail() string {
	var parts []string
	codes := make([]string, 0, len(r.Status))
	for code := range r.Status {
		codes = append(codes, code)
	}
	sort.Strings(codes)
	for _, code := range codes {
		if !strings.HasPrefix(code, "2") {
			parts = append(parts, fmt.Sprintf("%s×%d", code, r.Status[code]))
		}
	}
	kinds := make([]string, 0, len(r.TransportErrors))
	for k := range r.TransportErrors {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s×%d", k, r.TransportErrors[k]))
	}
	return strings.Join(parts, ", ")
}

// CollectMachine describes this machine.
func CollectMachine() Machine {
	m := Machine{
		Cores:        runtime.NumCPU(),
		ClientNumCPU: runtime.NumCPU(),
		GOMAXPROCS:   runtime.GOMAXPROCS(0),
		GoVersion:    runtime.Version(),
		OS:           runtime.GOOS,
		Arch:         runtime.GOARCH,
	}
	// runtime.NumCPU counts the CPUs this process may use, which is 1 when
	// make bench pins it: count the machine's online CPUs instead.
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil {
		if n := countCPUList(strings.TrimSpace(string(b))); n > 0 {
			m.Cores = n
		}
	}
	m.Hostname, _ = os.Hostname()
	m.MemTotalBytes = memTotal("/proc/meminfo")
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.KernelRelease = strings.TrimSpace(string(b))
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		var cpus []string
		for i := range 1024 {
			if set.IsSet(i) {
				cpus = append(cpus, strconv.Itoa(i))
			}
		}
		m.ClientCPUs = strings.Join(cpus, ",")
	}
	return m
}

// countCPUList counts a kernel CPU list such as "0-3,8,10-11"; 0 if
// malformed.
func countCPUList(list string) int {
	n := 0
	for _, part := range strings.Split(list, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}

// memTotal reads MemTotal (kB) from a meminfo file, in bytes; 0 if unknown.
func memTotal(path string) int64 {
	v := procField(path, "MemTotal")
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0
	}
	if len(f) > 1 && strings.EqualFold(f[1], "kB") {
		n *= 1024
	}
	return n
}

// procField returns the value of the first "key: value" line of a /proc
// file.
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// ---------------------------------------------------------------- formatting

const dash = "–" // a figure quotad does not expose

// fmtMS formats milliseconds with about three significant digits.
func fmtMS(v float64) string {
	switch {
	case v <= 0:
		return "0"
	case v < 1:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

// fmtInt formats with thousands separators.
func fmtInt(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return dash
	}
	n := int64(math.Round(v))
	neg := n < 0
	if neg {
		n = -n
	}
	s := strconv.FormatInt(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func fmtOpt(v *float64, f func(float64) string) string {
	if v == nil || math.IsNaN(*v) {
		return dash
	}
	return f(*v)
}

func fmtPct(v float64) string  { return strconv.FormatFloat(v*100, 'f', 1, 64) + "%" }
func fmtF2(v float64) string   { return strconv.FormatFloat(v, 'f', 2, 64) }
func fmtLag(v float64) string  { return strconv.FormatFloat(v, 'f', 2, 64) }
func fmtRows(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) }

// Columns of the result table.
var tableHeader = []string{
	"target", "scenario", "req/s", "consumes/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
	"errors", "L1 hit", "redis rt/req", "redis cmd/req", "PG rows/1k consumes", "flush lag max s", "shed", "quotad CPU",
}

// TableRows renders the runs as table cells.
func TableRows(runs []RunReport) [][]string {
	rows := make([][]string, 0, len(runs))
	for _, r := range runs {
		rowsCell := fmtOpt(r.Server.PGRowsPer1kConsumes, fmtRows)
		if r.Server.PGRowsByDesign {
			rowsCell += "*"
		}
		rows = append(rows, []string{
			r.Target, r.Scenario, fmtInt(r.RPS), consumesCell(r),
			fmtMS(r.Latency.P50), fmtMS(r.Latency.P90), fmtMS(r.Latency.P99), fmtMS(r.Latency.P999), fmtMS(r.Latency.Max),
			fmtInt(float64(r.Errors())),
			fmtOpt(r.Server.L1HitRatio, fmtPct),
			fmtOpt(r.Server.RedisTripsPerReq, fmtF2),
			fmtOpt(r.Server.RedisCmdsPerReq, fmtF2),
			rowsCell,
			fmtOpt(r.Server.FlushLagMaxSec, fmtLag),
			fmtOpt(r.Server.ShedShare, fmtPct),
			fmtOpt(r.Server.CPUCores, fmtF2),
		})
	}
	return rows
}

// consumesCell is the consumes acknowledged per second (a batch counts
// each item), or a dash for a run without consumes.
func consumesCell(r RunReport) string {
	if r.Consumes == 0 || r.ElapsedSec <= 0 {
		return dash
	}
	return fmtInt(float64(r.Consumes) / r.ElapsedSec)
}

// Table renders the runs as an aligned text table: the first two columns
// left-aligned, figures right-aligned.
func Table(runs []RunReport) string {
	rows := TableRows(runs)
	width := make([]int, len(tableHeader))
	for i, h := range tableHeader {
		width[i] = runeLen(h)
	}
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], runeLen(c))
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		for i, c := range cells {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", width[i]-runeLen(c))
			if i < 2 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		b.WriteString("\n")
	}
	line(tableHeader)
	sep := make([]string, len(width))
	for i, w := range width {
		sep[i] = strings.Repeat("-", w)
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
	return strings.TrimRight(b.String(), " ")
}

func runeLen(s string) int { return len([]rune(s)) }

// Footnotes explains the table's marks and lists the errors.
func Footnotes(runs []RunReport) []string {
	var notes []string
	byDesign := false
	for _, r := range runs {
		byDesign = byDesign || r.Server.PGRowsByDesign
		if d := r.ErrorDetail(); d != "" {
			notes = append(notes, fmt.Sprintf("errors %s/%s: %s", r.Target, r.Scenario, d))
		}
		if r.Unsent > 0 {
			notes = append(notes, fmt.Sprintf("open loop %s/%s: %s of %s scheduled requests not sent by the end (quotad fell behind the rate; their latency is not in the percentiles)",
				r.Target, r.Scenario, fmtInt(float64(r.Unsent)), fmtInt(float64(r.Scheduled))))
		}
		if r.FlushWaitSec > 0 {
			notes = append(notes, fmt.Sprintf("flush %s/%s: the run's consumes were in Postgres %.1fs after the load stopped", r.Target, r.Scenario, r.FlushWaitSec))
		}
		if fe := r.Server.FlushErrors; fe != nil && *fe > 0 {
			notes = append(notes, fmt.Sprintf("flush errors %s/%s: %.0f failed flush attempts in quotad (quotad_flush_errors_total; see its log)", r.Target, r.Scenario, *fe))
		}
		kinds := make([]string, 0, len(r.ErrorSamples))
		for k := range r.ErrorSamples {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			notes = append(notes, fmt.Sprintf("  %s/%s %s sample: %s", r.Target, r.Scenario, k, r.ErrorSamples[k]))
		}
	}
	if byDesign {
		notes = append(notes, "* Postgres-only tiers: 2 rows per consume (counter upsert + ledger row) by design, not measured (no flusher metrics)")
	}
	notes = append(notes, dash+" = not exposed by that quotad (the Postgres-only tiers have no L1, Redis or flusher) or no consumes in the run")
	return notes
}

// Markdown renders the report as markdown: the table, machine, command.
func (rep *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# quotad benchmark, %s\n\n", rep.Date)
	b.WriteString("| " + strings.Join(tableHeader, " | ") + " |\n")
	b.WriteString("|")
	for i := range tableHeader {
		if i < 2 {
			b.WriteString(" --- |")
		} else {
			b.WriteString(" ---: |")
		}
	}
	b.WriteString("\n")
	for _, r := range TableRows(rep.Runs) {
		for i := range r {
			r[i] = strings.ReplaceAll(r[i], "|", `\|`)
		}
		b.WriteString("| " + strings.Join(r, " | ") + " |\n")
	}
	b.WriteString("\n")
	for _, n := range Footnotes(rep.Runs) {
		n = strings.TrimSpace(n)
		if strings.HasPrefix(n, "*") {
			n = `\` + n // a footnote mark, not a list item or emphasis
		}
		b.WriteString("- " + n + "\n")
	}
	b.WriteString("\n![throughput and p99](chart.svg)\n\n## Settings\n\n")
	s := rep.Settings
	fmt.Fprintf(&b, "- load: %s loop, %d connections", s.Mode, s.Concurrency)
	if s.Rate > 0 {
		fmt.Fprintf(&b, ", %s req/s scheduled", fmtInt(s.Rate))
	}
	fmt.Fprintf(&b, ", %s per run, %s warm-up per target (not recorded), flush wait %s after consume runs\n", s.Duration, s.Warmup, s.FlushWait)
	fmt.Fprintf(&b, "- requests: %s subjects (%s), amount %d, priced usage %s %d in / %d out tokens, seed %d\n",
		fmtInt(float64(s.Gen.Subjects)), s.Gen.Dist, s.Gen.Amount, s.Gen.Model, s.Gen.InputTokens, s.Gen.OutputTokens, s.Seed)
	for _, t := range rep.Targets {
		fmt.Fprintf(&b, "- target %s: %s (tiers %s", t.Label, t.URL, t.Tiers)
		if t.GoVersion != "" {
			fmt.Fprintf(&b, ", %s", t.GoVersion)
		}
		if t.GOMAXPROCS != nil {
			fmt.Fprintf(&b, ", GOMAXPROCS %.0f", *t.GOMAXPROCS)
		}
		b.WriteString(")\n")
	}
	b.WriteString("\n## Machine\n\n")
	m := rep.Machine
	fmt.Fprintf(&b, "- %d cores", m.Cores)
	if m.CPUModel != "" {
		fmt.Fprintf(&b, " (%s)", m.CPUModel)
	}
	fmt.Fprintf(&b, ", %.1f GiB memory, %s/%s", float64(m.MemTotalBytes)/(1<<30), m.OS, m.Arch)
	if m.KernelRelease != "" {
		fmt.Fprintf(&b, ", kernel %s", m.KernelRelease)
	}
	fmt.Fprintf(&b, "\n- client: quotabench (fasthttp HostClient, keep-alive), %s, GOMAXPROCS %d, on CPUs %s (runtime.NumCPU %d)\n", m.GoVersion, m.GOMAXPROCS, m.ClientCPUs, m.ClientNumCPU)
	if m.PinningSummary != "" {
		fmt.Fprintf(&b, "- pinning: %s\n", m.PinningSummary)
	}
	fmt.Fprintf(&b, "- run: %s to %s\n", rep.Started.Format(time.RFC3339), rep.Finished.Format(time.RFC3339))
	if len(rep.Notes) > 0 {
		b.WriteString("\n## Notes\n\n")
		for _, n := range rep.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	b.WriteString("\n## Command\n\n```sh\n" + rep.Command + "\n```\n")
	return b.String()
}

// Write writes report.json, report.md and chart.svg into dir, and each
// run's percentile distribution into dir/raw/. It returns the files.
func (rep *Report) Write(dir string) ([]string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "raw"), 0o755); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		"report.json": append(js, '\n'),
		"report.md":   []byte(rep.Markdown()),
		"chart.svg":   []byte(Chart(rep.Runs)),
	}
	var written []string
	for _, name := range []string{"report.json", "report.md", "chart.svg"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, files[name], 0o644); err != nil {
			return written, err
		}
		written = append(written, p)
	}
	for _, r := range rep.Runs {
		if r.Hist == nil || r.Hist.TotalCount() == 0 {
			continue
		}
		p := filepath.Join(dir, "raw", r.Target+"-"+r.Scenario+".hgrm")
		f, err := os.Create(p)
		if err != nil {
			return written, err
		}
		// Values are µs; the scale makes the file's values milliseconds.
		_, err = r.Hist.PercentilesPrint(f, 5, 1000)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// CommandLine quotes args into a shell-pasteable command.
func CommandLine(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?[]#~!{}") {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
