// Package persist is quotad's Postgres tier, the source of truth: plans,
// subjects, prices, API keys, per-period counters and the usage ledger.
package persist

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/quotad/quotad/quota"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the Postgres store. It implements quota.Plans, quota.Subjects,
// quota.Prices and quota.Counter (the synchronous path), and the API key
// lookups of the api package.
type Store struct {
	pool  *pgxpool.Pool
	marks usageMarks // counters written since the last rollup (rollup.go)
}

var (
	_ quota.Plans    = (*Store)(nil)
	_ quota.Subjects = (*Store)(nil)
	_ quota.Prices   = (*Store)(nil)
	_ quota.Counter  = (*Store)(nil)
)

// Open connects to the Postgres at url and checks that it answers.
func Open(ctx context.Context, url string, maxConns int32) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping postgres: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Pool returns the underlying pool, for the flusher and for tests.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Ping reports whether Postgres answers.
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// Migrate applies every pending migration. It holds a Postgres advisory lock
// while it runs, so several instances starting at once migrate once.
func (s *Store) Migrate(ctx context.Context) error {
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migration lock: %w", err)
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("migrations dir: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Seed inserts plans and prices that do not exist yet; existing ones (maybe
// changed through the API) are left alone.
func (s *Store) Seed(ctx context.Context, plans []quota.Plan, prices []quota.Price) error {
	for _, p := range plans {
		if _, err := s.pool.Exec(ctx, `INSERT INTO plans (name, limits) VALUES ($1, $2) ON CONFLICT DO NOTHING`, p.Name, p.Limits); err != nil {
			return fmt.Errorf("seed plan %s: %w", p.Name, err)
		}
	}
	for _, p := range prices {
		if _, err := s.pool.Exec(ctx, `INSERT INTO prices (model, input, output, cache_write, cache_read)
			VALUES ($1, $2::numeric, $3::numeric, $4::numeric, $5::numeric) ON CONFLICT DO NOTHING`,
			p.Model, p.Input.String(), p.Output.String(), p.CacheWrite.String(), p.CacheRead.String()); err != nil {
			return fmt.Errorf("seed price %s: %w", p.Model, err)
		}
	}
	return nil
}

// translate maps driver errors to the domain's sentinels.
func translate(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return quota.ErrNotFound
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		switch pg.Code {
		case "22003": // numeric_value_out_of_range
			return quota.Invalid("amount", "usage would overflow the counter")
		case "23503": // foreign_key_violation: the only key is subjects.plan
			// A subject written as its plan is deleted (the write read the
			// plan before the delete committed).
			return quota.Invalid("plan", "there is no plan of that name (it was just deleted)")
		case "57P01", "57P02", "57P03": // admin_shutdown, crash_shutdown, cannot_connect_now
			return fmt.Errorf("%w: %v", quota.ErrUnavailable, err)
		}
		return err
	}
	// Anything else from the driver that is not a server answer means the
	// server could not be reached or the connection broke.
	var ce *pgconn.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) || pgconn.Timeout(err) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w: %v", quota.ErrUnavailable, err)
	}
	return err
}

// nullTime is nil for the zero time, which stands for "never" (the end of
// the lifetime period).
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
