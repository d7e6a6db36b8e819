package main

import (
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/persist"
)

// Config is everything quotad reads at start, from flags and QUOTAD_*
// variables (a flag wins over its variable).
type Config struct {
	Addr            string        // QUOTAD_ADDR, --addr; default ":8080", "127.0.0.1:8080" with Dev
	Dev             bool          // QUOTAD_DEV, --dev; default false: a local dev stack (loopback address by default, well-known or short admin keys allowed)
	PostgresURL     string        // QUOTAD_POSTGRES_URL, --postgres-url; default the make run stack
	RedisURL        string        // QUOTAD_REDIS_URL, --redis-url; default the make run stack
	AdminKey        string        // QUOTAD_ADMIN_KEY, --admin-key; default none (no admin key)
	LogLevel        string        // QUOTAD_LOG_LEVEL, --log-level; default "info"
	Migrate         bool          // QUOTAD_MIGRATE, --migrate; default true: serve migrates on start
	Margin          string        // QUOTAD_MARGIN, --margin; default "0.2"
	PostgresConns   int           // QUOTAD_POSTGRES_CONNS, --postgres-conns; default 32
	ShutdownTimeout time.Duration // QUOTAD_SHUTDOWN_TIMEOUT, --shutdown-timeout; default 15s
	MaxInFlight     int           // QUOTAD_MAX_IN_FLIGHT, --max-in-flight; default 256: usage requests (consumes, batches, reservations, commits) handled at once; past it they answer 503 at once
	MaxConns        int           // QUOTAD_MAX_CONNS, --max-conns; default 10000: open client connections; over it, the oldest idle or never-served one is closed
	ReadTimeout     time.Duration // QUOTAD_READ_TIMEOUT, --read-timeout; default 10s: for a request's headers, then again for its body
	WriteTimeout    time.Duration // QUOTAD_WRITE_TIMEOUT, --write-timeout; default 30s: from a request's headers to the end of its answer (events streams: per write)
	AuthFailBurst   int           // QUOTAD_AUTH_FAIL_BURST, --auth-fail-burst; default 20: failed authentications a client address may make at once
	AuthFailRate    float64       // QUOTAD_AUTH_FAIL_RATE, --auth-fail-rate; default 1: failed authentications an address regains a second; 0: no limit
	OpsAuth         string        // QUOTAD_OPS_AUTH, --ops-auth; default "none": /metrics and /readyz need no key; "service" or "admin": a key with that scope
	Tiers           string        // QUOTAD_TIERS, --tiers; default "full" (L1+Redis+Postgres); "postgres" for the Postgres-only baseline
	FlushInterval   time.Duration // QUOTAD_FLUSH_INTERVAL, --flush-interval; default 1s
	FlushBatch      int           // QUOTAD_FLUSH_BATCH, --flush-batch; default 200: pending-stream entries per Redis read
	FlushMax        int           // QUOTAD_FLUSH_MAX, --flush-max; default 100000: events per flush transaction; more pending flushes at once
	FlushPaceRows   int           // QUOTAD_FLUSH_PACE_ROWS, --flush-pace-rows; default 256: the ledger COPY pauses 1 ms every this many rows (at most a quarter of the interval per COPY); 0: no pauses
	ListingRefresh  time.Duration // QUOTAD_LISTING_REFRESH, --listing-refresh; default 5s: how often the subject listing's usage order is rolled up from counters (it trails them by up to this)
	CacheTTL        time.Duration // QUOTAD_CACHE_TTL, --cache-ttl; default 1s: how old an L1 usage snapshot may be
	L1MaxItems      int64         // QUOTAD_L1_MAX_ITEMS, --l1-max-items; default 100000 (cache.DefaultMaxItems): usage snapshots, and subjects, L1 keeps (each)
	NearLimit       float64       // QUOTAD_NEAR_LIMIT, --near-limit; default 0.1: closer than this fraction of the limit, checks read Redis
	FlushClaimIdle  time.Duration // QUOTAD_FLUSH_CLAIM_IDLE, --flush-claim-idle; default 30s: unacknowledged events older than this are taken over from a dead flusher
	FlushMaxLag     time.Duration // QUOTAD_FLUSH_MAX_LAG, --flush-max-lag; default 0: three flush intervals, at least 3s; "off" (-1): consumes wait up to 1s while usage waited unread longer than this; at least two flush intervals
	RedisBuckets    int           // QUOTAD_REDIS_BUCKETS, --redis-buckets; default -1 (unset): 0 on one Redis (one pending stream, keys tagged by subject), cache.DefaultClusterBuckets on a cluster; n: subjects hashed into n buckets, each with its own stream and hash tag (required on a cluster); a change of it is a move to a new Redis
	WaitReplicas    int           // QUOTAD_REDIS_WAIT_REPLICAS, --redis-wait-replicas; default 0: consumes, batches, reservations and commits answer once this many Redis replicas have their writes (WAIT, 100 ms); fewer in time is an outcome unknown
	LedgerRetention int           // QUOTAD_LEDGER_RETENTION_MONTHS, --ledger-retention-months; default 0: keep the ledger for good; n: keep the current month and the n-1 before it (older months' partitions are dropped)
	KeyWindow       time.Duration // QUOTAD_KEY_WINDOW, --key-window; default 24h: how long Redis keeps a consume's idempotency key (a later replay within Postgres's 24h counts once, answered as new); 1s to 24h
	DirectEnforce   string        // QUOTAD_DIRECT_ENFORCE, --direct-enforce; "refuse": enforce consumes answer 503 while Redis is unreachable; "admit" enforces against Postgres alone; default refuse, admit with fail-mode open
	FailMode        string        // QUOTAD_FAIL_MODE, --fail-mode; default "closed" (503 when no store answers); "open" allows
	BenchFloor      bool          // QUOTAD_BENCH_FLOOR, --bench-floor; default false: serve POST /v1/floor, the bench's no-work baseline
	DebugAddr       string        // QUOTAD_DEBUG_ADDR, --debug-addr; default none: serve net/http/pprof there (e.g. 127.0.0.1:6060)
	TestHook        string        // QUOTAD_TEST_HOOK; default none; "crash-after-commit" kills quotad between a flush's commit and its ack, "slow-flush" makes each flush take 400 ms more (tests only)
}

