package persist

// The usage ledger's partitions and retention. The ledger is partitioned
// by the month of created_at, UTC (migration 00014). Its invariants:
//
//  1. Every event id is written once: the key is (event_id, created_at),
//     and an event's created_at is its own time, the same in every copy
//     of it, so the key is as unique as the event id (isDuplicateEvent,
//     the flush's ON CONFLICT).
//  2. No write fails for want of a partition: the current month and the
//     next LedgerMonthsAhead have one (EnsureLedgerPartitions, at start
//     and every LedgerMaintenanceInterval), and a row of any other month
//     goes to the default partition.
//  3. Retention drops whole months: with QUOTAD_LEDGER_RETENTION_MONTHS
//     n > 0, the partitions of months that ended before the current month
//     and its n-1 predecessors are detached and dropped, and the default
//     partition's rows from before then deleted. Counters do not read the
//     ledger, so usage and limits are untouched; only the history
//     (GET .../ledger, .../usage) ends there.
//
// Instances run it at once without harm: each run holds an advisory lock.

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/internal/periodic"
)

// LedgerMonthsAhead is how many months after the current one have a
// partition before any event of them can arrive.
const LedgerMonthsAhead = 2

// LedgerMaintenanceInterval is how often an instance looks at the
// partitions: far less than a month, and cheap (a catalog read).
const LedgerMaintenanceInterval = time.Hour

// ledgerLock is the key of the advisory lock partition maintenance takes.
const ledgerLock = 126943148143458

// monthPartition matches the names of the monthly partitions.
var monthPartition = regexp.MustCompile(`^usage_ledger_(\d{4})_(\d{2})$`)

// monthStart is the start of t's month, UTC.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// EnsureLedgerPartitions creates the partitions of now's month and the
// LedgerMonthsAhead after it that are missing, and with retentionMonths >
// 0 drops those of months before the retention (see the top of this
// file); it answers the partitions it dropped.
func (s *Store) EnsureLedgerPartitions(ctx context.Context, now time.Time, retentionMonths int) (dropped []string, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(ledgerLock)); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'usage_ledger'::regclass`)
		if err != nil {
			return err
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		have := map[string]bool{}
		for _, n := range names {
			have[n] = true
		}
		first := monthStart(now)
		for i := range LedgerMonthsAhead + 1 {
			m := first.AddDate(0, i, 0)
			name := "usage_ledger_" + m.Format("2006_01")
			if have[name] {
				continue
			}
			if _, err := tx.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF usage_ledger FOR VALUES FROM ('%s') TO ('%s')`,
				pgx.Identifier{name}.Sanitize(), m.Format(time.RFC3339), m.AddDate(0, 1, 0).Format(time.RFC3339))); err != nil {
				return fmt.Errorf("create ledger partition %s: %w", name, err)
			}
		}
		if retentionMonths <= 0 {
			return nil
		}
		cutoff := first.AddDate(0, -(retentionMonths - 1), 0)
		for _, n := range names {
			sm := monthPartition.FindStringSubmatch(n)
			if sm == nil {
				continue
			}
			m, err := time.Parse("2006_01", sm[1]+"_"+sm[2])
			if err != nil || m.AddDate(0, 1, 0).After(cutoff) {
				continue
			}
			if _, err := tx.Exec(ctx, "ALTER TABLE usage_ledger DETACH PARTITION "+pgx.Identifier{n}.Sanitize()); err != nil {
				return fmt.Errorf("detach ledger partition %s: %w", n, err)
			}
			if _, err := tx.Exec(ctx, "DROP TABLE "+pgx.Identifier{n}.Sanitize()); err != nil {
				return fmt.Errorf("drop ledger partition %s: %w", n, err)
			}
			dropped = append(dropped, n)
		}
		_, err = tx.Exec(ctx, `DELETE FROM usage_ledger_default WHERE created_at < $1`, cutoff)
		return err
	})
	if err != nil {
		return nil, err
	}
	return dropped, nil
}

// RunLedgerMaintenance keeps the ledger's partitions (EnsureLedgerPartitions)
// every interval until ctx ends.
func (s *Store) RunLedgerMaintenance(ctx context.Context, interval time.Duration, retentionMonths int, log *slog.Logger) {
	run := func() {
		dropped, err := s.EnsureLedgerPartitions(ctx, time.Now(), retentionMonths)
		if err != nil {
			log.Warn("ledger partitions", "err", err)
			return
		}
		if len(dropped) > 0 {
			log.Info("ledger months past the retention dropped", "partitions", dropped, "retention_months", retentionMonths)
		}
	}
	run()
	periodic.Run(ctx, interval, run)
}
