package quota

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Reservations hold an estimate against a limit before expensive work and
// settle the real cost after it:
//
//   - Reserve holds Amount atomically with the enforce rule: granted only if
//     used + reserved + amount <= limit (always, for a limit with overage).
//   - Commit records the actual amount (the held one when none is given) as
//     a record consume, even above the estimate or after expiry, and frees
//     the hold, in one step. A second commit answers the first commit.
//     A commit of a reservation the store has no record of, within a day
//     of its expiry, is recorded all the same (Redis lost it: the work
//     still happened); later it is ErrNotFound.
//   - Release frees the hold without consuming. A release after a commit,
//     or a commit after a release, is ErrConflict saying which happened.
//   - A hold not settled by its expiry stops counting as reserved at that
//     instant on every instance (reads count only holds whose expiry is in
//     the future); nothing sweeps on the request path.
//
// A reservation id names its subject, meter and period, so that commit and
// release find the hold without a lookup; usage it commits is counted in
// the period it was reserved in.

// Reservation limits.
const (
	DefaultReservationTTL = 300 * time.Second
	MaxReservationTTL     = 3600 * time.Second
)

// Reservation states as commit answers them.
const (
	ReservationCommitted = "committed" // committed before its expiry
	ReservationExpired   = "expired"   // committed after its expiry: still recorded
	ReservationReleased  = "released"
)

