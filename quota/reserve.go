package quota

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// errNoHolds answers reservations on tiers without a Holds store.
var errNoHolds = fmt.Errorf("reservations need Redis, which this quotad does not use or cannot reach: %w", ErrUnavailable)

// Reserve holds an amount against a subject's limit (see Holds for the
// rules). A refused reservation is not an error: Granted is false.
func (s *Service) Reserve(ctx context.Context, req ReserveRequest) (ReserveResponse, error) {
	kind, meter, err := parseTarget(req.Subject, req.Meter)
	if err != nil {
		return ReserveResponse{}, err
	}
	if err := validIdempotencyKey(req.IdempotencyKey); err != nil {
		return ReserveResponse{}, err
	}
	ttl := DefaultReservationTTL
	if req.TTLSeconds != 0 {
		if req.TTLSeconds < 1 || req.TTLSeconds > int64(MaxReservationTTL/time.Second) {
			return ReserveResponse{}, Invalid("ttl_seconds", "must be between 1 and %d", int64(MaxReservationTTL/time.Second))
		}
		ttl = time.Duration(req.TTLSeconds) * time.Second
	}
	amount, err := s.price(req.Amount, req.Usage)
	if err != nil {
		return ReserveResponse{}, err
	}
	if s.holds == nil {
		return ReserveResponse{}, errNoHolds
	}
	now := s.now()
	sub, _, lim, err := s.resolve(ctx, req.Subject, kind, meter)
	if err != nil {
		return ReserveResponse{}, err
	}
	key := counterKey(&sub, meter, lim.Period, now)
	expires := now.Add(ttl).Truncate(time.Millisecond)
	op := ReserveOp{
		Key: key, ID: NewReservationID(key, amount, expires), Amount: amount,
		Enforce: !lim.Overage, Limit: lim.Limit, ExpiresAt: expires,
		IdempotencyKey: req.IdempotencyKey, At: now,
	}
	if req.IdempotencyKey != "" {
		op.RequestHash = "r" + requestHash(meter, req.Amount, true, req.Usage) + fmt.Sprintf("t%d", int64(ttl/time.Second))
	}
	res, err := s.holds.Reserve(ctx, op)
	if err != nil {
		return ReserveResponse{}, fmt.Errorf("reserve: %w", err)
	}
	s.notifyExpired(res.Expired, now)
	t := Tally{res.Used, res.Reserved}
	out := ReserveResponse{
		Granted: res.Granted, Duplicate: res.Duplicate, Subject: req.Subject, Meter: meter, Amount: res.Amount,
		Used: res.Used, Reserved: res.Reserved, Limit: lim.Limit, Remaining: remaining(lim.Limit, t), ResetsAt: Time{key.End},
	}
	if res.Granted {
		out.ID, out.ExpiresAt = res.ID, &Time{res.ExpiresAt}
		if !res.Duplicate {
			s.notifyHold(key, "reserved", res.ID, res.Amount, t, lim.Limit, now)
		}
	}
	return out, nil
}

// Commit records the actual cost of a reservation's work and frees its
// hold (see Holds). Errors: ErrNotFound for an unknown id, ErrConflict
// for a released reservation, ErrInvalid for a bad amount or usage.
func (s *Service) Commit(ctx context.Context, id string, req CommitRequest) (CommitResponse, error) {
	ref, err := ParseReservationID(id)
	if err != nil {
		return CommitResponse{}, err
	}
	amount := ref.Amount
	if req.Amount != 0 || req.Usage != nil {
		if amount, err = s.price(req.Amount, req.Usage); err != nil {
			return CommitResponse{}, err
		}
	}
	if s.holds == nil {
		return CommitResponse{}, errNoHolds
	}
	now := s.now()
	res, err := s.holds.Commit(ctx, CommitOp{Key: ref.Key, ID: id, Amount: amount, Usage: req.Usage,
		EventID: NewEventID(now), At: now, ExpiresAt: ref.ExpiresAt})
	if err != nil {
		return CommitResponse{}, fmt.Errorf("commit: %w", err)
	}
	limit, err := s.limitOf(ctx, ref.Key)
	if err != nil {
		return CommitResponse{}, err
	}
	out := CommitResponse{ConsumeResponse: consumeAnswer(ConsumeResult{Applied: true, Duplicate: res.Duplicate,
		Amount: res.Amount, Used: res.Used, Reserved: res.Reserved}, limit, ref.Key), ID: id, Reservation: ReservationCommitted}
	if res.Expired {
		out.Reservation = ReservationExpired
	}
	if !res.Duplicate {
		t := Tally{res.Used, res.Reserved}
		s.notifyHold(ref.Key, out.Reservation, id, ref.Amount, t, limit, now)
		s.notifyUsage(ref.Key, "committed", id, res.Amount, t, limit, now)
	}
	return out, nil
}

// Release frees a reservation's hold without consuming. Errors:
// ErrNotFound for an unknown id, ErrConflict for a committed reservation.
func (s *Service) Release(ctx context.Context, id string) (ReleaseResponse, error) {
	ref, err := ParseReservationID(id)
	if err != nil {
		return ReleaseResponse{}, err
	}
	if s.holds == nil {
		return ReleaseResponse{}, errNoHolds
	}
	now := s.now()
	res, err := s.holds.Release(ctx, ref.Key, id, now)
	if err != nil {
		return ReleaseResponse{}, fmt.Errorf("release: %w", err)
	}
	limit, err := s.limitOf(ctx, ref.Key)
	if err != nil {
		return ReleaseResponse{}, err
	}
	t := Tally{res.Used, res.Reserved}
	if !res.Duplicate {
		s.notifyHold(ref.Key, ReservationReleased, id, res.Amount, t, limit, now)
	}
	return ReleaseResponse{ID: id, Reservation: ReservationReleased, Duplicate: res.Duplicate, Subject: ref.Key.Subject,
		Meter: ref.Key.Meter, Amount: res.Amount, Used: res.Used, Reserved: res.Reserved, Limit: limit,
		Remaining: remaining(limit, t), ResetsAt: Time{ref.Key.End}}, nil
}

// limitOf answers the limit that applies now to a reservation's counter:
// 0 if the subject's plan no longer has the meter (the commit still
// counts; the answer just has no limit to compare with).
func (s *Service) limitOf(ctx context.Context, key CounterKey) (int64, error) {
	kind, err := ParseSubject(key.Subject)
	if err != nil {
		return 0, err
	}
	_, _, lim, err := s.resolve(ctx, key.Subject, kind, key.Meter)
	if errors.Is(err, ErrInvalid) {
		return 0, nil
	}
	return lim.Limit, err
}

// notifyExpired tells subscribers of reservations a store found expired
// and dropped (their holds had stopped counting at expiry already).
func (s *Service) notifyExpired(ids []string, now time.Time) {
	if s.notifier == nil {
		return
	}
	for _, id := range ids {
		if ref, err := ParseReservationID(id); err == nil {
			s.notify(Change{Type: ChangeReservation, Action: ReservationExpired, Subject: ref.Key.Subject, Meter: ref.Key.Meter,
				Amount: ref.Amount, Reservation: id, At: Time{now}})
		}
	}
}
