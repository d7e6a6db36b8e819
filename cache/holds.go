package cache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/quota"
)

// The Counter's reservations (quota.Holds), on the scripts of scripts.go.
// They live in Redis only: while Redis is unreachable they answer
// ErrUnavailable, and a caller's retry is safe (a reserve with its
// idempotency key, a commit or a release by its id). A commit counts its
// usage through the pending stream, like a consume, so the flusher
// writes it to Postgres exactly once.

// holdRecordTTL is how long a reservation's record outlives its expiry:
// a commit that late is still recorded, a retry still answered.
const holdRecordTTL = 24 * time.Hour

// Reserve implements quota.Holds.
func (c *Counter) Reserve(ctx context.Context, op quota.ReserveOp) (quota.ReserveResult, error) {
	rk := c.layout.recordKey(op.Key.Subject, op.ID)
	ik := rk
	if op.IdempotencyKey != "" {
		ik = c.layout.idempotencyKey(op.Key.Subject, op.IdempotencyKey)
	}
	enforce := "0"
	if op.Enforce {
		enforce = "1"
	}
	keys := []string{c.layout.counterKey(op.Key), c.layout.holdsKey(op.Key), rk, ik}
	args := []any{op.Amount, enforce, op.Limit, op.At.UnixMilli(), op.ExpiresAt.UnixMilli(), op.ID,
		op.IdempotencyKey, op.RequestHash, op.ExpiresAt.Add(holdRecordTTL).UnixMilli()}
	var res quota.ReserveResult
	err := c.withCounter(ctx, op.Key, op.At, func() (bool, error) {
		reply, err := c.run(ctx, reserveScript, keys, args)
		if err != nil {
			return false, err
		}
		switch reply[0] {
		case "load":
			return true, nil
		case "dup":
			res, err = firstReserve(reply, op)
			return false, err
		}
		if len(reply) != 4 {
			return false, fmt.Errorf("reserve script answered %v", reply)
		}
		granted, _ := reply[0].(int64)
		used, ok1 := count(reply[1])
		reserved, ok2 := count(reply[2])
		if !ok1 || !ok2 {
			return false, fmt.Errorf("reserve script answered %v", reply)
		}
		res = quota.ReserveResult{Granted: granted == 1, Amount: op.Amount, Used: used, Reserved: reserved}
		if res.Granted {
			res.ID, res.ExpiresAt = op.ID, op.ExpiresAt
		}
		gone, _ := reply[3].([]any)
		for _, m := range gone {
			if _, id, ok := strings.Cut(fmt.Sprint(m), ":"); ok {
				res.Expired = append(res.Expired, id)
			}
		}
		return false, nil
	})
	return res, err
}

// firstReserve decodes the first answer to a reservation's idempotency
// key ("<hash>|<granted>|<amount>|<used>|<id>|<expiry ms>").
func firstReserve(reply []any, op quota.ReserveOp) (quota.ReserveResult, error) {
	stored := fmt.Sprint(reply[1])
	parts := strings.Split(stored, "|")
	if len(parts) < 1 || parts[0] != op.RequestHash {
		return quota.ReserveResult{}, fmt.Errorf("idempotency key %q was used for a different request: %w", op.IdempotencyKey, quota.ErrConflict)
	}
	if len(parts) != 6 || len(reply) != 3 {
		return quota.ReserveResult{}, fmt.Errorf("idempotency record %q is malformed", stored)
	}
	amount, err1 := strconv.ParseInt(parts[2], 10, 64)
	used, err2 := strconv.ParseInt(parts[3], 10, 64)
	expires, err3 := strconv.ParseInt(parts[5], 10, 64)
	reserved, ok := count(reply[2])
	if err1 != nil || err2 != nil || err3 != nil || !ok {
		return quota.ReserveResult{}, fmt.Errorf("idempotency record %q is malformed", stored)
	}
	res := quota.ReserveResult{Granted: parts[1] == "1", Duplicate: true, Amount: amount, Used: used, Reserved: reserved}
	if res.Granted {
		res.ID, res.ExpiresAt = parts[4], time.UnixMilli(expires).UTC()
	}
	return res, nil
}

