package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/quotad/quotad/api"
	"github.com/quotad/quotad/cache"
)

// keys runs "quotad keys create|list|revoke": the same as POST, GET and
// DELETE /v1/keys, on Postgres directly.
func keys(ctx context.Context, fs *flag.FlagSet, args []string, getenv func(string) string, stdout io.Writer) error {
	sub := ""
	if len(args) > 0 {
		sub, args = args[0], args[1:]
	}
	var scope, name, expiresIn *string
	switch sub {
	case "create":
		scope = fs.String("scope", api.ScopeService, "service or admin")
		name = fs.String("name", "", "a label for the key")
		expiresIn = fs.String("expires-in", "", "the key stops working after this long (e.g. 720h); default never")
	case "list", "revoke":
	default:
		return fmt.Errorf("keys: %q is not create, list or revoke\n%s", sub, usage)
	}
	cfg, err := parseConfig(fs, args, getenv)
	if err != nil {
		return err
	}
	var id int64
	switch {
	case sub == "revoke":
		if fs.NArg() != 1 {
			return fmt.Errorf("keys revoke: give the id of one key (quotad keys list shows them)")
		}
		if id, err = strconv.ParseInt(fs.Arg(0), 10, 64); err != nil || id < 1 {
			return fmt.Errorf("keys revoke: %q is not a key id", fs.Arg(0))
		}
	case fs.NArg() != 0:
		return fmt.Errorf("keys %s: unexpected %q", sub, fs.Arg(0))
	}
	var expiresAt *time.Time
	if sub == "create" {
		if *scope != api.ScopeService && *scope != api.ScopeAdmin {
			return fmt.Errorf("keys create: --scope must be service or admin")
		}
		if !api.ValidKeyName(*name) {
			return fmt.Errorf("keys create: --name must be at most 128 characters of text without control characters")
		}
		if *expiresIn != "" {
			d, err := time.ParseDuration(*expiresIn)
			if err != nil || d <= 0 {
				return fmt.Errorf("keys create: --expires-in %q is not a positive duration", *expiresIn)
			}
			t := time.Now().Add(d).UTC().Truncate(time.Second)
			expiresAt = &t
		}
	}
	store, err := openMigrated(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()

	switch sub {
	case "create":
		_, key, err := store.CreateKey(ctx, *scope, *name, expiresAt)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, key)
	case "list":
		keys, err := store.Keys(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSCOPE\tNAME\tCREATED\tEXPIRES")
		for _, k := range keys {
			expires := "never"
			if k.ExpiresAt != nil {
				expires = k.ExpiresAt.Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%q\t%s\t%s\n", k.ID, k.Scope, k.Name, k.CreatedAt.Format(time.RFC3339), expires)
		}
		return tw.Flush()
	case "revoke":
		k, err := store.RevokeKey(ctx, id)
		if err != nil {
			return fmt.Errorf("keys revoke %d: %w", id, err)
		}
		fmt.Fprintf(stdout, "revoked key %d (%s, %q)\n", k.ID, k.Scope, k.Name)
		if err := tellInstances(ctx, cfg, stdout); err != nil {
			fmt.Fprintf(stdout, "warning: running instances were not told (%v); they stop accepting the key within %s\n", err, time.Minute)
		}
	}
	return nil
}

// tellInstances publishes keysMessage on the invalidation bus, so that
// running instances drop their cached keys now, and waits (up to a
// second) until they have.
func tellInstances(ctx context.Context, cfg Config, stdout io.Writer) error {
	rdb, db, _, err := cache.Dial(cfg.RedisURL, cache.Timeouts{Dial: time.Second, Read: 3 * time.Second, Write: 3 * time.Second, Pool: 4 * time.Second, PoolSize: 2})
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return err
	}
	cache.NewBus(rdb, db, slog.New(slog.NewTextHandler(stdout, &slog.HandlerOptions{Level: slog.LevelError}))).Publish(ctx, keysMessage)
	return nil
}
