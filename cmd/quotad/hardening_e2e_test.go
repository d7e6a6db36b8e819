package main_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestServeRefusesAGuessableAdminKey: outside dev mode, serve does not
// start with an admin key printed in the README or one too short to be
// secret; with QUOTAD_DEV=1 (make run, the tests) it does.
func TestServeRefusesAGuessableAdminKey(t *testing.T) {
	for _, key := range []string{"dev-admin-key", "short-but-not-known"} {
		cmd := exec.Command(quotadBin, "serve")
		cmd.Env = append(withoutEnv(os.Environ(), "QUOTAD_DEV"), "QUOTAD_ADMIN_KEY="+key, "QUOTAD_ADDR=127.0.0.1:0",
			"QUOTAD_POSTGRES_URL=postgres://nobody@127.0.0.1:1/none")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "admin key") {
			t.Errorf("serve with admin key %q: %v, %s; want a refusal naming the admin key", key, err, out)
		}
	}
}

// withoutEnv drops the variables named from env.
func withoutEnv(env []string, names ...string) []string {
	var out []string
	for _, e := range env {
		name, _, _ := strings.Cut(e, "=")
		keep := true
		for _, n := range names {
			keep = keep && name != n
		}
		if keep {
			out = append(out, e)
		}
	}
	return out
}
