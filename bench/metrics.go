package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metrics is one scrape of a Prometheus text exposition: every sample by
// series (name plus its label block as written) and the sum of each
// metric's series.
type Metrics struct {
	Series map[string]float64 // `name{labels}` → value
	Sums   map[string]float64 // name → sum over its series
	Labels map[string]string  // name → label block of its first series, for info metrics
}

// Has reports whether the metric was exposed.
func (m Metrics) Has(name string) bool {
	_, ok := m.Sums[name]
	return ok
}

// Sum is the sum of the metric's series and whether it was exposed.
func (m Metrics) Sum(name string) (float64, bool) {
	v, ok := m.Sums[name]
	return v, ok
}

// ParseMetrics reads the Prometheus text format: comments and blank lines
// are skipped; `name{labels} value [timestamp]` samples are kept. Histogram
// and summary series (_bucket, _sum, _count) are plain samples here.
func ParseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{Series: map[string]float64{}, Sums: map[string]float64{}, Labels: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' {
			continue
		}
		name, labels, rest, err := splitSample(s)
		if err != nil {
			return Metrics{}, fmt.Errorf("metrics line %d: %w", line, err)
		}
		f := strings.Fields(rest)
		if len(f) < 1 || len(f) > 2 {
			return Metrics{}, fmt.Errorf("metrics line %d: want a value and an optional timestamp after %s", line, name)
		}
		v, err := parseValue(f[0])
		if err != nil {
			return Metrics{}, fmt.Errorf("metrics line %d: %w", line, err)
		}
		m.Series[name+labels] = v
		m.Sums[name] += v
		if _, ok := m.Labels[name]; !ok {
			m.Labels[name] = labels
		}
	}
	if err := sc.Err(); err != nil {
		return Metrics{}, err
	}
	return m, nil
}

// splitSample splits `name{a="x",b="y"} rest` into name, the label block
// with its braces (empty without labels) and rest. Quoted label values may
// hold braces, spaces and escaped quotes.
func splitSample(s string) (name, labels, rest string, err error) {
	i := strings.IndexAny(s, "{ \t")
	if i <= 0 {
		return "", "", "", fmt.Errorf("no value in %q", s)
	}
	name = s[:i]
	if s[i] != '{' {
		return name, "", s[i:], nil
	}
	inQuote := false
	for j := i + 1; j < len(s); j++ {
		switch c := s[j]; {
		case inQuote && c == '\\':
			j++ // skip the escaped character
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return name, s[i : j+1], s[j+1:], nil
		}
	}
	return "", "", "", fmt.Errorf("unterminated labels in %q", s)
}

func parseValue(s string) (float64, error) {
	switch s {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("bad value %q", s)
	}
	return v, nil
}

// LabelValue extracts one label's value from a label block like
// `{version="go1.26",x="y"}`; "" when absent.
func LabelValue(block, label string) string {
	block = strings.TrimSuffix(strings.TrimPrefix(block, "{"), "}")
	for block != "" {
		eq := strings.IndexByte(block, '=')
		if eq < 0 || eq+1 >= len(block) || block[eq+1] != '"' {
			return ""
		}
		key := strings.TrimSpace(block[:eq])
		var val strings.Builder
		j := eq + 2
		for ; j < len(block) && block[j] != '"'; j++ {
			if block[j] == '\\' && j+1 < len(block) {
				j++
			}
			val.WriteByte(block[j])
		}
		if key == label {
			return val.String()
		}
		block = strings.TrimPrefix(strings.TrimSpace(block[min(j+1, len(block)):]), ",")
	}
	return ""
}

// Delta is after−before of a metric summed over its series. A metric
// absent before but present after (a labelled counter's first increment)
// counts from 0; absent after means unavailable.
func Delta(before, after Metrics, name string) (float64, bool) {
	a, ok := after.Sum(name)
	if !ok {
		return 0, false
	}
	b, _ := before.Sum(name)
	return a - b, true
}

