package main_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

// TestKeysAreManaged: keys are listed without their secrets, revoked on
// every instance before the revoke answers (they were cached there), and
// stop working at their expiry; the CLI does the same. Plans no subject
// has and prices can be deleted, on every instance at once.
func TestKeysAreManaged(t *testing.T) {
	pg, rd := testenv.PostgresURL(t), testenv.RedisURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
	checkWith := func(q *quotad, key string) int {
		t.Helper()
		status, _, _ := q.do(t, "POST", "/v1/check", key, "application/json", strings.NewReader(`{"subject":"user:keys"}`))
		return status
	}

	status, minted := a.call(t, "POST", "/v1/keys", `{"scope":"service","name":"web"}`)
	if status != 201 || minted["key"] == "" || minted["id"] == nil || minted["created_at"] == nil || minted["expires_at"] != nil {
		t.Fatalf("mint: %d %v", status, minted)
	}
	key, id := minted["key"].(string), int64(minted["id"].(float64))
	for _, q := range []*quotad{a, b} {
		if s := checkWith(q, key); s != 200 {
			t.Fatalf("new key: %d", s)
		}
	}

	t.Run("list", func(t *testing.T) {
		status, list := b.call(t, "GET", "/v1/keys", "")
		keys, _ := list["keys"].([]any)
		if status != 200 || len(keys) != 1 {
			t.Fatalf("list: %d %v", status, list)
		}
		got := keys[0].(map[string]any)
		if got["id"] != float64(id) || got["scope"] != "service" || got["name"] != "web" || got["created_at"] == nil {
			t.Fatalf("listed %v", got)
		}
		if raw, _ := json.Marshal(list); strings.Contains(string(raw), key) || got["key"] != nil || got["hash"] != nil {
			t.Fatalf("the listing shows a secret: %s", raw)
		}
	})

	t.Run("revoke on every instance", func(t *testing.T) {
		if status, k := a.call(t, "DELETE", fmt.Sprintf("/v1/keys/%d", id), ""); status != 200 || k["name"] != "web" {
			t.Fatalf("revoke: %d %v", status, k)
		}
		for _, q := range []*quotad{a, b} {
			if s := checkWith(q, key); s != 401 {
				t.Errorf("revoked key on %s: %d, want 401", q.addr, s)
			}
		}
		if status, _ := b.call(t, "DELETE", fmt.Sprintf("/v1/keys/%d", id), ""); status != 404 {
			t.Errorf("revoke again: %d, want 404", status)
		}
		if status, p := b.call(t, "DELETE", "/v1/keys/web", ""); status != 400 || p["field"] != "id" {
			t.Errorf("revoke by a non-id: %d %v, want 400 on id", status, p)
		}
	})

	t.Run("expiry", func(t *testing.T) {
		if status, p := a.call(t, "POST", "/v1/keys", `{"scope":"service","expires_at":"2020-01-01T00:00:00Z"}`); status != 400 || p["field"] != "expires_at" {
			t.Fatalf("expiry in the past: %d %v", status, p)
		}
		at := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339Nano)
		status, minted := a.call(t, "POST", "/v1/keys", `{"scope":"service","name":"short","expires_at":"`+at+`"}`)
		if status != 201 || minted["expires_at"] == nil {
			t.Fatalf("mint with expiry: %d %v", status, minted)
		}
		short := minted["key"].(string)
		if s := checkWith(b, short); s != 200 {
			t.Fatalf("before its expiry: %d", s)
		}
		time.Sleep(time.Until(time.Now().Add(2500 * time.Millisecond)))
		if s := checkWith(b, short); s != 401 {
			t.Errorf("after its expiry: %d, want 401", s)
		}
	})

	t.Run("CLI", func(t *testing.T) {
		cli := func(args ...string) string {
			t.Helper()
			cmd := exec.Command(quotadBin, append([]string{"keys"}, args...)...)
			cmd.Env = append(os.Environ(), "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("quotad keys %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		key := strings.TrimSpace(cli("create", "--scope", "service", "--name", "cli", "--expires-in", "1h"))
		if s := checkWith(a, key); s != 200 {
			t.Fatalf("CLI key: %d", s)
		}
		var cliID string
		for _, line := range strings.Split(cli("list"), "\n") {
			if f := strings.Fields(line); len(f) == 5 && f[2] == `"cli"` && f[4] != "never" {
				cliID = f[0]
			}
		}
		if cliID == "" {
			t.Fatalf("keys list does not show the key with its expiry")
		}
		if out := cli("revoke", cliID); !strings.Contains(out, "revoked") || strings.Contains(out, "warning") {
			t.Fatalf("keys revoke: %s", out)
		}
		if s := checkWith(a, key); s != 401 {
			t.Errorf("key revoked by the CLI: %d, want 401", s)
		}
	})

	t.Run("delete plans and prices", func(t *testing.T) {
		if status, _ := a.call(t, "PUT", "/v1/plans/team", `{"limits":{"credits":{"limit":50,"period":"day"}}}`); status != 200 {
			t.Fatal(status)
		}
		if status, _ := a.call(t, "PUT", "/v1/subjects/user:member", `{"plan":"team"}`); status != 200 {
			t.Fatal(status)
		}
		if _, p := b.call(t, "GET", "/v1/plans/team", ""); p["name"] != "team" { // cached on b
			t.Fatalf("plan on b: %v", p)
		}
		for _, name := range []string{"team", "free", "anonymous"} {
			if status, p := a.call(t, "DELETE", "/v1/plans/"+name, ""); status != 409 {
				t.Errorf("delete plan %s: %d %v, want 409", name, status, p)
			}
		}
		if status, _ := a.call(t, "PUT", "/v1/subjects/user:member", `{"plan":"pro"}`); status != 200 {
			t.Fatal(status)
		}
		if status, p := a.call(t, "DELETE", "/v1/plans/team", ""); status != 200 || p["name"] != "team" {
			t.Fatalf("delete an unused plan: %d %v", status, p)
		}
		if status, _ := b.call(t, "GET", "/v1/plans/team", ""); status != 404 {
			t.Errorf("deleted plan on b: %d, want 404", status)
		}
		if status, _ := b.call(t, "DELETE", "/v1/plans/team", ""); status != 404 {
			t.Errorf("delete it again: %d, want 404", status)
		}

		if status, _ := a.call(t, "PUT", "/v1/pricing/house-model", `{"input":1,"output":2,"cache_write":0,"cache_read":0}`); status != 200 {
			t.Fatal(status)
		}
		usage := `{"subject":"user:priced","usage":{"model":"house-model","input_tokens":1000,"output_tokens":0}}`
		if status, _ := b.call(t, "POST", "/v1/consume", usage); status != 200 {
			t.Fatalf("consume on the new price: %d", status)
		}
		if status, p := a.call(t, "DELETE", "/v1/pricing/house-model", ""); status != 200 || p["model"] != "house-model" {
			t.Fatalf("delete price: %d %v", status, p)
		}
		if status, p := b.call(t, "POST", "/v1/consume", usage); status != 400 || p["field"] != "usage.model" {
			t.Errorf("consume on a deleted price, on b: %d %v, want 400 on usage.model", status, p)
		}
		if status, _ := a.call(t, "DELETE", "/v1/pricing/house-model", ""); status != 404 {
			t.Errorf("delete it again: %d, want 404", status)
		}
	})
}
