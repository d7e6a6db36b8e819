package persist

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Look is refreshStats for the tests: one look at the queue.
func (f *Flusher) Look(ctx context.Context) error {
	_, err := f.refreshStats(ctx)
	return err
}

// SetFailing records a failed (err != nil) or successful flush.
func (f *Flusher) SetFailing(err error) { f.setErr(err) }

// SetFlushing records a flush under way since start (zero: none).
func (f *Flusher) SetFlushing(start time.Time) {
	if start.IsZero() {
		f.flushing.Store(0)
		return
	}
	f.flushing.Store(start.UnixNano())
}

// PaceEvery answers how many ledger rows a flush of rows rows copies
// between pauses (0: none).
func PaceEvery(rows, paceRows int, interval time.Duration) int {
	return newPacer(rows, paceRows, interval).every
}

// RowsWritten is the flusher's rows-written counter of table.
func (f *Flusher) RowsWritten(table string) prometheus.Counter {
	return f.m.rows.WithLabelValues(table)
}

// RollupLock is the advisory lock key rollups serialize on.
const RollupLock = rollupLock
