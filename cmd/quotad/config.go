package main

import (
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is everything quotad reads at start, from flags and QUOTAD_*
// variables (a flag wins over its variable).
type Config struct {
	Addr            string        // QUOTAD_ADDR, --addr; default ":8080"
	PostgresURL     string        // QUOTAD_POSTGRES_URL, --postgres-url; default the make run stack
	RedisURL        string        // QUOTAD_REDIS_URL, --redis-url; default the make run stack
	AdminKey        string        // QUOTAD_ADMIN_KEY, --admin-key; default none (no admin key)
	LogLevel        string        // QUOTAD_LOG_LEVEL, --log-level; default "info"
	Migrate         bool          // QUOTAD_MIGRATE, --migrate; default true: serve migrates on start
	Margin          string        // QUOTAD_MARGIN, --margin; default "0.2"
	PostgresConns   int           // QUOTAD_POSTGRES_CONNS, --postgres-conns; default 32
	ShutdownTimeout time.Duration // QUOTAD_SHUTDOWN_TIMEOUT, --shutdown-timeout; default 15s
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
	fs.StringVar(&c.Addr, "addr", env("QUOTAD_ADDR", ":8080"), "listen address")
	fs.StringVar(&c.PostgresURL, "postgres-url", env("QUOTAD_POSTGRES_URL", "postgres://postgres@127.0.0.1:25432/quotad?sslmode=disable"), "Postgres URL")
	fs.StringVar(&c.RedisURL, "redis-url", env("QUOTAD_REDIS_URL", "redis://127.0.0.1:26379/0"), "Redis URL")
	fs.StringVar(&c.AdminKey, "admin-key", env("QUOTAD_ADMIN_KEY", ""), "admin API key")
	fs.StringVar(&c.LogLevel, "log-level", env("QUOTAD_LOG_LEVEL", "info"), "debug, info, warn or error")
	fs.StringVar(&migrate, "migrate", env("QUOTAD_MIGRATE", "true"), "migrate the database on start")
	fs.StringVar(&c.Margin, "margin", env("QUOTAD_MARGIN", "0.2"), "cost book margin")
	fs.StringVar(&conns, "postgres-conns", env("QUOTAD_POSTGRES_CONNS", "32"), "Postgres pool size")
	fs.StringVar(&shutdown, "shutdown-timeout", env("QUOTAD_SHUTDOWN_TIMEOUT", "15s"), "time to finish in-flight work on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	var err error
	if c.Migrate, err = strconv.ParseBool(migrate); err != nil {
		return Config{}, fmt.Errorf("migrate: %w", err)
	}
	if c.PostgresConns, err = strconv.Atoi(conns); err != nil || c.PostgresConns < 1 {
		return Config{}, fmt.Errorf("postgres-conns: must be a positive integer")
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
		slog.String("postgres_url", maskURL(c.PostgresURL)),
		slog.String("redis_url", maskURL(c.RedisURL)),
		slog.String("admin_key", mask(c.AdminKey)),
		slog.String("log_level", c.LogLevel),
		slog.Bool("migrate", c.Migrate),
		slog.String("margin", c.Margin),
		slog.Int("postgres_conns", c.PostgresConns),
		slog.Duration("shutdown_timeout", c.ShutdownTimeout),
	)
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