// Commit implements quota.Holds.
func (c *Counter) Commit(ctx context.Context, op quota.CommitOp) (quota.CommitResult, error) {
	ref, err := quota.ParseReservationID(op.ID)
	if err != nil {
		return quota.CommitResult{}, err
	}
	expired := op.At.After(op.ExpiresAt)
	ev := appendEvent(make([]byte, 0, 256), &quota.Event{
		ID: op.EventID, Kind: quota.EventConsume, Subject: op.Key.Subject, Meter: op.Key.Meter,
		Start: op.Key.Start, End: op.Key.End, Amount: op.Amount, Usage: op.Usage, Reservation: op.ID, At: op.At,
	})
	recordUntil := op.ExpiresAt.Add(holdRecordTTL)
	keys := []string{c.layout.counterKey(op.Key), c.layout.holdsKey(op.Key), c.layout.recordKey(op.Key.Subject, op.ID), c.layout.stream(op.Key.Subject)}
	args := []any{op.Amount, holdMember(ref.Amount, op.ID), op.At.UnixMilli(), flag(expired), ev,
		flag(op.At.Before(recordUntil)), recordUntil.UnixMilli()}
	if err := c.admit(); err != nil {
		return quota.CommitResult{}, err
	}
	var res quota.CommitResult
	err = c.withCounter(ctx, op.Key, op.At, func() (bool, error) {
		reply, err := c.run(ctx, commitScript, keys, args)
		if err != nil {
			return false, err
		}
		switch reply[0] {
		case "load":
			return true, nil
		case "unknown":
			return false, errUnknownHold
		case "released":
			return false, fmt.Errorf("reservation was released, it cannot be committed: %w", quota.ErrConflict)
		case "dup":
			res, err = firstCommit(reply)
			return false, err
		case "ok":
			used, ok1 := count(reply[1])
			reserved, ok2 := count(reply[2])
			if !ok1 || !ok2 {
				return false, fmt.Errorf("commit script answered %v", reply)
			}
			res = quota.CommitResult{Expired: expired, Amount: op.Amount, Used: used, Reserved: reserved}
			return false, nil
		}
		return false, fmt.Errorf("commit script answered %v", reply)
	})
	return res, err
}

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

var errUnknownHold = fmt.Errorf("unknown reservation (never made, or settled more than a day after it expired): %w", quota.ErrNotFound)

// firstCommit decodes a committed reservation's record
// ("<amount>|<used>|<expired>").
func firstCommit(reply []any) (quota.CommitResult, error) {
	stored := fmt.Sprint(reply[1])
	parts := strings.Split(stored, "|")
	reserved, ok := count(reply[2])
	if len(parts) != 3 || !ok {
		return quota.CommitResult{}, fmt.Errorf("reservation record %q is malformed", stored)
	}
	amount, err1 := strconv.ParseInt(parts[0], 10, 64)
	used, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil {
		return quota.CommitResult{}, fmt.Errorf("reservation record %q is malformed", stored)
	}
	return quota.CommitResult{Duplicate: true, Expired: parts[2] == "1", Amount: amount, Used: used, Reserved: reserved}, nil
}

// Release implements quota.Holds.
func (c *Counter) Release(ctx context.Context, key quota.CounterKey, id string, at time.Time) (quota.ReleaseResult, error) {
	ref, err := quota.ParseReservationID(id)
	if err != nil {
		return quota.ReleaseResult{}, err
	}
	reply, err := c.run(ctx, releaseScript, []string{c.layout.counterKey(key), c.layout.holdsKey(key), c.layout.recordKey(key.Subject, id)},
		[]any{holdMember(ref.Amount, id), at.UnixMilli()})
	if err != nil {
		return quota.ReleaseResult{}, err
	}
	switch reply[0] {
	case "unknown":
		return quota.ReleaseResult{}, errUnknownHold
	case "committed":
		return quota.ReleaseResult{}, fmt.Errorf("reservation was committed, it cannot be released: %w", quota.ErrConflict)
	}
	before, ok1 := reply[0].(int64)
	reserved, ok2 := count(reply[2])
	if len(reply) != 3 || !ok1 || !ok2 {
		return quota.ReleaseResult{}, fmt.Errorf("release script answered %v", reply)
	}
	res := quota.ReleaseResult{Duplicate: before == 1, Amount: ref.Amount, Reserved: reserved}
	if s, _ := reply[1].(string); s != "" {
		res.Used, err = strconv.ParseInt(s, 10, 64)
		return res, err
	}
	// The counter is not in Redis (dropped, or never loaded): read it.
	t, err := c.Used(ctx, quota.UsageRead{Key: key, At: at})
	res.Used = t.Used
	return res, err
}

// run runs a reservation script while Redis is up. Redis unreachable, or
// a reply lost on the way back, is ErrUnavailable: the caller's retry is
// safe (see the top of this file), so a reply that never came is not
// taken for "not applied" here, only handed back to be retried.
func (c *Counter) run(ctx context.Context, script *redis.Script, keys []string, args []any) ([]any, error) {
	if !c.health.Up() {
		return nil, fmt.Errorf("reservations: redis is unreachable: %w", quota.ErrUnavailable)
	}
	reply, err := c.batch.script(ctx, script, keys, args)
	if err != nil {
		if c.health.Failed(err) {
			return nil, fmt.Errorf("reservations: redis is unreachable, the outcome is unknown, retry: %w", quota.ErrUnavailable)
		}
		return nil, translate(err)
	}
	if len(reply) == 0 {
		return nil, fmt.Errorf("reservation script answered nothing")
	}
	return reply, nil
}
