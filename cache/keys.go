package cache

// The Redis key layout: every key quotad keeps, in one place. A Lua script
// is atomic only over the keys it is given, and on Redis Cluster only
// over keys of one hash slot. So a subject's keys and the pending stream
// its events go to share a hash tag, and a script touches one tag's keys.
//
// Two layouts, one code path (Layout):
//
//   - one Redis (no buckets, the zero Layout): each subject's keys are
//     tagged by the subject, and one stream holds every subject's events.
//   - buckets (QUOTAD_REDIS_BUCKETS; required on Redis Cluster): each
//     subject belongs to bucket hash(subject) mod n, its keys carry the
//     bucket's tag, and each bucket has its own stream, which the
//     flushers read in turn. The n tags are picked so that their slots
//     spread evenly over the 16,384, and so over the masters.
//
// The keys (T is the subject in the first layout, the bucket's tag in
// the second, where <S>: follows the tag):
//
//	q:{T}:c:<meter>:<period start>  counter (counterKey)
//	q:{T}:h:<meter>:<period start>  live reservations of a counter (holdsKey)
//	q:{T}:r:<id>                    a reservation's record (recordKey)
//	q:{T}:i:<key>                   an idempotency key's first answer (idempotencyKey)
//	q:{T}:drops                     drop mark (dropsKey; see recovery.go)
//	q:{T}:s                         subject settings (subjectKey)
//	q:pending or q:{tag}:pending    unflushed usage events (Streams), group FlushGroup
//	global (no script mixes them with others):
//	q:flushers:alive:<consumer>     a flusher's heartbeat (aliveKey)
//	q:layout                        the buckets of the layout in use (LayoutKey)
//	q:inv:<id>                      acknowledgements of an invalidation (ackKey)
//	q:events, q:events:watchers     the live usage feed (EventsStream, WatchersKey)
//
// A subject's bucket, and so every key name, depends on n: changing it
// (or moving from one layout to the other) is a move to a new Redis. The
// counters reload from Postgres (recovery invariant 1), but the events
// still in the old streams must be flushed first (stop every instance,
// let the last one drain, then start with the new setting), which the
// layout guard (layoutguard.go) enforces.

import (
	"hash/fnv"
	"strconv"

	"github.com/quotad/quotad/quota"
)

// PendingStream is the one stream of pending usage in the one-Redis
// layout; FlushGroup is the flushers' consumer group on every stream.
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

// DefaultClusterBuckets is the buckets on a cluster unless
// QUOTAD_REDIS_BUCKETS says otherwise: enough that every master of a
// cluster of a few holds several, few enough that a flush's read of
// every stream is one short pipeline per master.
const DefaultClusterBuckets = 16

// MaxBuckets bounds QUOTAD_REDIS_BUCKETS: each flush reads every bucket's
// stream, and the tags must fit the slots.
const MaxBuckets = 1024

// Layout names a deployment's keys (see the top of this file). The zero
// Layout is the one-Redis layout.
type Layout struct {
	tags []string // one hash tag per bucket; none: the one-Redis layout
}

// NewLayout returns the layout with n buckets; 0 is the one-Redis layout.
// Bucket i's tag is the first of "b<i>", "b<i>.1", "b<i>.2", ... whose
// slot lies in the i-th of n equal ranges of the slots.
func NewLayout(n int) Layout {
	l := Layout{tags: make([]string, n)}
	for i := range n {
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n
		tag := "b" + strconv.Itoa(i)
		for k := 1; ; k++ {
			if s := int(keySlot(tag)); s >= lo && s < hi {
				break
			}
			tag = "b" + strconv.Itoa(i) + "." + strconv.Itoa(k)
		}
		l.tags[i] = tag
	}
	return l
}

// Buckets is the number of buckets; 0 in the one-Redis layout.
func (l Layout) Buckets() int { return len(l.tags) }

// Streams names every pending stream, bucket by bucket.
func (l Layout) Streams() []string {
	if len(l.tags) == 0 {
		return []string{PendingStream}
	}
	s := make([]string, len(l.tags))
	for i, t := range l.tags {
		s[i] = "q:{" + t + "}:pending"
	}
	return s
}

// bucket is subject's bucket: an FNV-1a hash of its id, mod the buckets.
func (l Layout) bucket(subject string) int {
	if len(l.tags) == 0 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(subject))
	return int(h.Sum32() % uint32(len(l.tags)))
}

// stream names the pending stream subject's events go to.
func (l Layout) stream(subject string) string {
	if len(l.tags) == 0 {
		return PendingStream
	}
	return "q:{" + l.tags[l.bucket(subject)] + "}:pending"
}

// subjectPrefix is the start of every key of subject S: "q:{S}:", or
// "q:{<its bucket's tag>}:S:".
func (l Layout) subjectPrefix(subject string) string {
	if len(l.tags) == 0 {
		return "q:{" + subject + "}:"
	}
	return "q:{" + l.tags[l.bucket(subject)] + "}:" + subject + ":"
}

// counterKey returns the Redis key of a counter.
func (l Layout) counterKey(k quota.CounterKey) string {
	return l.subjectPrefix(k.Subject) + "c:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// holdsKey returns the Redis key of a counter's live reservations (see
// reserveScript).
func (l Layout) holdsKey(k quota.CounterKey) string {
	return l.subjectPrefix(k.Subject) + "h:" + k.Meter + ":" + strconv.FormatInt(k.Start.Unix(), 10)
}

// recordKey returns the Redis key of a reservation's record.
func (l Layout) recordKey(subject, id string) string { return l.subjectPrefix(subject) + "r:" + id }

// idempotencyKey returns the Redis key of a subject's idempotency key.
func (l Layout) idempotencyKey(subject, key string) string {
	return l.subjectPrefix(subject) + "i:" + key
}

// dropsKey returns the Redis key of a subject's drop mark, a token that
// changes with every drop of the subject's stale copies, counters or
// settings (see dropStale and Counter.load).
func (l Layout) dropsKey(subject string) string { return l.subjectPrefix(subject) + "drops" }

// subjectKey returns the Redis key of a subject's settings.
func (l Layout) subjectKey(id string) string { return l.subjectPrefix(id) + "s" }

// CounterKey is counterKey for tools and tests that look into Redis.
func (l Layout) CounterKey(k quota.CounterKey) string { return l.counterKey(k) }

// IdempotencyKey is idempotencyKey for tools and tests.
func (l Layout) IdempotencyKey(subject, key string) string { return l.idempotencyKey(subject, key) }

// SubjectPrefix is subjectPrefix for tools and tests.
func (l Layout) SubjectPrefix(subject string) string { return l.subjectPrefix(subject) }

// aliveKey is the key that says a flusher (a consumer of the group) lives.
func aliveKey(consumer string) string { return "q:flushers:alive:" + consumer }

// ackKey is the key that counts the instances that applied invalidation id.
func ackKey(id string) string { return "q:inv:" + id }

// clusterSlots is the number of hash slots of Redis Cluster.
const clusterSlots = 16384

// keySlot is Redis Cluster's slot of key: CRC16 (XMODEM) of its hash tag
// (the part between the first "{" and the next "}", when not empty), or
// of the whole key, mod 16,384.
func keySlot(key string) uint16 {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						key = key[i+1 : j]
					}
					return crc16(key) % clusterSlots
				}
			}
			break
		}
	}
	return crc16(key) % clusterSlots
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021, initial 0), Redis Cluster's.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
