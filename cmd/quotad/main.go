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
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/console"
	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

func main() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(defaultGOGC)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "quotad:", err)
		os.Exit(1)
	}
}

// defaultGOGC is quotad's GOGC unless the environment sets one. Its live
// heap is small (~25-35 MB under load) and its garbage steady (~100 MB/s
// at 28,000 consumes/s, half of it net/http's per request), so at Go's 100
// it collected ~4 times a second, and each cycle's assists and background
// marking on the one P showed in the tails: consume-record p99 8.2 ms and
// p99.9 22.7 ms at 100, 7.6 and 17.0 ms at 200; check-hot the same
// (three alternating quick runs each, 2026-11-27). The heap peaks at
// about three times the live heap instead of two.
const defaultGOGC = 200

const usage = `usage:
  quotad [serve] [flags]              serve the API (the default)
  quotad migrate [flags]              apply database migrations and exit
  quotad keys create --scope S [--name N] [--expires-in D]  mint an API key (scope service or admin)
  quotad keys list                    list the API keys (never the keys themselves)
  quotad keys revoke ID               revoke an API key, on every running instance
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
		if err := checkAdminKey(cfg); err != nil {
			return err
		}
		return serve(ctx, cfg, stdout)
	case "migrate":
		cfg, err := parseConfig(fs, args, getenv)
		if err != nil {
			return err
		}
		store, err := openMigrated(ctx, cfg)
		if err != nil {
			return err
		}
		defer store.Close()
		fmt.Fprintln(stdout, "migrated")
		return nil
	case "keys":
		return keys(ctx, fs, args, getenv, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", cmd, usage)
}

// newServer builds the storage tiers of cfg over store, the service and
// the API server: quotad's whole request path (serve runs it; the HTTP
// fuzz test drives it). Background work runs until bg ends; the caller
// closes the tiers, also after an error.
func newServer(ctx, bg context.Context, cfg Config, store *persist.Store, margin quota.Decimal, reg *prometheus.Registry, log *slog.Logger) (*api.Server, tiers, error) {
	failOpen := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "quotad_fail_open_total", Help: "Requests allowed without any store answering (QUOTAD_FAIL_MODE=open).",
	}, []string{"op"})
	reg.MustRegister(failOpen)

	// The listing's usage order (subject_usage) is rolled up from counters
	// off the write path, by every instance for what it wrote.
	go store.RunRollup(bg, cfg.ListingRefresh, log)
	// The ledger's months: partitions ahead of the events, and retention.
	go store.RunLedgerMaintenance(bg, persist.LedgerMaintenanceInterval, cfg.LedgerRetention, log)
	var t tiers
	var err error
	if cfg.Tiers == "postgres" {
		t = postgresTiers(store)
	} else if t, err = fullTiers(bg, cfg, store, reg, log); err != nil {
		return nil, t, err
	}
	svc := quota.NewService(t.stores, time.Now, margin)
	if t.settings != nil {
		t.settings.SetOnPrices(func(ctx context.Context) {
			if err := svc.ReloadPrices(ctx); err != nil {
				log.Warn("reload prices", "err", err)
			}
		})
	}
	if err := svc.ReloadPrices(ctx); err != nil {
		return nil, t, err
	}
	if t.feed != nil {
		svc.SetNotifier(t.feed)
	}
	if cfg.FailMode == "open" {
		svc.FailOpen(func(op, subject string, err error) {
			failOpen.WithLabelValues(op).Inc()
			log.Warn("fail open: allowed without a store", "op", op, "subject", subject, "err", err)
		})
	}
	srv := api.New(api.Config{
		Service:  svc,
		Keys:     store,
		AdminKey: cfg.AdminKey,
		Registry: reg,
		Logger:   log,
		Ready:    func(ctx context.Context) api.Readiness { return t.ready(ctx, store) },
		Floor:    cfg.BenchFloor,
		Feed:     t.events(),
		Limits: api.Limits{MaxConns: cfg.MaxConns, MaxInFlight: cfg.MaxInFlight, ReadTimeout: cfg.ReadTimeout, WriteTimeout: cfg.WriteTimeout,
			AuthFailBurst: cfg.AuthFailBurst, AuthFailRate: cfg.AuthFailRate},
		KeysChanged: t.keysChanged(),
		OpsScope:    opsScope(cfg.OpsAuth),
	})
	t.onKeysChanged(srv.ForgetKeys)
	// The console calls the API in-process, so it sees exactly what an API
	// user with the signed-in key sees.
	con := console.New(console.Config{API: srv, Logger: log})
	srv.Mount("/console", con)
	go con.Run(bg)
	return srv, t, nil
}

// serveDebug serves net/http/pprof on its own listener, never on the API
// port.
func serveDebug(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	log.Info("pprof listening", "addr", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		log.Warn("pprof server stopped", "err", err)
	}
}

// openMigrated opens a small pool for a one-off command and migrates.
func openMigrated(ctx context.Context, cfg Config) (*persist.Store, error) {
	store, err := persist.Open(ctx, cfg.PostgresURL, 2)
	if err != nil {
		return nil, err
	}
	if err := store.Migrate(ctx); err != nil {
		store.Close()
		return nil, err
	}
	return store, nil
}

func serve(ctx context.Context, cfg Config, stdout io.Writer) error {
	level, _ := logLevel(cfg.LogLevel)
	log := slog.New(slog.NewJSONHandler(stdout, &slog.HandlerOptions{Level: level}))
	log.Info("starting quotad", "config", cfg)

	margin, err := quota.ParseDecimal(cfg.Margin)
	if err == nil {
		err = quota.ValidateMargin(margin)
	}
	if err != nil {
		return fmt.Errorf("margin %q: %w", cfg.Margin, err)
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

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// bg runs the background work (flusher, Redis probe, invalidations); it
	// ends after the HTTP server has stopped and the flusher has drained.
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()

	srv, t, err := newServer(ctx, bg, cfg, store, margin, reg, log)
	defer t.close()
	if err != nil {
		return err
	}
	if cfg.DebugAddr != "" {
		go serveDebug(cfg.DebugAddr, log)
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	httpSrv, guarded := srv.HTTPServer(ln)
	if t.feed != nil {
		// Events streams never finish on their own: end them when the
		// shutdown begins, or Shutdown would wait for them.
		httpSrv.RegisterOnShutdown(t.feed.Disconnect)
	}
	errc := make(chan error, 1)
	go func() { errc <- httpSrv.Serve(guarded) }()
	log.Info("listening", "addr", ln.Addr().String(), "tiers", cfg.Tiers)

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
	if t.flusher != nil {
		stopBG() // stops the periodic flusher; Drain then empties what is left
		<-t.flusherDone
		log.Info("draining the flusher")
		if err := t.flusher.Drain(shutCtx); err != nil {
			log.Warn("flusher did not drain; pending usage stays in redis for the next flush", "err", err)
		} else if err := t.pending.Leave(shutCtx); err != nil {
			log.Warn("flusher heartbeat not removed; it lapses by itself", "err", err)
		}
	}
	stopBG() // the rollup loop too; what the drain wrote is rolled up now
	if err := store.Rollup(shutCtx); err != nil {
		log.Warn("subject_usage: last rollup failed; the next instance to start catches up", "err", err)
	}
	log.Info("stopped")
	return nil
}
