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

// TestCountSettings: settings that are counts take whole numbers in their
// range and refuse the rest.
func TestCountSettings(t *testing.T) {
	for _, tt := range []struct {
		name, value string
		want        int64
		ok          bool
	}{
		{"QUOTAD_L1_MAX_ITEMS", "", 100_000, true}, {"QUOTAD_L1_MAX_ITEMS", "50000", 50_000, true},
		{"QUOTAD_L1_MAX_ITEMS", "0", 0, false}, {"QUOTAD_L1_MAX_ITEMS", "-5", 0, false}, {"QUOTAD_L1_MAX_ITEMS", "lots", 0, false},
		{"QUOTAD_FLUSH_PACE_ROWS", "", 256, true}, {"QUOTAD_FLUSH_PACE_ROWS", "0", 0, true}, {"QUOTAD_FLUSH_PACE_ROWS", "1000", 1000, true},
		{"QUOTAD_FLUSH_PACE_ROWS", "-1", 0, false}, {"QUOTAD_FLUSH_PACE_ROWS", "1ms", 0, false},
		{"QUOTAD_LEDGER_RETENTION_MONTHS", "", 0, true}, {"QUOTAD_LEDGER_RETENTION_MONTHS", "13", 13, true},
		{"QUOTAD_LEDGER_RETENTION_MONTHS", "-1", 0, false}, {"QUOTAD_LEDGER_RETENTION_MONTHS", "1y", 0, false},
		{"QUOTAD_REDIS_WAIT_REPLICAS", "", 0, true}, {"QUOTAD_REDIS_WAIT_REPLICAS", "1", 1, true}, {"QUOTAD_REDIS_WAIT_REPLICAS", "-1", 0, false},
	} {
		cfg, err := parseEnv(map[string]string{tt.name: tt.value})
		got := map[string]int64{"QUOTAD_L1_MAX_ITEMS": cfg.L1MaxItems, "QUOTAD_FLUSH_PACE_ROWS": int64(cfg.FlushPaceRows),
			"QUOTAD_LEDGER_RETENTION_MONTHS": int64(cfg.LedgerRetention), "QUOTAD_REDIS_WAIT_REPLICAS": int64(cfg.WaitReplicas)}[tt.name]
		if (err == nil) != tt.ok || (err == nil && got != tt.want) {
			t.Errorf("%s=%q: %d (%v), want %d ok=%v", tt.name, tt.value, got, err, tt.want, tt.ok)
		}
	}
}

// TestFlushPaceRowsReachTheFlusher: QUOTAD_FLUSH_PACE_ROWS=0 turns the
// pauses off (the flusher reads 0 as its default, 256).
func TestFlushPaceRowsReachTheFlusher(t *testing.T) {
	for value, want := range map[string]int{"": 256, "100": 100, "0": -1} {
		cfg, err := parseEnv(map[string]string{"QUOTAD_FLUSH_PACE_ROWS": value})
		if err != nil {
			t.Fatal(err)
		}
		if got := flusherConfig(cfg).PaceRows; got != want {
			t.Errorf("QUOTAD_FLUSH_PACE_ROWS=%q: the flusher's PaceRows %d, want %d", value, got, want)
		}
	}
}

// TestKeyWindow: Redis's window for idempotency keys is a duration from
// a second to Postgres's day; past that day a replay could count twice.
func TestKeyWindow(t *testing.T) {
	for value, want := range map[string]time.Duration{"": 24 * time.Hour, "1s": time.Second, "2m": 2 * time.Minute, "24h": 24 * time.Hour,
		"25h": 0, "500ms": 0, "0": 0, "-1m": 0, "forever": 0} {
		cfg, err := parseEnv(map[string]string{"QUOTAD_KEY_WINDOW": value})
		if (err == nil) != (want > 0) || (err == nil && cfg.KeyWindow != want) {
			t.Errorf("QUOTAD_KEY_WINDOW=%q: %v (%v), want %v", value, cfg.KeyWindow, err, want)
		}
	}
}