// ReserveRequest asks to hold Amount (or Usage, priced) of Meter.
type ReserveRequest struct {
	Subject        string `json:"subject"`
	Meter          string `json:"meter,omitempty"`
	Amount         int64  `json:"amount,omitempty"`
	Usage          *Usage `json:"usage,omitempty"`
	TTLSeconds     int64  `json:"ttl_seconds,omitempty"` // default 300, at most 3600
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// ReserveResponse answers a ReserveRequest. ID and ExpiresAt are set only
// when Granted.
type ReserveResponse struct {
	ID        string `json:"id,omitempty"`
	Granted   bool   `json:"granted"`
	Duplicate bool   `json:"duplicate"`
	Subject   string `json:"subject"`
	Meter     string `json:"meter"`
	Amount    int64  `json:"amount"`
	ExpiresAt *Time  `json:"expires_at,omitempty"`
	Used      int64  `json:"used"`
	Reserved  int64  `json:"reserved"`
	Limit     int64  `json:"limit"`
	Remaining int64  `json:"remaining"`
	ResetsAt  Time   `json:"resets_at"`
}

// CommitRequest is the actual cost of a reservation's work: Amount or
// Usage (priced), or neither for the held amount.
type CommitRequest struct {
	Amount int64  `json:"amount,omitempty"`
	Usage  *Usage `json:"usage,omitempty"`
}

// CommitResponse answers a commit: a consume's answer, plus the
// reservation's state.
type CommitResponse struct {
	ConsumeResponse
	ID          string `json:"id"`
	Reservation string `json:"reservation"` // committed or expired
}

// ReleaseResponse answers a release: the subject's meter after it.
type ReleaseResponse struct {
	ID          string `json:"id"`
	Reservation string `json:"reservation"` // released
	Duplicate   bool   `json:"duplicate"`
	Subject     string `json:"subject"`
	Meter       string `json:"meter"`
	Amount      int64  `json:"amount"`
	Used        int64  `json:"used"`
	Reserved    int64  `json:"reserved"`
	Limit       int64  `json:"limit"`
	Remaining   int64  `json:"remaining"`
	ResetsAt    Time   `json:"resets_at"`
}

// ReserveOp is one reservation as a Holds store applies it.
type ReserveOp struct {
	Key            CounterKey
	ID             string
	Amount         int64
	Enforce        bool // false for a limit with overage: always granted
	Limit          int64
	ExpiresAt      time.Time
	IdempotencyKey string
	RequestHash    string
	At             time.Time
}

// ReserveResult is what a Holds store answers for a ReserveOp. For a
// duplicate, ID, Amount and ExpiresAt are the first request's.
type ReserveResult struct {
	Granted, Duplicate bool
	ID                 string
	Amount             int64
	ExpiresAt          time.Time
	Used, Reserved     int64
	Expired            []string // ids of expired holds this call dropped
}

// CommitOp settles reservation ID of Key with Amount (0: the held amount).
type CommitOp struct {
	Key       CounterKey
	ID        string
	Amount    int64
	Usage     *Usage
	EventID   string // the ledger's dedup key of the usage it records
	At        time.Time
	ExpiresAt time.Time // the reservation's, from its id
}

// CommitResult is what a Holds store answers for a CommitOp.
type CommitResult struct {
	Duplicate      bool // an earlier commit answered; these are its values
	Expired        bool // committed after the reservation's expiry
	Amount         int64
	Used, Reserved int64
}

// ReleaseResult is what a Holds store answers for a release.
type ReleaseResult struct {
	Duplicate      bool  // it was released before
	Amount         int64 // the held amount
	Used, Reserved int64
}

// Holds stores reservations. Unknown ids are ErrNotFound; a commit of a
// released reservation or a release of a committed one is ErrConflict.
type Holds interface {
	Reserve(ctx context.Context, op ReserveOp) (ReserveResult, error)
	Commit(ctx context.Context, op CommitOp) (CommitResult, error)
	Release(ctx context.Context, key CounterKey, id string, at time.Time) (ReleaseResult, error)
}

// reservationPrefix starts every reservation id.
const reservationPrefix = "rsv_"

// NewReservationID returns a new id for a hold of amount on key expiring
// at expires. The id carries all of them (so commit and release need no
// lookup to find the hold) and 96 random bits (so it cannot be guessed);
// a store keeps a record under the whole id, so an id edited to say
// something else names no reservation.
func NewReservationID(key CounterKey, amount int64, expires time.Time) string {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	b := make([]byte, 0, 128)
	b = append(b, key.Subject...)
	b = append(append(b, '\x1f'), key.Meter...)
	b = strconv.AppendInt(append(b, '\x1f'), key.Start.Unix(), 10)
	b = append(b, '\x1f')
	if !key.End.IsZero() {
		b = strconv.AppendInt(b, key.End.Unix(), 10)
	}
	b = strconv.AppendInt(append(b, '\x1f'), amount, 10)
	b = strconv.AppendInt(append(b, '\x1f'), expires.UnixMilli(), 10)
	b = append(append(b, '\x1f'), hex.EncodeToString(rnd[:])...)
	return reservationPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ReservationRef is what a reservation id says.
type ReservationRef struct {
	ID        string
	Key       CounterKey
	Amount    int64
	ExpiresAt time.Time
}

// errUnknownReservation answers every id that does not decode: to a
// caller it is a reservation that does not exist.
var errUnknownReservation = fmt.Errorf("unknown reservation: %w", ErrNotFound)

// ParseReservationID decodes an id made by NewReservationID; anything else
// is ErrNotFound.
func ParseReservationID(id string) (ReservationRef, error) {
	rest, ok := strings.CutPrefix(id, reservationPrefix)
	if !ok || len(id) > 512 {
		return ReservationRef{}, errUnknownReservation
	}
	raw, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil {
		return ReservationRef{}, errUnknownReservation
	}
	f := strings.Split(string(raw), "\x1f")
	if len(f) != 7 || len(f[6]) != 24 {
		return ReservationRef{}, errUnknownReservation
	}
	if _, err := hex.DecodeString(f[6]); err != nil {
		return ReservationRef{}, errUnknownReservation
	}
	if _, err := ParseSubject(f[0]); err != nil {
		return ReservationRef{}, errUnknownReservation
	}
	if ValidMeter(f[1]) != nil {
		return ReservationRef{}, errUnknownReservation
	}
	start, err1 := strconv.ParseInt(f[2], 10, 64)
	amount, err2 := strconv.ParseInt(f[4], 10, 64)
	expires, err3 := strconv.ParseInt(f[5], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || amount < 1 || amount > MaxAmount {
		return ReservationRef{}, errUnknownReservation
	}
	ref := ReservationRef{ID: id, Amount: amount, ExpiresAt: time.UnixMilli(expires).UTC(),
		Key: CounterKey{Subject: f[0], Meter: f[1], Start: time.Unix(start, 0).UTC()}}
	if f[3] != "" {
		end, err := strconv.ParseInt(f[3], 10, 64)
		if err != nil {
			return ReservationRef{}, errUnknownReservation
		}
		ref.Key.End = time.Unix(end, 0).UTC()
	}
	return ref, nil
}
