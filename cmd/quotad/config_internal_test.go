package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

// TestFlushMaxLag: the backpressure setting takes a duration of at least
// two flush intervals (usage waits up to one between flushes, so less
// would pace a flusher that keeps up), "off", or nothing for the default.
func TestFlushMaxLag(t *testing.T) {
	for _, tt := range []struct {
		interval, maxLag string
		want             time.Duration
		ok               bool
	}{
		{"1s", "", 0, true}, // the flusher's default
		{"1s", "off", -1, true},
		{"1s", "2s", 2 * time.Second, true},
		{"1s", "1500ms", 0, false},
		{"100ms", "300ms", 300 * time.Millisecond, true},
		{"1s", "-1s", 0, false},
		{"1s", "soon", 0, false},
	} {
		cfg, err := parseEnv(map[string]string{"QUOTAD_FLUSH_INTERVAL": tt.interval, "QUOTAD_FLUSH_MAX_LAG": tt.maxLag})
		if (err == nil) != tt.ok || (err == nil && cfg.FlushMaxLag != tt.want) {
			t.Errorf("interval %s, max lag %q: %v (%v), want %v ok=%v", tt.interval, tt.maxLag, cfg.FlushMaxLag, err, tt.want, tt.ok)
		}
	}
}

func TestL1MaxItems(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  int64
		ok    bool
	}{{"", 1_000_000, true}, {"50000", 50_000, true}, {"0", 0, false}, {"-5", 0, false}, {"lots", 0, false}} {
		cfg, err := parseEnv(map[string]string{"QUOTAD_L1_MAX_ITEMS": tt.value})
		if (err == nil) != tt.ok || (err == nil && cfg.L1MaxItems != tt.want) {
			t.Errorf("QUOTAD_L1_MAX_ITEMS=%q: %d (%v), want %d ok=%v", tt.value, cfg.L1MaxItems, err, tt.want, tt.ok)
		}
	}
}

// parseEnv parses the config from env alone, no flags.
func parseEnv(env map[string]string) (Config, error) {
	fs := flag.NewFlagSet("quotad", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseConfig(fs, nil, func(k string) string { return env[k] })
}
