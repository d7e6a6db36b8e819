package persist

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/quotad/quotad/quota"
)

// API keys are stored as their SHA-256: a leaked table does not leak keys.
// Keys are 256-bit random strings, so a plain hash is enough (no salt or
// stretching needed, unlike passwords).

// CreateKey mints a new API key with scope ("service" or "admin") and
// returns it; only its hash is stored.
func (s *Store) CreateKey(ctx context.Context, scope, name string) (string, error) {
	key := "qk_" + rand.Text() + rand.Text()
	sum := sha256.Sum256([]byte(key))
	if _, err := s.pool.Exec(ctx, `INSERT INTO api_keys (hash, scope, name) VALUES ($1, $2, $3)`, sum[:], scope, name); err != nil {
		return "", fmt.Errorf("insert api key: %w", err)
	}
	return key, nil
}

// KeyScope returns the scope of the key whose SHA-256 is sum, or
// quota.ErrNotFound.
func (s *Store) KeyScope(ctx context.Context, sum [32]byte) (string, error) {
	var scope string
	err := s.pool.QueryRow(ctx, `SELECT scope FROM api_keys WHERE hash = $1`, sum[:]).Scan(&scope)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", quota.ErrNotFound
	}
	return scope, translate(err)
}
