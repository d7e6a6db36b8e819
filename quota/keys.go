package quota

import "time"

// APIKey describes an API key. The key itself is shown once, when it is
// minted; stores keep only its hash.
type APIKey struct {
	ID        int64      `json:"id"`
	Scope     string     `json:"scope"` // "service" or "admin"
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"` // nil: never
}
