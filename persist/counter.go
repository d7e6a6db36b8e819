package persist

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quotad/quotad/quota"
)

// The synchronous counter: every consume is one Postgres transaction. It is
// the fallback when Redis is down and the QUOTAD_TIERS=postgres baseline.

const (
	selectUsed = `SELECT used FROM counters WHERE subject = $1 AND meter = $2 AND period_start = $3`

	// consumeSQL adds $5 to a counter and writes the ledger row in one
	// statement. In enforce mode ($6) the ON CONFLICT ... WHERE re-checks the
	// limit ($7) on the locked, latest row version, so concurrent consumes
	// can never push used past the limit. No row back means rejected.
	consumeSQL = `WITH c AS (
		INSERT INTO counters AS c (subject, meter, period_start, period_end, used, l2_stale)
		VALUES ($1, $2, $3, $4, $5, true)
		ON CONFLICT (subject, meter, period_start) DO UPDATE
			SET used = c.used + EXCLUDED.used, l2_stale = true, updated_at = now()
			WHERE NOT $6 OR c.used <= $7 - EXCLUDED.used
		RETURNING used
	), l AS (
		INSERT INTO usage_ledger (event_id, kind, subject, meter, period_start, amount, mode,
			model, input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, idempotency_key, created_at)
		SELECT $8, 'consume', $1, $2, $3, $5, $9, $10, $11, $12, $13, $14, $15, $16 FROM c
	)
	SELECT used FROM c`

	// claimIdempotencySQL takes an idempotency key for a new request, or
	// retakes one older than 24 hours. No row back means the key is held by
	// an earlier request; a concurrent holder makes this wait until it
	// commits, so the SELECT that follows sees its result.
	// The key records the event that took it: a flush meeting the key
	// with another event counts that one as a duplicate (see
	// Flusher.insertKeysDedup).
	claimIdempotencySQL = `INSERT INTO idempotency AS i (subject, key, request_hash, created_at, l2_stale, event_id) VALUES ($1, $2, $3, $4, true, $5)
		ON CONFLICT (subject, key) DO UPDATE
			SET request_hash = EXCLUDED.request_hash, created_at = EXCLUDED.created_at,
				applied = NULL, amount = NULL, used = NULL, l2_stale = true, event_id = EXCLUDED.event_id
			WHERE i.created_at < EXCLUDED.created_at - interval '24 hours'
		RETURNING true`
	selectIdempotencySQL = `SELECT request_hash, applied, amount, used FROM idempotency WHERE subject = $1 AND key = $2`
	storeIdempotencySQL  = `UPDATE idempotency SET applied = $3, amount = $4, used = $5 WHERE subject = $1 AND key = $2`

	// resetSQL: a reset taken here has no place in the pending stream; it
	// takes the place its time gives it ($7, unix ms, after every entry of
	// that millisecond), so that events Redis counted before it and a
	// flush writes later are not counted after it (see addCountersSQL).
	resetSQL = `WITH c AS (
		INSERT INTO counters (subject, meter, period_start, period_end, used, l2_stale, reset_ms, reset_seq)
		VALUES ($1, $2, $3, $6, 0, true, $7, 9223372036854775807)
		ON CONFLICT (subject, meter, period_start) DO UPDATE SET used = 0, l2_stale = true, updated_at = now(),
			reset_ms = CASE WHEN (counters.reset_ms, counters.reset_seq) > (EXCLUDED.reset_ms, EXCLUDED.reset_seq) THEN counters.reset_ms ELSE EXCLUDED.reset_ms END,
			reset_seq = CASE WHEN (counters.reset_ms, counters.reset_seq) > (EXCLUDED.reset_ms, EXCLUDED.reset_seq) THEN counters.reset_seq ELSE EXCLUDED.reset_seq END
		RETURNING 1
	)
	INSERT INTO usage_ledger (event_id, kind, subject, meter, period_start, amount, created_at)
	VALUES ($4, 'reset', $1, $2, $3, 0, $5)`
)

