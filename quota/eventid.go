package quota

import (
	"crypto/rand"
	"strconv"
	"time"
)

// NewEventID returns a unique id for an event (a consume, a reset, a
// provisioning) happening at t: 11 base-32 digits of its Unix millisecond,
// then 16 random base-32 characters (80 bits). Ids sort by time, so the
// ledger's unique index on them grows at its right edge instead of taking
// random inserts all over a large tree.
func NewEventID(t time.Time) string {
	ms := strconv.FormatInt(t.UnixMilli(), 32)
	b := make([]byte, 0, 27)
	for range 11 - len(ms) {
		b = append(b, '0')
	}
	b = append(b, ms...)
	return string(append(b, rand.Text()[:16]...))
}
