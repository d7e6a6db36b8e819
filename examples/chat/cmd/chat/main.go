// Command chat serves the example chat service (package chat) in front of
// a quotad.
//
//	QUOTAD_URL=http://127.0.0.1:8080 QUOTAD_KEY=dev-admin-key go run ./examples/chat/cmd/chat
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

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/examples/chat"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	addr := fs.String("addr", env("CHAT_ADDR", "127.0.0.1:8090"), "listen address (CHAT_ADDR)")
	quotadURL := fs.String("quotad-url", env("QUOTAD_URL", "http://127.0.0.1:8080"), "quotad's base URL (QUOTAD_URL)")
	key := fs.String("quotad-key", env("QUOTAD_KEY", "dev-admin-key"), "quotad API key, service scope is enough (QUOTAD_KEY)")
	failOpen := fs.Bool("fail-open", env("CHAT_FAIL_OPEN", "") == "true", "serve unmetered when quotad is unreachable (CHAT_FAIL_OPEN=true)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stdout, nil))
	opts := []client.Option{client.OnFailOpen(func(op, subject string, err error) {
		log.Warn("quotad unreachable: serving unmetered", "op", op, "subject", subject, "err", err)
	})}
	if *failOpen {
		opts = append(opts, client.WithFailMode(client.FailOpen))
	}
	app := chat.New(chat.Config{
		Quota:  client.New(*quotadURL, *key, opts...),
		Tokens: map[string]string{"alice-token": "alice", "bob-token": "bob"},
		Logger: log,
	})
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 5 * time.Second}
	srv.RegisterOnShutdown(app.CloseStreams)
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	log.Info("chat serving", "addr", l.Addr().String(), "quotad", *quotadURL)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Shutdown lets the messages in flight commit their usage.
	if err := srv.Shutdown(sctx); err != nil {
		return errors.Join(err, srv.Close())
	}
	return nil
}