// Used implements quota.Counter.
// Postgres keeps no reservations (they live in Redis), so Reserved is 0.
func (s *Store) Used(ctx context.Context, r quota.UsageRead) (quota.Tally, error) {
	used, err := usedIn(ctx, s.pool, r.Key)
	return quota.Tally{Used: used}, err
}

// Consume implements quota.Counter in one transaction.
//
// An op whose event id the ledger already holds was counted before: Redis
// applied it, its reply was lost, the caller retried here, and the flusher
// wrote the Redis copy first. The statement that found the duplicate
// changed nothing, so the op answers as applied with the current usage.
//
// A deadlock with a flush holding the same event (it inserted the ledger
// row first and waits for the counter row this transaction locked) or a
// serialization failure aborts the transaction whole: it is tried again,
// a few times, and then answers that the store is unavailable.
func (s *Store) Consume(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	defer s.marks.mark(op.Key.Subject, op.Key.Meter)
	res, err := s.consumeOnce(ctx, op)
	for try := 1; isRetryable(err) && try < 4; try++ {
		res, err = s.consumeOnce(ctx, op)
	}
	if isRetryable(err) {
		return res, fmt.Errorf("consume kept deadlocking with other writers: %w: %v", quota.ErrUnavailable, err)
	}
	if isDuplicateEvent(err) {
		used, err := usedIn(ctx, s.pool, op.Key)
		return quota.ConsumeResult{Applied: true, Amount: op.Amount, Used: used}, err
	}
	return res, err
}

// isDuplicateEvent reports whether err is the ledger refusing an event id
// it already has. The ledger is partitioned (ledger.go): the error names
// the partition's key, usage_ledger_<month>_pkey or usage_ledger_pkey.
func isDuplicateEvent(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && strings.HasPrefix(pg.TableName, "usage_ledger") &&
		strings.HasPrefix(pg.ConstraintName, "usage_ledger") && strings.HasSuffix(pg.ConstraintName, "_pkey")
}

// isRetryable reports a transaction Postgres aborted whole to break a
// deadlock or a serialization conflict: running it again is safe.
func isRetryable(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == "40P01" || pg.Code == "40001")
}

// isDuplicateKey reports a flush refused because Postgres has one of its
// idempotency keys already.
func isDuplicateKey(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && pg.Code == "23505" && pg.ConstraintName == "idempotency_pkey"
}

func (s *Store) consumeOnce(ctx context.Context, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	if op.IdempotencyKey == "" {
		return consume(ctx, s.pool, op)
	}
	var res quota.ConsumeResult
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var claimed bool
		err := tx.QueryRow(ctx, claimIdempotencySQL, op.Key.Subject, op.IdempotencyKey, op.RequestHash, op.At, op.EventID).Scan(&claimed)
		if errors.Is(err, pgx.ErrNoRows) {
			res, err = firstResult(ctx, tx, op)
			return err
		}
		if err != nil {
			return fmt.Errorf("claim idempotency key: %w", err)
		}
		if res, err = consume(ctx, tx, op); err != nil {
			return err
		}
		if !res.Applied {
			return errRefused // the claim is rolled back: a refused op keeps no key
		}
		_, err = tx.Exec(ctx, storeIdempotencySQL, op.Key.Subject, op.IdempotencyKey, res.Applied, res.Amount, res.Used)
		return err
	})
	if errors.Is(err, errRefused) {
		return res, nil
	}
	return res, translate(err)
}

// errRefused rolls back the idempotency key an enforce op claimed when the
// limit refused it: only an op that applied is replayed (as with a
// payment: a declined one may be tried again with the same key), and the
// refusal changed nothing else.
var errRefused = errors.New("refused by the limit")