func parseConfig(fs *flag.FlagSet, args []string, getenv func(string) string) (Config, error) {
	env := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	var c Config
	var migrate, conns, shutdown string
	fs.StringVar(&c.Addr, "addr", env("QUOTAD_ADDR", ""), `listen address (default ":8080", "127.0.0.1:8080" with --dev)`)
	var dev string
	fs.StringVar(&dev, "dev", env("QUOTAD_DEV", "false"), "a local dev stack: listen on 127.0.0.1 unless --addr says otherwise, allow a well-known or short admin key")
	fs.StringVar(&c.PostgresURL, "postgres-url", env("QUOTAD_POSTGRES_URL", "postgres://postgres@127.0.0.1:25432/quotad?sslmode=disable"), "Postgres URL")
	fs.StringVar(&c.RedisURL, "redis-url", env("QUOTAD_REDIS_URL", "redis://127.0.0.1:26379/0"), "Redis URL")
	fs.StringVar(&c.AdminKey, "admin-key", env("QUOTAD_ADMIN_KEY", ""), "admin API key")
	fs.StringVar(&c.LogLevel, "log-level", env("QUOTAD_LOG_LEVEL", "info"), "debug, info, warn or error")
	fs.StringVar(&migrate, "migrate", env("QUOTAD_MIGRATE", "true"), "migrate the database on start")
	fs.StringVar(&c.Margin, "margin", env("QUOTAD_MARGIN", "0.2"), "cost book margin")
	fs.StringVar(&conns, "postgres-conns", env("QUOTAD_POSTGRES_CONNS", "32"), "Postgres pool size")
	fs.StringVar(&shutdown, "shutdown-timeout", env("QUOTAD_SHUTDOWN_TIMEOUT", "15s"), "time to finish in-flight work on SIGTERM")
	var maxConns, maxInFlight, readTimeout, writeTimeout string
	fs.StringVar(&maxInFlight, "max-in-flight", env("QUOTAD_MAX_IN_FLIGHT", "256"), "usage requests handled at once; past it 503 at once")
	fs.StringVar(&maxConns, "max-conns", env("QUOTAD_MAX_CONNS", "10000"), "open client connections at most")
	fs.StringVar(&readTimeout, "read-timeout", env("QUOTAD_READ_TIMEOUT", "10s"), "time for a request's headers, then again for its body")
	fs.StringVar(&writeTimeout, "write-timeout", env("QUOTAD_WRITE_TIMEOUT", "30s"), "time from a request's headers to the end of its answer")
	var failBurst, failRate string
	fs.StringVar(&failBurst, "auth-fail-burst", env("QUOTAD_AUTH_FAIL_BURST", "20"), "failed authentications a client address may make at once")
	fs.StringVar(&failRate, "auth-fail-rate", env("QUOTAD_AUTH_FAIL_RATE", "1"), "failed authentications an address regains a second (0: no limit)")
	fs.StringVar(&c.OpsAuth, "ops-auth", env("QUOTAD_OPS_AUTH", "none"), `the key /metrics and /readyz need: "none", "service" or "admin"`)
	var flushInterval, flushBatch, flushMax, cacheTTL, nearLimit, claimIdle string
	fs.StringVar(&flushMax, "flush-max", env("QUOTAD_FLUSH_MAX", "100000"), "events per flush transaction")
	var paceRows string
	fs.StringVar(&paceRows, "flush-pace-rows", env("QUOTAD_FLUSH_PACE_ROWS", "256"), "the flush's ledger COPY pauses 1 ms every this many rows (0: never)")
	fs.StringVar(&claimIdle, "flush-claim-idle", env("QUOTAD_FLUSH_CLAIM_IDLE", "30s"), "take over events a dead flusher left unacknowledged this long")
	var maxLag string
	fs.StringVar(&maxLag, "flush-max-lag", env("QUOTAD_FLUSH_MAX_LAG", ""), `consumes wait (up to 1s) while usage waited unread longer than this (at least two flush intervals); "" for three flush intervals (at least 3s), "off" for never`)
	fs.StringVar(&c.Tiers, "tiers", env("QUOTAD_TIERS", "full"), `"full" or "postgres"`)
	fs.StringVar(&flushInterval, "flush-interval", env("QUOTAD_FLUSH_INTERVAL", "1s"), "write-behind flush interval")
	fs.StringVar(&flushBatch, "flush-batch", env("QUOTAD_FLUSH_BATCH", "200"), "pending-stream entries per Redis read")
	var listingRefresh, keyWindow, ledgerRetention, waitReplicas, buckets string
	fs.StringVar(&buckets, "redis-buckets", env("QUOTAD_REDIS_BUCKETS", ""), "subjects' buckets in Redis, each with its own pending stream (default: none on one Redis, "+strconv.Itoa(cache.DefaultClusterBuckets)+" on a cluster)")
	fs.StringVar(&waitReplicas, "redis-wait-replicas", env("QUOTAD_REDIS_WAIT_REPLICAS", "0"), "usage writes answer once this many Redis replicas have them (0: none)")
	fs.StringVar(&ledgerRetention, "ledger-retention-months", env("QUOTAD_LEDGER_RETENTION_MONTHS", "0"), "keep the usage ledger's current month and this many minus one before it (0: keep it all)")
	fs.StringVar(&keyWindow, "key-window", env("QUOTAD_KEY_WINDOW", cache.DefaultKeyWindow.String()), "how long Redis keeps a consume's idempotency key (a later replay still counts once, answered as new); at most 24h")
	fs.StringVar(&listingRefresh, "listing-refresh", env("QUOTAD_LISTING_REFRESH", "5s"), "how often the subject listing's usage order is rolled up from counters")
	fs.StringVar(&cacheTTL, "cache-ttl", env("QUOTAD_CACHE_TTL", "1s"), "age limit of L1 usage snapshots")
	var l1Items string
	fs.StringVar(&l1Items, "l1-max-items", env("QUOTAD_L1_MAX_ITEMS", strconv.Itoa(cache.DefaultMaxItems)), "usage snapshots, and subjects, L1 keeps (each; ~270 bytes apiece)")
	fs.StringVar(&nearLimit, "near-limit", env("QUOTAD_NEAR_LIMIT", "0.1"), "fraction of the limit under which checks read Redis")
	fs.StringVar(&c.DirectEnforce, "direct-enforce", env("QUOTAD_DIRECT_ENFORCE", ""), `"refuse" (exact) or "admit" (available) for enforce consumes while Redis is unreachable`)
	fs.StringVar(&c.FailMode, "fail-mode", env("QUOTAD_FAIL_MODE", "closed"), `"closed" or "open" when no store answers`)
	var floor string
	fs.StringVar(&floor, "bench-floor", env("QUOTAD_BENCH_FLOOR", "false"), "serve POST /v1/floor for the bench")
	fs.StringVar(&c.DebugAddr, "debug-addr", env("QUOTAD_DEBUG_ADDR", ""), "serve pprof on this address")
	c.TestHook = getenv("QUOTAD_TEST_HOOK")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	if c.Dev, err = strconv.ParseBool(dev); err != nil {
		return Config{}, fmt.Errorf("dev: %w", err)
	}
	if c.Addr == "" {
		c.Addr = ":8080"
		if c.Dev {
			c.Addr = "127.0.0.1:8080"
		}
	}
	if c.BenchFloor, err = strconv.ParseBool(floor); err != nil {
		return Config{}, fmt.Errorf("bench-floor: %w", err)
	}
	if c.Tiers != "full" && c.Tiers != "postgres" {
		return Config{}, fmt.Errorf("tiers: %q is not full or postgres", c.Tiers)
	}
	if c.DirectEnforce == "" {
		// Fail-open chose availability over exactness; refusing would
		// leave its enforce consumes counted nowhere while Postgres is up.
		c.DirectEnforce = "refuse"
		if c.FailMode == "open" {
			c.DirectEnforce = "admit"
		}
	}
	if c.DirectEnforce != "refuse" && c.DirectEnforce != "admit" {
		return Config{}, fmt.Errorf("direct-enforce: %q is not refuse or admit", c.DirectEnforce)
	}
	if c.FailMode != "closed" && c.FailMode != "open" {
		return Config{}, fmt.Errorf("fail-mode: %q is not closed or open", c.FailMode)
	}
	if c.FlushInterval, err = time.ParseDuration(flushInterval); err != nil || c.FlushInterval <= 0 {
		return Config{}, fmt.Errorf("flush-interval: %q is not a positive duration", flushInterval)
	}
	if c.FlushMax, err = strconv.Atoi(flushMax); err != nil || c.FlushMax < 1 {
		return Config{}, fmt.Errorf("flush-max: %q is not a positive integer", flushMax)
	}
	if c.FlushPaceRows, err = strconv.Atoi(paceRows); err != nil || c.FlushPaceRows < 0 {
		return Config{}, fmt.Errorf("flush-pace-rows: %q is not a whole number (0 for no pauses)", paceRows)
	}
	if c.FlushClaimIdle, err = time.ParseDuration(claimIdle); err != nil || c.FlushClaimIdle <= 0 {
		return Config{}, fmt.Errorf("flush-claim-idle: %q is not a positive duration", claimIdle)
	}
	switch maxLag {
	case "":
	case "off":
		c.FlushMaxLag = -1
	default:
		if c.FlushMaxLag, err = time.ParseDuration(maxLag); err != nil || c.FlushMaxLag <= 0 {
			return Config{}, fmt.Errorf(`flush-max-lag: %q is not a positive duration, "" or "off"`, maxLag)
		}
		if c.FlushMaxLag < 2*c.FlushInterval {
			return Config{}, fmt.Errorf("flush-max-lag: %s is less than two flush intervals (%s): usage waits up to one between flushes", c.FlushMaxLag, c.FlushInterval)
		}
	}
	if c.FlushBatch, err = strconv.Atoi(flushBatch); err != nil || c.FlushBatch < 1 {
		return Config{}, fmt.Errorf("flush-batch: %q is not a positive integer", flushBatch)
	}
	if c.ListingRefresh, err = time.ParseDuration(listingRefresh); err != nil || c.ListingRefresh <= 0 {
		return Config{}, fmt.Errorf("listing-refresh: %q is not a positive duration", listingRefresh)
	}
	if c.WaitReplicas, err = strconv.Atoi(waitReplicas); err != nil || c.WaitReplicas < 0 {
		return Config{}, fmt.Errorf("redis-wait-replicas: %q is not a whole number of replicas (0 waits for none)", waitReplicas)
	}
	c.RedisBuckets = -1
	if buckets != "" {
		if c.RedisBuckets, err = strconv.Atoi(buckets); err != nil || c.RedisBuckets < 0 || c.RedisBuckets > cache.MaxBuckets {
			return Config{}, fmt.Errorf("redis-buckets: %q is not a whole number from 0 to %d", buckets, cache.MaxBuckets)
		}
	}
	if c.LedgerRetention, err = strconv.Atoi(ledgerRetention); err != nil || c.LedgerRetention < 0 {
		return Config{}, fmt.Errorf("ledger-retention-months: %q is not a whole number of months (0 keeps the ledger for good)", ledgerRetention)
	}
	if c.KeyWindow, err = time.ParseDuration(keyWindow); err != nil || c.KeyWindow < time.Second || c.KeyWindow > persist.IdempotencyWindow {
		return Config{}, fmt.Errorf("key-window: %q is not a duration from 1s to %s (Postgres keeps keys that long)", keyWindow, persist.IdempotencyWindow)
	}
	if c.CacheTTL, err = time.ParseDuration(cacheTTL); err != nil || c.CacheTTL < 0 {
		return Config{}, fmt.Errorf("cache-ttl: %q is not a duration", cacheTTL)
	}
	if c.L1MaxItems, err = strconv.ParseInt(l1Items, 10, 64); err != nil || c.L1MaxItems < 1 {
		return Config{}, fmt.Errorf("l1-max-items: %q is not a positive integer", l1Items)
	}
	if c.NearLimit, err = strconv.ParseFloat(nearLimit, 64); err != nil || c.NearLimit < 0 || c.NearLimit > 1 {
		return Config{}, fmt.Errorf("near-limit: %q is not a fraction between 0 and 1", nearLimit)
	}
	if c.Migrate, err = strconv.ParseBool(migrate); err != nil {
		return Config{}, fmt.Errorf("migrate: %w", err)
	}
	if c.PostgresConns, err = strconv.Atoi(conns); err != nil || c.PostgresConns < 1 {
		return Config{}, fmt.Errorf("postgres-conns: must be a positive integer")
	}
	if c.MaxInFlight, err = strconv.Atoi(maxInFlight); err != nil || c.MaxInFlight < 1 {
		return Config{}, fmt.Errorf("max-in-flight: %q is not a positive integer", maxInFlight)
	}
	if c.MaxConns, err = strconv.Atoi(maxConns); err != nil || c.MaxConns < 1 {
		return Config{}, fmt.Errorf("max-conns: %q is not a positive integer", maxConns)
	}
	if c.ReadTimeout, err = time.ParseDuration(readTimeout); err != nil || c.ReadTimeout <= 0 {
		return Config{}, fmt.Errorf("read-timeout: %q is not a positive duration", readTimeout)
	}
	if c.WriteTimeout, err = time.ParseDuration(writeTimeout); err != nil || c.WriteTimeout <= 0 {
		return Config{}, fmt.Errorf("write-timeout: %q is not a positive duration", writeTimeout)
	}
	if c.OpsAuth != "none" && c.OpsAuth != "service" && c.OpsAuth != "admin" {
		return Config{}, fmt.Errorf(`ops-auth: %q is not "none", "service" or "admin"`, c.OpsAuth)
	}
	if c.AuthFailBurst, err = strconv.Atoi(failBurst); err != nil || c.AuthFailBurst < 1 {
		return Config{}, fmt.Errorf("auth-fail-burst: %q is not a positive integer", failBurst)
	}
	if c.AuthFailRate, err = strconv.ParseFloat(failRate, 64); err != nil || c.AuthFailRate < 0 || math.IsInf(c.AuthFailRate, 0) {
		return Config{}, fmt.Errorf("auth-fail-rate: %q is not a number of failures a second (0: no limit)", failRate)
	}
	if c.ShutdownTimeout, err = time.ParseDuration(shutdown); err != nil {
		return Config{}, fmt.Errorf("shutdown-timeout: %w", err)
	}
	if _, err := logLevel(c.LogLevel); err != nil {
		return Config{}, err
	}
	return c, nil
}