// SeriesDeltas is after−before of each series of a metric, keyed by the
// series (`name{labels}`); series absent before count from 0.
func SeriesDeltas(before, after Metrics, name string) map[string]float64 {
	out := map[string]float64{}
	for k, a := range after.Series {
		if k == name || strings.HasPrefix(k, name+"{") {
			out[k] = a - before.Series[k]
		}
	}
	return out
}

// Scrape fetches and parses url/metrics.
func Scrape(ctx context.Context, c *http.Client, base string) (Metrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, trimSlash(base)+"/metrics", nil)
	if err != nil {
		return Metrics{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Metrics{}, fmt.Errorf("scrape %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return Metrics{}, fmt.Errorf("scrape %s: status %d", base, resp.StatusCode)
	}
	return ParseMetrics(resp.Body)
}

// Names of the quotad metrics the report uses.
const (
	MetricL1Hits       = "quotad_l1_hits_total"
	MetricL1Misses     = "quotad_l1_misses_total"
	MetricL2Reads      = "quotad_l2_reads_total"
	MetricRedisTrips   = "quotad_redis_roundtrips_total"
	MetricRedisCmds    = "quotad_redis_commands_total"
	MetricFlushRows    = "quotad_flush_rows_written_total"
	MetricFlushLag     = "quotad_flush_lag_seconds"
	MetricFlushPending = "quotad_flush_pending"
	MetricFlushErrors  = "quotad_flush_errors_total"
	MetricShed         = "quotad_consume_shed_total"
	MetricHTTPRequests = "quotad_http_requests_total"
	MetricCPU          = "process_cpu_seconds_total"
	MetricGoInfo       = "go_info"
	MetricGoMaxProcs   = "go_sched_gomaxprocs_threads"
)

// PostgresRowsPerConsume is what the Postgres-only tiers write per consume
// by design: the counter upsert and the ledger row, in one statement.
const PostgresRowsPerConsume = 2

// ServerStats is what a run cost quotad, from /metrics deltas. A nil field
// is a metric quotad did not expose (or a ratio without a denominator).
type ServerStats struct {
	L1HitRatio          *float64 `json:"l1_hit_ratio"`
	L2ReadsPerRequest   *float64 `json:"l2_reads_per_request"`
	RedisTripsPerReq    *float64 `json:"redis_roundtrips_per_request"`
	RedisCmdsPerReq     *float64 `json:"redis_commands_per_request"`
	PGRowsPer1kConsumes *float64 `json:"postgres_rows_per_1k_consumes"`
	// PGRowsByDesign marks PGRowsPer1kConsumes as the Postgres-only tiers'
	// fixed 2 rows per consume, not measured.
	PGRowsByDesign bool     `json:"postgres_rows_by_design,omitempty"`
	FlushLagMaxSec *float64 `json:"flush_lag_max_seconds"`
	FlushErrors    *float64 `json:"flush_errors"`
	// ShedShare is the share of the run's consume attempts refused with
	// 503 because the flusher was behind (QUOTAD_FLUSH_MAX_LAG).
	ShedShare *float64 `json:"shed_share"`
	// FlushLagSamples are the readings behind FlushLagMaxSec.
	FlushLagSamples []LagSample `json:"flush_lag_samples,omitempty"`
	// CPUCores is quotad's CPU time over the run's wall time.
	CPUCores *float64 `json:"cpu_cores"`
	// ServerRequests is quotad's own count of answered requests (all
	// routes, /metrics scrapes included).
	ServerRequests *float64 `json:"server_requests"`
	// Deltas are the raw counter deltas the figures come from.
	Deltas map[string]float64 `json:"deltas"`
}

func ptr(v float64) *float64 { return &v }

// ComputeStats derives the run's server figures. requests and consumes are
// the client's counts (responses, and 2xx consumes); elapsed is the wall
// time the deltas cover for the CPU figure; lagMax is the sampled maximum
// flush lag (nil when never sampled).
func ComputeStats(before, after Metrics, requests, consumes int64, elapsed time.Duration, lagMax *float64, postgresTiers bool) ServerStats {
	s := ServerStats{Deltas: map[string]float64{}}
	d := func(name string) (float64, bool) {
		v, ok := Delta(before, after, name)
		if ok {
			s.Deltas[name] = v
		}
		return v, ok
	}
	hits, okH := d(MetricL1Hits)
	miss, okM := d(MetricL1Misses)
	if okH && okM && hits+miss > 0 {
		s.L1HitRatio = ptr(hits / (hits + miss))
	}
	if v, ok := d(MetricL2Reads); ok && requests > 0 {
		s.L2ReadsPerRequest = ptr(v / float64(requests))
	}
	if v, ok := d(MetricRedisTrips); ok && requests > 0 {
		s.RedisTripsPerReq = ptr(v / float64(requests))
	}
	if v, ok := d(MetricRedisCmds); ok && requests > 0 {
		s.RedisCmdsPerReq = ptr(v / float64(requests))
	}
	for k, v := range SeriesDeltas(before, after, MetricFlushRows) {
		if k != MetricFlushRows {
			s.Deltas[k] = v // per table
		}
	}
	if v, ok := d(MetricFlushRows); ok && consumes > 0 {
		s.PGRowsPer1kConsumes = ptr(v / float64(consumes) * 1000)
	} else if postgresTiers && consumes > 0 {
		s.PGRowsPer1kConsumes = ptr(PostgresRowsPerConsume * 1000)
		s.PGRowsByDesign = true
	}
	if v, ok := d(MetricFlushErrors); ok {
		s.FlushErrors = ptr(v)
	}
	if v, ok := d(MetricShed); ok && consumes+int64(v) > 0 {
		s.ShedShare = ptr(v / (float64(consumes) + v))
	}
	if v, ok := d(MetricCPU); ok && elapsed > 0 {
		s.CPUCores = ptr(v / elapsed.Seconds())
	}
	if v, ok := d(MetricHTTPRequests); ok {
		s.ServerRequests = ptr(v)
	}
	if consumes > 0 {
		// Without consumes of its own a run would only show the tail of an
		// earlier run's backlog.
		s.FlushLagMaxSec = lagMax
	}
	return s
}

// LagSampler samples quotad_flush_lag_seconds every interval and keeps the
// maximum.
type LagSampler struct {
	mu      sync.Mutex
	start   time.Time
	max     float64
	sampled bool
	samples []LagSample
	stop    chan struct{}
	done    chan struct{}
}

// StartLagSampler starts sampling base's /metrics.
func StartLagSampler(ctx context.Context, c *http.Client, base string, every time.Duration) *LagSampler {
	s := &LagSampler{start: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.stop:
				return
			case <-t.C:
				s.Observe(ctx, c, base)
			}
		}
	}()
	return s
}

// Observe takes one sample now.
func (s *LagSampler) Observe(ctx context.Context, c *http.Client, base string) {
	m, err := Scrape(ctx, c, base)
	if err != nil {
		return
	}
	s.ObserveMetrics(m)
}

// ObserveMetrics takes the lag from a scrape done elsewhere.
func (s *LagSampler) ObserveMetrics(m Metrics) {
	v, ok := m.Sum(MetricFlushLag)
	if !ok {
		return
	}
	s.mu.Lock()
	if !s.sampled || v > s.max {
		s.max = v
	}
	s.sampled = true
	s.samples = append(s.samples, LagSample{At: time.Since(s.start).Seconds(), Lag: v})
	s.mu.Unlock()
}

// LagSample is one reading of quotad_flush_lag_seconds, At seconds after
// the run started.
type LagSample struct {
	At  float64 `json:"t"`
	Lag float64 `json:"lag"`
}

// Samples returns the readings so far.
func (s *LagSampler) Samples() []LagSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LagSample(nil), s.samples...)
}

// Stop ends the sampling and returns the maximum, nil if the metric was
// never seen.
func (s *LagSampler) Stop() *float64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.sampled {
		return nil
	}
	return ptr(s.max)
}