// querier is what pgxpool.Pool and pgx.Tx have in common.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func consume(ctx context.Context, q querier, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	res := quota.ConsumeResult{Amount: op.Amount}
	if op.Enforce && op.Amount > op.Limit {
		used, err := usedIn(ctx, q, op.Key)
		res.Used = used
		return res, err
	}
	mode := quota.ModeRecord
	if op.Enforce {
		mode = quota.ModeEnforce
	}
	var model *string
	var in, out, cw, cr *int64
	if u := op.Usage; u != nil {
		model, in, out, cw, cr = &u.Model, &u.InputTokens, &u.OutputTokens, &u.CacheWriteTokens, &u.CacheReadTokens
	}
	var idem *string
	if op.IdempotencyKey != "" {
		idem = &op.IdempotencyKey
	}
	err := q.QueryRow(ctx, consumeSQL, op.Key.Subject, op.Key.Meter, op.Key.Start, nullTime(op.Key.End),
		op.Amount, op.Enforce, op.Limit, op.EventID, mode, model, in, out, cw, cr, idem, op.At).Scan(&res.Used)
	if errors.Is(err, pgx.ErrNoRows) { // enforce rejected it
		used, err := usedIn(ctx, q, op.Key)
		res.Used = used
		return res, err
	}
	if err != nil {
		return res, translate(err)
	}
	res.Applied = true
	return res, nil
}

// Stored reads a counter, and whether it has a row: a counter without one
// never had an event flushed.
func (s *Store) Stored(ctx context.Context, key quota.CounterKey) (int64, bool, error) {
	return storedIn(ctx, s.pool, key)
}

func storedIn(ctx context.Context, q querier, key quota.CounterKey) (int64, bool, error) {
	var used int64
	err := q.QueryRow(ctx, selectUsed, key.Subject, key.Meter, key.Start).Scan(&used)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return used, err == nil, translate(err)
}

func usedIn(ctx context.Context, q querier, key quota.CounterKey) (int64, error) {
	used, _, err := storedIn(ctx, q, key)
	return used, err
}

// firstResult answers a repeated idempotency key with what the first
// request got, or ErrConflict when the repeat asks for something else.
func firstResult(ctx context.Context, tx pgx.Tx, op quota.ConsumeOp) (quota.ConsumeResult, error) {
	var hash string
	var applied *bool
	var amount, used *int64
	if err := tx.QueryRow(ctx, selectIdempotencySQL, op.Key.Subject, op.IdempotencyKey).Scan(&hash, &applied, &amount, &used); err != nil {
		return quota.ConsumeResult{}, fmt.Errorf("read idempotency key: %w", err)
	}
	if hash != op.RequestHash {
		return quota.ConsumeResult{}, fmt.Errorf("idempotency key %q was used for a different request: %w", op.IdempotencyKey, quota.ErrConflict)
	}
	if applied == nil { // cannot happen: the claim waited for the first transaction
		return quota.ConsumeResult{}, fmt.Errorf("idempotency key %q has no result", op.IdempotencyKey)
	}
	return quota.ConsumeResult{Applied: *applied, Duplicate: true, Amount: *amount, Used: *used}, nil
}

// Reset implements quota.Counter: the counter goes to 0 and the ledger gets
// a reset row.
func (s *Store) Reset(ctx context.Context, key quota.CounterKey, at time.Time) error {
	defer s.marks.mark(key.Subject, key.Meter)
	_, err := s.pool.Exec(ctx, resetSQL, key.Subject, key.Meter, key.Start, quota.NewEventID(at), at, nullTime(key.End), at.UnixMilli())
	return translate(err)
}

// takeStaleSQL clears the marks of (up to $1) counters changed here
// directly and answers them; its transaction holds their rows until the
// Redis copies are dropped (TakeStaleCounters). It locks them in key
// order, as a flush does (see addCountersSQL), so the two cannot deadlock;
// and it skips rows a flush or a direct write holds: waiting for a flush
// of seconds failed every sweep under load, and a skipped row keeps its
// mark for the next take.
const takeStaleSQL = `UPDATE counters SET l2_stale = false
	WHERE (subject, meter, period_start) IN (SELECT subject, meter, period_start FROM counters WHERE l2_stale
		ORDER BY subject, meter, period_start LIMIT $1 FOR UPDATE SKIP LOCKED)
	RETURNING subject, meter, period_start, period_end`