// LogValue logs the config with secrets masked.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("addr", c.Addr),
		slog.Bool("dev", c.Dev),
		slog.String("postgres_url", maskURL(c.PostgresURL)),
		slog.String("redis_url", maskURL(c.RedisURL)),
		slog.String("admin_key", mask(c.AdminKey)),
		slog.String("log_level", c.LogLevel),
		slog.Bool("migrate", c.Migrate),
		slog.String("margin", c.Margin),
		slog.Int("postgres_conns", c.PostgresConns),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout),
		slog.Int("max_conns", c.MaxConns),
		slog.Int("max_in_flight", c.MaxInFlight),
		slog.Duration("read_timeout", c.ReadTimeout),
		slog.Duration("write_timeout", c.WriteTimeout),
		slog.Int("auth_fail_burst", c.AuthFailBurst),
		slog.Float64("auth_fail_rate", c.AuthFailRate),
		slog.String("ops_auth", c.OpsAuth),
		slog.String("tiers", c.Tiers),
		slog.Duration("flush_interval", c.FlushInterval),
		slog.Int("flush_batch", c.FlushBatch),
		slog.Int("flush_max", c.FlushMax),
		slog.Int("flush_pace_rows", c.FlushPaceRows),
		slog.Duration("flush_claim_idle", c.FlushClaimIdle),
		slog.Duration("flush_max_lag", c.FlushMaxLag),
		slog.Duration("listing_refresh", c.ListingRefresh),
		slog.Duration("key_window", c.KeyWindow),
		slog.Int("ledger_retention_months", c.LedgerRetention),
		slog.Int("redis_wait_replicas", c.WaitReplicas),
		slog.Int("redis_buckets", c.RedisBuckets),
		slog.Duration("cache_ttl", c.CacheTTL),
		slog.Int64("l1_max_items", c.L1MaxItems),
		slog.Float64("near_limit", c.NearLimit),
		slog.String("direct_enforce", c.DirectEnforce),
		slog.String("fail_mode", c.FailMode),
		slog.Bool("bench_floor", c.BenchFloor),
		slog.String("debug_addr", c.DebugAddr),
	)
}

