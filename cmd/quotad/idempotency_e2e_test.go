package main_test

import (
	"testing"

	"github.com/quotad/quotad/internal/testenv"
)

// TestRefusedAttemptKeepsNoKey: an enforce consume the limit refused does
// not keep its idempotency key, on Redis and on the Postgres path alike:
// the same key is tried again after a reset (and applies once), and may
// carry another amount; only an applied consume is replayed. A refused
// reservation keeps none either.
func TestRefusedAttemptKeepsNoKey(t *testing.T) {
	for _, tiers := range []string{"full", "postgres"} {
		t.Run(tiers, func(t *testing.T) {
			q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t), "QUOTAD_TIERS="+tiers)
			if status, _ := q.call(t, "PUT", "/v1/plans/tiny", `{"limits":{"credits":{"limit":10,"period":"day"}}}`); status != 200 {
				t.Fatal(status)
			}
			if status, _ := q.call(t, "PUT", "/v1/subjects/user:idem", `{"plan":"tiny"}`); status != 200 {
				t.Fatal(status)
			}
			consume := func(body string, applied, duplicate bool, used float64) {
				t.Helper()
				status, res := q.call(t, "POST", "/v1/consume", body)
				if status != 200 || res["applied"] != applied || res["duplicate"] != duplicate || res["used"] != used {
					t.Fatalf("%s: %d %v; want applied=%v duplicate=%v used=%v", body, status, res, applied, duplicate, used)
				}
			}
			consume(`{"subject":"user:idem","amount":8,"mode":"enforce","idempotency_key":"k1"}`, true, false, 8)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, false, false, 8)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, false, false, 8) // tried again, not replayed
			if status, _ := q.call(t, "POST", "/v1/subjects/user:idem/reset", ""); status != 200 {
				t.Fatal(status)
			}
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, true, false, 5)
			consume(`{"subject":"user:idem","amount":5,"mode":"enforce","idempotency_key":"k2"}`, true, true, 5) // now replayed
			consume(`{"subject":"user:idem","amount":50,"mode":"enforce","idempotency_key":"k3"}`, false, false, 5)
			consume(`{"subject":"user:idem","amount":1,"mode":"enforce","idempotency_key":"k3"}`, true, false, 6) // another amount: no 409
			consume(`{"subject":"user:idem","amount":8,"mode":"enforce","idempotency_key":"k1"}`, true, true, 8)  // k1's first answer

			if tiers == "full" {
				reserve := func(amount string) (int, map[string]any) {
					return q.call(t, "POST", "/v1/reservations", `{"subject":"user:idem","amount":`+amount+`,"idempotency_key":"r1"}`)
				}
				if status, res := reserve("9"); status != 200 || res["granted"] != false {
					t.Fatalf("reservation over the limit: %d %v", status, res)
				}
				if status, res := reserve("2"); status != 201 || res["granted"] != true || res["duplicate"] != false {
					t.Fatalf("the same key, another amount that fits: %d %v", status, res)
				}
			}
		})
	}
}