// TakeStaleCounters hands drop up to limit of the counters changed here
// directly since Redis's copy was last dropped (see the l2_stale column),
// to drop those copies, and answers how many; it clears their marks in
// the same transaction: only if drop
// succeeds, and a direct write to one of these counters meanwhile
// waits for the commit and marks it again (clearing after the drop, in a
// second statement, could clear the mark of such a write, and Redis
// would never drop the copy that misses it).
func (s *Store) TakeStaleCounters(ctx context.Context, limit int, drop func([]quota.CounterKey) error) (int, error) {
	var dropErr error // drop's own, not translated as a Postgres error
	var taken int
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, takeStaleSQL, limit)
		if err != nil {
			return err
		}
		keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.CounterKey, error) {
			var k quota.CounterKey
			var end *time.Time
			err := r.Scan(&k.Subject, &k.Meter, &k.Start, &end)
			k.Start = k.Start.UTC()
			if end != nil {
				k.End = end.UTC()
			}
			return k, err
		})
		if err != nil || len(keys) == 0 {
			return err
		}
		taken = len(keys)
		dropErr = drop(keys)
		return dropErr
	})
	if dropErr != nil {
		return 0, dropErr
	}
	if err != nil {
		return 0, translate(err)
	}
	return taken, nil
}

const (
	selectStaleIdempotencySQL = `SELECT subject, key, request_hash, applied, amount, used, created_at FROM idempotency
		WHERE l2_stale AND applied IS NOT NULL AND created_at > now() - interval '24 hours' LIMIT 100000`
	clearStaleIdempotencySQL = `UPDATE idempotency SET l2_stale = false
		FROM unnest($1::text[], $2::text[]) AS k(subject, key)
		WHERE idempotency.subject = k.subject AND idempotency.key = k.key`
)

// StaleIdempotency lists the idempotency keys taken here directly (while
// Redis was unreachable) in the last 24 hours, which Redis does not know.
func (s *Store) StaleIdempotency(ctx context.Context) ([]quota.IdempotencyRecord, error) {
	rows, err := s.pool.Query(ctx, selectStaleIdempotencySQL)
	if err != nil {
		return nil, translate(err)
	}
	recs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.IdempotencyRecord, error) {
		var rec quota.IdempotencyRecord
		err := r.Scan(&rec.Subject, &rec.Key, &rec.RequestHash, &rec.Applied, &rec.Amount, &rec.Used, &rec.At)
		return rec, err
	})
	return recs, translate(err)
}

// ClearStaleIdempotency marks keys as known to Redis.
func (s *Store) ClearStaleIdempotency(ctx context.Context, recs []quota.IdempotencyRecord) error {
	subjects, keys := make([]string, len(recs)), make([]string, len(recs))
	for i, r := range recs {
		subjects[i], keys[i] = r.Subject, r.Key
	}
	_, err := s.pool.Exec(ctx, clearStaleIdempotencySQL, subjects, keys)
	return translate(err)
}

// IdempotencyWindow is how long an idempotency key answers; Postgres keeps
// a key an hour longer (clocks differ) and then PruneIdempotency deletes it.
const IdempotencyWindow = 24 * time.Hour

// PruneIdempotency deletes idempotency keys taken before before, at most
// batch rows per call (short transactions on a large table), and answers
// how many it deleted.
func (s *Store) PruneIdempotency(ctx context.Context, before time.Time, batch int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency WHERE ctid IN (
		SELECT ctid FROM idempotency WHERE created_at < $1 LIMIT $2)`, before, batch)
	return tag.RowsAffected(), translate(err)
}