// opsScope is the API's OpsScope for QUOTAD_OPS_AUTH.
func opsScope(auth string) string {
	if auth == "none" {
		return ""
	}
	return auth
}

// minAdminKey is the shortest admin key serve accepts outside dev mode:
// 128 bits written in hex, so that the key cannot be guessed.
const minAdminKey = 32

// wellKnownKeys are admin keys printed in this repository (README, make
// run, tests): anyone may know them.
var wellKnownKeys = map[string]bool{"dev-admin-key": true, "test-admin-key": true, "quotadtest-admin-key": true}

// checkAdminKey refuses an admin key anyone could guess, unless the
// config is a dev stack's: the admin key may do everything.
func checkAdminKey(c Config) error {
	if c.AdminKey == "" || c.Dev {
		return nil
	}
	if wellKnownKeys[c.AdminKey] {
		return fmt.Errorf("admin key: %q is printed in quotad's documentation and tests; set QUOTAD_ADMIN_KEY to a random key (openssl rand -hex 32), or QUOTAD_DEV=1 for a local dev stack", c.AdminKey)
	}
	if len(c.AdminKey) < minAdminKey {
		return fmt.Errorf("admin key: %d characters, at least %d are needed (openssl rand -hex 32); or QUOTAD_DEV=1 for a local dev stack", len(c.AdminKey), minAdminKey)
	}
	return nil
}

func mask(secret string) string {
	if secret == "" {
		return ""
	}
	return "****"
}

// maskURL hides the password of a connection URL.
func maskURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "****"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "****")
	}
	q := u.Query()
	if q.Has("password") {
		q.Set("password", "****")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func logLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("log-level: %q is not debug, info, warn or error", s)
	}
	return l, nil
}