// parseEnv parses the config from env alone, no flags.
func parseEnv(env map[string]string) (Config, error) {
	fs := flag.NewFlagSet("quotad", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseConfig(fs, nil, func(k string) string { return env[k] })
}

// TestDevMode: a dev stack listens on the loopback address unless told
// otherwise, and only a dev stack may use a well-known or short admin key.
func TestDevMode(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
		addr string
		ok   bool // checkAdminKey accepts the key
	}{
		{"production default", map[string]string{}, ":8080", true},
		{"dev default", map[string]string{"QUOTAD_DEV": "1"}, "127.0.0.1:8080", true},
		{"dev, told otherwise", map[string]string{"QUOTAD_DEV": "true", "QUOTAD_ADDR": ":9000"}, ":9000", true},
		{"well-known key", map[string]string{"QUOTAD_ADMIN_KEY": "dev-admin-key"}, ":8080", false},
		{"well-known key in dev", map[string]string{"QUOTAD_DEV": "1", "QUOTAD_ADMIN_KEY": "dev-admin-key"}, "127.0.0.1:8080", true},
		{"short key", map[string]string{"QUOTAD_ADMIN_KEY": "0123456789abcdef0123456789abcde"}, ":8080", false},
		{"random key", map[string]string{"QUOTAD_ADMIN_KEY": "0123456789abcdef0123456789abcdef"}, ":8080", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseEnv(tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Addr != tt.addr {
				t.Errorf("addr %q, want %q", cfg.Addr, tt.addr)
			}
			if err := checkAdminKey(cfg); (err == nil) != tt.ok {
				t.Errorf("checkAdminKey: %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if _, err := parseEnv(map[string]string{"QUOTAD_DEV": "maybe"}); err == nil {
		t.Error("QUOTAD_DEV=maybe accepted")
	}
}

// TestHardeningSettings: the connection, timeout and authentication
// settings take values in their range and refuse the rest.
func TestHardeningSettings(t *testing.T) {
	cfg, err := parseEnv(map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 10000 || cfg.ReadTimeout != 10*time.Second || cfg.WriteTimeout != 30*time.Second ||
		cfg.AuthFailBurst != 20 || cfg.AuthFailRate != 1 || opsScope(cfg.OpsAuth) != "" {
		t.Errorf("defaults: %+v", cfg)
	}
	for _, tt := range []struct {
		name, value string
		ok          bool
	}{
		{"QUOTAD_MAX_CONNS", "100", true}, {"QUOTAD_MAX_CONNS", "0", false}, {"QUOTAD_MAX_CONNS", "many", false},
		{"QUOTAD_READ_TIMEOUT", "2s", true}, {"QUOTAD_READ_TIMEOUT", "0s", false}, {"QUOTAD_READ_TIMEOUT", "10", false},
		{"QUOTAD_WRITE_TIMEOUT", "1m", true}, {"QUOTAD_WRITE_TIMEOUT", "-1s", false},
		{"QUOTAD_AUTH_FAIL_BURST", "1", true}, {"QUOTAD_AUTH_FAIL_BURST", "0", false},
		{"QUOTAD_AUTH_FAIL_RATE", "0", true}, {"QUOTAD_AUTH_FAIL_RATE", "0.5", true}, {"QUOTAD_AUTH_FAIL_RATE", "-1", false}, {"QUOTAD_AUTH_FAIL_RATE", "+Inf", false},
		{"QUOTAD_OPS_AUTH", "admin", true}, {"QUOTAD_OPS_AUTH", "service", true}, {"QUOTAD_OPS_AUTH", "root", false},
	} {
		if _, err := parseEnv(map[string]string{tt.name: tt.value}); (err == nil) != tt.ok {
			t.Errorf("%s=%q: %v, want ok=%v", tt.name, tt.value, err, tt.ok)
		}
	}
}

// TestDirectEnforce: enforce consumes are refused while Redis is
// unreachable unless told otherwise, or unless fail-open chose
// availability; anything but refuse or admit is an error.
func TestDirectEnforce(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "refuse"},
		{map[string]string{"QUOTAD_FAIL_MODE": "open"}, "admit"},
		{map[string]string{"QUOTAD_FAIL_MODE": "open", "QUOTAD_DIRECT_ENFORCE": "refuse"}, "refuse"},
		{map[string]string{"QUOTAD_DIRECT_ENFORCE": "admit"}, "admit"},
	} {
		cfg, err := parseEnv(tt.env)
		if err != nil || cfg.DirectEnforce != tt.want {
			t.Errorf("%v: %q (%v), want %q", tt.env, cfg.DirectEnforce, err, tt.want)
		}
	}
	if _, err := parseEnv(map[string]string{"QUOTAD_DIRECT_ENFORCE": "maybe"}); err == nil {
		t.Error("QUOTAD_DIRECT_ENFORCE=maybe accepted")
	}
}
