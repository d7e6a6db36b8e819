// Command quotad serves the quota API (quotad serve), migrates its database
// (quotad migrate) and mints API keys (quotad keys create).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quotad:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  quotad [serve] [flags]              serve the API (the default)
  quotad migrate [flags]              apply database migrations and exit
  quotad keys create --scope S [--name N]  mint an API key (scope service or admin)
`

// run is quotad's whole program; main and the tests call it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("quotad "+cmd, flag.ContinueOnError)
	fs.SetOutput(stdout)
	switch cmd {
	case "serve":
		cfg, err := parseConfig(fs, args, getenv)
		if err != nil {
			return err
		}
		return serve(ctx, cfg, stdout)
	case "migrate":
		cfg, err := parseConfig(fs, args, getenv)
		if err != nil {
			return err
		}
		store, err := persist.Open(ctx, cfg.PostgresURL, 2)
		if err != nil {
			return err
		}
		defer store.Close()
		if err := store.Migrate(ctx); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "migrated")
		return nil
	case "keys":
		if len(args) == 0 || args[0] != "create" {
			return fmt.Errorf("keys: only %q is supported\n%s", "create", usage)
		}
		scope := fs.String("scope", api.ScopeService, "service or admin")
		name := fs.String("name", "", "a label for the key")
		cfg, err := parseConfig(fs, args[1:], getenv)
		if err != nil {
			return err
		}
		if *scope != api.ScopeService && *scope != api.ScopeAdmin {
			return fmt.Errorf("keys create: --scope must be service or admin")
		}
		store, err := persist.Open(ctx, cfg.PostgresURL, 2)
		if err != nil {
			return err
		}
		defer store.Close()
		if err := store.Migrate(ctx); err != nil {
			return err
		}
		key, err := store.CreateKey(ctx, *scope, *name)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, key)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", cmd, usage)
}

func serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	level, _ := logLevel(cfg.LogLevel)
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}))
	log.Info("starting quotad", "config", cfg)

	margin, err := quota.ParseDecimal(cfg.Margin)
	if err != nil || margin.Sign() < 0 {
		return fmt.Errorf("margin: %q is not a non-negative decimal", cfg.Margin)
	}
	store, err := persist.Open(ctx, cfg.PostgresURL, int32(cfg.PostgresConns))
	if err != nil {
		return err
	}
	defer store.Close()
	if cfg.Migrate {
		if err := store.Migrate(ctx); err != nil {
			return err
		}
	}
	if err := store.Seed(ctx, quota.DefaultPlans(), quota.DefaultPrices()); err != nil {
		return err
	}

	svc := quota.NewService(quota.Stores{Plans: store, Subjects: store, Prices: store, Counter: store}, time.Now, margin)
	if err := svc.ReloadPrices(ctx); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv := api.New(api.Config{
		Service:  svc,
		Keys:     store,
		AdminKey: cfg.AdminKey,
		Registry: reg,
		Logger:   log,
		Ready: func(ctx context.Context) api.Readiness {
			if err := store.Ping(ctx); err != nil {
				return api.Readiness{Status: "unavailable", Stores: map[string]string{"postgres": "down"}}
			}
			return api.Readiness{Status: "ok", Stores: map[string]string{"postgres": "up"}}
		},
	})

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := httpSrv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
