package persist_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/quotad/quotad/persist"
	"github.com/quotad/quotad/quota"
)

// BenchmarkFlusherWrite measures the Postgres side of a flush: ledger rows
// and counter upserts for 20,000 consumes over 10,000 subjects per op,
// unpaced (paced, each flush would also pause 78 ms: FlusherConfig.PaceRows),
// without idempotency keys and with a unique key on each consume (as
// billing clients send them: each is also an idempotency row).
func BenchmarkFlusherWrite(b *testing.B) {
	st := newStore(b)
	for _, keyed := range []bool{false, true} {
		name := "nokey"
		if keyed {
			name = "keys"
		}
		b.Run(name, func(b *testing.B) {
			f := persist.NewFlusher(st, nil, persist.FlusherConfig{PaceRows: -1})
			ctx := context.Background()
			start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
			const n = 20_000
			for i := 0; b.Loop(); i++ {
				events := make([]quota.Event, n)
				for j := range events {
					at := time.Now()
					events[j] = quota.Event{ID: quota.NewEventID(at), Kind: quota.EventConsume, Subject: fmt.Sprint("user:b", j%10_000),
						Meter: "credits", Start: start, End: start.AddDate(0, 1, 0), Amount: 1, At: at}
					if keyed {
						events[j].IdempotencyKey, events[j].RequestHash = events[j].ID, "h"
					}
				}
				if err := f.Write(ctx, events); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "µs/event")
		})
	}
}
