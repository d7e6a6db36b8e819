package cache

// The Redis key layout: every key quotad keeps, in one place. A Lua script
// is atomic only over the keys it is given, and on Redis Cluster only
// over keys of one hash slot; so every key of one subject carries the
// subject as its hash tag ({S}), and a script touches one subject's keys
// at a time, plus the keys below marked global.
//
//	q:{S}:c:<meter>:<period start>  counter (counterKey)
//	q:{S}:h:<meter>:<period start>  live reservations of a counter (holdsKey)
//	q:{S}:r:<id>                    a reservation's record (recordKey)
//	q:{S}:i:<key>                   an idempotency key's first answer (idempotencyKey)
//	q:{S}:drops                     drop mark (dropsKey; see recovery.go)
//	q:{S}:s                         subject settings (subjectKey)
//	global:
//	q:pending                       unflushed usage events (PendingStream), group FlushGroup
//	q:flushers:alive:<consumer>     a flusher's heartbeat (aliveKey)
//	q:inv:<id>                      acknowledgements of an invalidation (ackKey)
//	q:events, q:events:watchers     the live usage feed (EventsStream, WatchersKey)
//
// Not cluster-safe yet: the consume, reset and reservation scripts append
// to the one global PendingStream with subjects' keys, so quotad runs on
// one Redis (with replicas); Redis Cluster needs the stream split into
// buckets whose tag the subjects' keys share.

import (
	"strconv"

	"github.com/quotad/quotad/quota"
)

// Stream and consumer group of pending usage.
const (
	PendingStream = "q:pending"
	FlushGroup    = "flushers"
)

// Keys of the feed. Entries of EventsStream hold a change (fields t: type,
// s: subject, c: the change as JSON) or mark a gap (field g).
const (
	EventsStream = "q:events"
	WatchersKey  = "q:events:watchers"
)

// subjectPrefix is the start of every key of subject S: "q:{S}:".
func subjectPrefix(subject string) string { return "q:{" + subject + "}:" }

// counterKey returns the Redis key of a counter.
func counterKey(k quota.CounterKey) string {
	return subjectPrefix(k.Subject) + "c:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// holdsKey returns the Redis key of a counter's live reservations (see
// reserveScript).
func holdsKey(k quota.CounterKey) string {
	return subjectPrefix(k.Subject) + "h:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// recordKey returns the Redis key of a reservation's record.
func recordKey(subject, id string) string { return subjectPrefix(subject) + "r:" + id }

// idempotencyKey returns the Redis key of a subject's idempotency key.
func idempotencyKey(subject, key string) string { return subjectPrefix(subject) + "i:" + key }

// dropsKey returns the Redis key of a subject's drop mark, a token that
// changes with every drop of the subject's stale copies, counters or
// settings (see dropStale and Counter.load).
func dropsKey(subject string) string { return subjectPrefix(subject) + "drops" }

// subjectKey returns the Redis key of a subject's settings.
func subjectKey(id string) string { return subjectPrefix(id) + "s" }

// aliveKey is the key that says a flusher (a consumer of the group) lives.
func aliveKey(consumer string) string { return "q:flushers:alive:" + consumer }

// ackKey is the key that counts the instances that applied invalidation id.
func ackKey(id string) string { return "q:inv:" + id }
