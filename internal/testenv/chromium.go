package testenv

import (
	"os/exec"
	"testing"
)

// Chromium returns the path of a Chromium or Chrome binary for browser
// tests (Debian's chromium, which scripts/stack.sh install installs). The
// test is skipped when there is none, and fails when CI is set.
func Chromium(tb testing.TB) string {
	tb.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	fail(tb, &errUnavailable{"no chromium binary on PATH"})
	return ""
}
