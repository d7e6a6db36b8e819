package persist

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/quota"
)

// API keys are stored as their SHA-256: a leaked table does not leak keys.
// Keys are 256-bit random strings, so a plain hash is enough (no salt or
// stretching needed, unlike passwords).

const (
	insertKey = `INSERT INTO api_keys (hash, scope, name, expires_at) VALUES ($1, $2, $3, $4)
		RETURNING id, scope, name, created_at, expires_at`
	// selectKey finds a key that has not expired: an expired one is as
	// unknown as one never minted.
	selectKey  = `SELECT id, scope, name, created_at, expires_at FROM api_keys WHERE hash = $1 AND (expires_at IS NULL OR expires_at > now())`
	selectKeys = `SELECT id, scope, name, created_at, expires_at FROM api_keys ORDER BY id`
	deleteKey  = `DELETE FROM api_keys WHERE id = $1 RETURNING id, scope, name, created_at, expires_at`
)

// CreateKey mints a new API key with scope ("service" or "admin"), name
// and an optional expiry, and returns it with its description; only its
// hash is stored.
func (s *Store) CreateKey(ctx context.Context, scope, name string, expiresAt *time.Time) (quota.APIKey, string, error) {
	key := "qk_" + rand.Text() + rand.Text()
	sum := sha256.Sum256([]byte(key))
	k, err := scanKey(s.pool.QueryRow(ctx, insertKey, sum[:], scope, name, expiresAt))
	if err != nil {
		return quota.APIKey{}, "", fmt.Errorf("insert api key: %w", err)
	}
	return k, key, nil
}

// LookupKey returns the unexpired key whose SHA-256 is sum, or
// quota.ErrNotFound.
func (s *Store) LookupKey(ctx context.Context, sum [32]byte) (quota.APIKey, error) {
	return scanKey(s.pool.QueryRow(ctx, selectKey, sum[:]))
}

// Keys lists every key (expired ones too, until they are revoked), by id.
func (s *Store) Keys(ctx context.Context) ([]quota.APIKey, error) {
	rows, err := s.pool.Query(ctx, selectKeys)
	if err != nil {
		return nil, translate(err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (quota.APIKey, error) { return scanKey(r) })
	return keys, translate(err)
}

// RevokeKey deletes the key id and returns what it was, or
// quota.ErrNotFound.
func (s *Store) RevokeKey(ctx context.Context, id int64) (quota.APIKey, error) {
	return scanKey(s.pool.QueryRow(ctx, deleteKey, id))
}

func scanKey(r pgx.Row) (quota.APIKey, error) {
	var k quota.APIKey
	err := r.Scan(&k.ID, &k.Scope, &k.Name, &k.CreatedAt, &k.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return quota.APIKey{}, quota.ErrNotFound
	}
	k.CreatedAt = k.CreatedAt.UTC()
	if k.ExpiresAt != nil {
		t := k.ExpiresAt.UTC()
		k.ExpiresAt = &t
	}
	return k, translate(err)
}
